"""A small, pure model of a fleet cluster, to test the planner against over many steps.

Not a fake of fleet's API: it models only what the planner reads and what fleet is observed to do
(``fleet-observed.md`` §8, §10, §13): units are scheduled a tick after they are created by the
scheduler ``fleetop node`` runs (:func:`fleetop.node.scheduler.schedule`, fleet's own rules: the
least-loaded machine that the ``[X-Fleet]`` section allows, MachineMetadata, MachineID, MachineOf,
Conflicts in both directions as Go globs), or stay silently unscheduled; they run a tick later; a destroyed
unit's state lingers for a few ticks; failures show only in the systemd states; sidekicks register
their instance once both run. Faults are switched on per tick and drawn from a seeded ``Random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleetop.controller.world import (
    Action,
    CreateUnit,
    DestroyUnit,
    ObservedMachine,
    ObservedState,
    ObservedUnit,
    SetDesiredState,
)
from fleetop.fleet.units import UnitOption, unit_hash
from fleetop.node.scheduler import SchedMachine, SchedUnit, schedule


@dataclass
class SimUnit:
    name: str
    options: tuple[UnitOption, ...]
    desired: str = "launched"
    machine: str | None = None
    current: str = "inactive"
    stuck: bool = False
    failed: bool = False

    @property
    def hash(self) -> str:
        return unit_hash(self.options)


@dataclass
class Faults:
    """Per-tick fault probabilities (all zero: a calm cluster)."""

    fail: float = 0.0
    stick: float = 0.0
    delay: float = 0.0
    unregister: float = 0.0


CALM = Faults()


@dataclass
class SimFleet:
    machines: list[ObservedMachine]
    rng: random.Random
    units: dict[str, SimUnit] = field(default_factory=dict)
    lingering: list[tuple[ObservedState, int]] = field(default_factory=list)
    registered: set[str] = field(default_factory=set)
    tick_no: int = 0
    faults: Faults = field(default_factory=Faults)

    # -- what the planner sees ---------------------------------------------------------------------

    def observed_units(self) -> list[ObservedUnit]:
        return [
            ObservedUnit(u.name, u.options, u.desired, u.current, u.machine)
            for u in sorted(self.units.values(), key=lambda u: u.name)
        ]

    def observed_states(self) -> list[ObservedState]:
        # fleet keeps one state per (unit name, machine): a live unit's state replaces a leftover
        by_key = {(s.name, s.machine_id): s for s, _ in self.lingering}
        for unit in self.units.values():
            if unit.machine and unit.current != "inactive":
                state = self._state(unit)
                by_key[(state.name, state.machine_id)] = state
        return [by_key[k] for k in sorted(by_key)]

    def registrations(self) -> dict[str, bool]:
        return {instance: True for instance in sorted(self.registered)}

    def _state(self, unit: SimUnit) -> ObservedState:
        assert unit.machine is not None
        if unit.current == "loaded":
            return ObservedState(unit.name, unit.hash, unit.machine, "loaded", "inactive", "dead")
        if unit.failed:
            return ObservedState(unit.name, unit.hash, unit.machine, "loaded", "failed", "failed")
        return ObservedState(unit.name, unit.hash, unit.machine)

    # -- actions -------------------------------------------------------------------------------------

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, CreateUnit):
                assert action.name not in self.units, f"create over an existing unit {action.name}"
                stuck = self.rng.random() < self.faults.stick
                self.units[action.name] = SimUnit(
                    action.name, action.options, action.desired_state, stuck=stuck
                )
            elif isinstance(action, SetDesiredState):
                unit = self.units[action.name]
                unit.desired = action.state
            elif isinstance(action, DestroyUnit):
                unit = self.units.pop(action.name)
                if unit.machine and unit.current != "inactive":
                    self.lingering.append((self._state(unit), self.tick_no + self.rng.randint(1, 3)))

    # -- time passing --------------------------------------------------------------------------------

    def tick(self) -> None:
        """One poll interval: drain leftovers, launch, schedule, fail, register."""
        self.tick_no += 1
        self.lingering = [(s, until) for s, until in self.lingering if until > self.tick_no]
        for unit in self.units.values():
            if unit.desired == "launched" and unit.machine and unit.current != "launched":
                if self.rng.random() >= self.faults.delay:
                    unit.current = "launched"
            elif unit.desired != "launched" and unit.current == "launched":
                unit.current = "loaded"
        waiting = []
        for unit in sorted(self.units.values(), key=lambda u: u.name):
            ready = unit.desired == "launched" and unit.machine is None and not unit.stuck
            if ready and self.rng.random() >= self.faults.delay:
                waiting.append(unit)
        self._place(waiting)
        for unit in self.units.values():
            if unit.current == "launched" and not unit.failed and self.rng.random() < self.faults.fail:
                unit.failed = True
        self._register()

    def _register(self) -> None:
        registered: set[str] = set()
        for unit in self.units.values():
            if "-discovery@" not in unit.name or not self._runs(unit):
                continue
            main_name = unit.name.replace("-discovery@", "@")
            main = self.units.get(main_name)
            if main is not None and self._runs(main) and self.rng.random() >= self.faults.unregister:
                registered.add(unit.name.split("@", 1)[1].removesuffix(".service"))
        self.registered = registered

    @staticmethod
    def _runs(unit: SimUnit) -> bool:
        return unit.machine is not None and unit.current == "launched" and not unit.failed

    # -- scheduling ----------------------------------------------------------------------------------

    def _place(self, waiting: Sequence[SimUnit]) -> None:
        """Place the units due this tick as fleet's scheduler would, next to the units already placed
        (which stay where they are: the model does not reschedule)."""
        if not waiting:
            return
        placed = [u for u in self.units.values() if u.machine is not None]
        decided = schedule(
            [SchedUnit(u.name, u.options, "launched") for u in [*placed, *waiting]],
            [SchedMachine(m.id, m.metadata) for m in self.machines],
            {u.name: u.machine for u in placed if u.machine is not None},
        )
        for unit in waiting:
            unit.machine = decided.placements.get(unit.name)
