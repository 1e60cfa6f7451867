"""The node's engine and agents: the engine schedules, then each machine's agent drives the Supervisor.

fleet splits this between an engine (placement) and one agent per machine (load, start, stop, unload
and reporting), each a reconciler of its own that learns of changes through etcd. Here they are
asyncio tasks in one process, level-triggered like fleet's own reconcilers: the engine re-reads the
registry and re-runs the pure scheduler (over the units that changed only, while no unit has
``[X-Fleet]`` requirements and the machines are those of the last pass: ``place_plain``), and each
agent compares what its machine should run with what it has told the Supervisor, then moves each unit
one legal step at a time:
inactive → loaded → launched, launched → loaded (stop), → inactive (stop and unload). Content replaced
under a loaded unit is unloaded and loaded again with the new hash, on the same machine.

**Pacing.** fleet's components notice a change about a second after it is written (fleet-observed
§8): a unit PUT as launched is first ``inactive`` without a machine, then scheduled (machineID, still
``inactive``), then ``launched``. Clients depend on that order: fleetctl's ``restart`` sets
``loaded`` and expects its very next GET still to read ``launched`` (``docs/fleet-observed-notes.md``).
So the engine acts ``pace`` seconds after a change, and each agent acts on a unit only once the unit's
last change (desired state, content, placement) is its ``agent_pace`` old. Agents of different machines
are not in lock step, as fleet's are not: machine i's agent takes ``pace * (1 + 0.75 * ((i - 1) % 3))``.
``pace=0`` gives the node's reactions at once.

``current_state`` is fleet's view (what the agent did), not systemd's: a unit that exits or fails stays
``launched``; failure shows only in the systemd states that ``/state`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleetop.fleet.model import Machine, UnitState
from fleetop.fleet.units import UnitOption
from fleetop.node.registry import Registry, StoredUnit
from fleetop.node.scheduler import (
    SCHEDULED_STATES,
    SchedMachine,
    Schedule,
    SchedUnit,
    is_plain,
    place_plain,
    requirements,
    schedule,
)
from fleetop.node.supervisor import MachineContext, RuntimeState

log = logging.getLogger(__name__)
RESYNC_INTERVAL = 5.0
RETRY_DELAY = 1.0
MAX_PASS_GAP = 0.5
"""The longest pause after a pass before the next (a pass that took longer is paused for this)."""
PACE = 1.0
"""Seconds the engine takes to notice a change, and machine 1's agent after it: fleet's (§8)."""
AGENT_PHASES = 3
AGENT_STAGGER = 0.75
"""Agents come in AGENT_PHASES phases, AGENT_STAGGER paces apart: at fleet's pace, more than the
500 ms between two polls of fleetctl, so units launched on machines of different phases are first read
``launched`` in different polls (``docs/fleet-observed-notes.md``, ``cachedMachineState``)."""


class SupervisorLike(Protocol):
    """The part of ``fleetop.node.supervisor.Supervisor`` the engine drives."""

    async def load(
        self, unit: str, options: Sequence[UnitOption], machine: MachineContext, unit_hash: str
    ) -> None: ...
    async def start(
        self, unit: str, options: Sequence[UnitOption], machine: MachineContext, unit_hash: str
    ) -> None: ...
    async def stop(self, unit: str, machine_id: str) -> None: ...
    async def unload(self, unit: str, machine_id: str) -> None: ...
    def states(self) -> list[RuntimeState]: ...
    def state(self, unit: str, machine_id: str) -> RuntimeState | None: ...
    def take_changes(self) -> set[tuple[str, str]] | None: ...
    async def stop_machine(self, machine_id: str) -> None: ...
    async def shutdown(self) -> None: ...
    def journal_path(self, unit: str, machine_id: str | None = None) -> Path: ...


@dataclass(frozen=True, slots=True)
class NodeMachine:
    """One modelled machine: stable id, loopback address, root with its ``/etc`` files, metadata."""

    index: int
    id: str
    ip: str
    hostname: str
    root: Path
    metadata: Mapping[str, str] = field(default_factory=dict)

    def context(self) -> MachineContext:
        etc = self.root / "etc"
        return MachineContext(
            machine_id=self.id,
            hostname=self.hostname,
            ip=self.ip,
            root=self.root,
            path_map={
                "/etc/environment": etc / "environment",
                "/etc/etcd.environment": etc / "etcd.environment",
            },
        )


@dataclass(slots=True)
class _Agent:
    """What an agent has told the Supervisor about one unit on its machine."""

    hash: str
    state: str  # "loaded" or "launched"


class _Loop:
    """A reconciler's wake-up: passes run when due (the earliest time asked for) or every ``resync``."""

    def __init__(self, name: str, resync: float) -> None:
        self.name = name
        self.resync = resync
        self.due: float | None = None
        self.failed = False
        self._event = asyncio.Event()

    def wake_at(self, when: float) -> None:
        if self.due is None or when < self.due:
            self.due = when
            self._event.set()

    async def run(self, reconcile: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            deadline = time.monotonic() + self.resync if self.due is None else self.due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(0.0, deadline - time.monotonic()))
            self._event.clear()
            if self.due is not None and time.monotonic() < self.due:
                continue  # woken because an earlier pass was asked for: wait for that one
            self.due = None
            began = time.thread_time()
            self.failed = False
            try:
                await reconcile()
            except Exception:
                log.exception("node: %s pass failed; will retry", self.name)
                self.failed = True
            if self.failed:
                self.wake_at(time.monotonic() + RETRY_DELAY)
            # A pass reads every unit. Under a stream of API writes, leave the API at least as much
            # time as the pass computed (CPU time: waiting for a unit to stop costs nothing here);
            # the changes meanwhile are picked up together by the next pass.
            await asyncio.sleep(min(time.thread_time() - began, MAX_PASS_GAP))


class Engine:
    """Owns the engine's and the agents' tasks. API handlers mutate the registry, then call ``notify()``."""

    def __init__(
        self,
        registry: Registry,
        supervisor: SupervisorLike,
        machines: Sequence[NodeMachine],
        *,
        resync_interval: float = RESYNC_INTERVAL,
        pace: float = PACE,
    ) -> None:
        if not (math.isfinite(pace) and pace >= 0):
            raise ValueError(f"pace must be a non-negative number of seconds, not {pace!r}")
        self.registry = registry
        self.supervisor = supervisor
        self.machines = {m.id: m for m in sorted(machines, key=lambda m: m.id)}
        self.resync_interval = resync_interval
        self.pace = pace
        self.agent_pace = {
            m.id: pace * (1 + AGENT_STAGGER * ((m.index - 1) % AGENT_PHASES)) for m in self.machines.values()
        }
        self._loaded: dict[str, dict[str, _Agent]] = {m: {} for m in self.machines}
        """What each machine's agent has done: machine id → unit name → hash and state."""
        self._placed_on: dict[str, set[str]] = {m: set() for m in self.machines}
        """The engine's last schedule, by machine (regular and global units)."""
        self._globals: dict[str, tuple[str, ...]] = {}
        self._changed: dict[str, float] = {}
        """When each unit last changed (desired state, content or placement): agents act on a unit
        once its change is their pace old, as a fleet agent learns of it through etcd."""
        self._engine_loop = _Loop("engine", resync_interval)
        self._agent_loops = {m: _Loop(f"agent {m[:8]}", resync_interval) for m in self.machines}
        self._lock = asyncio.Lock()
        self.passes = 0
        # /state's list, kept up to date from the changes the Supervisor and the agents report rather
        # than rebuilt for every page: (unit, machine) → its UnitState, those keys sorted, the list.
        self._state_rows: dict[tuple[str, str], UnitState] = {}
        self._state_keys: list[tuple[str, str]] | None = None
        self._state_dirty: set[tuple[str, str]] = set()
        self._state_list: tuple[frozenset[str], list[UnitState]] | None = None
        # What the last pass scheduled on: the live machines, and the units with [X-Fleet]
        # requirements. While neither changes, a pass places only the units that changed.
        self._scheduled_on: list[SchedMachine] | None = None
        self._not_plain: set[str] = set()
        self.full_passes = 0

    # -- views for the API -------------------------------------------------------------------------

    def live_machine_ids(self) -> list[str]:
        return [m for m in self.machines if m not in self.registry.stopped_machines]

    def machine_view(self, machine_id: str) -> Machine:
        machine = self.machines[machine_id]
        metadata = self.registry.effective_metadata(machine_id, machine.metadata)
        return Machine(machine.id, machine.ip, metadata)

    def live_machines(self) -> list[Machine]:
        """fleet's ``/machines``: live machines only, sorted by id."""
        return [self.machine_view(m) for m in self.live_machine_ids()]

    def is_global(self, unit: StoredUnit) -> bool:
        return requirements(unit.name, unit.options).is_global

    def placement(self, name: str) -> str | None:
        """The machine a non-global unit is scheduled to, if any. Like fleet, a unit set to inactive
        keeps its machine until the engine's next pass unschedules it."""
        if self.registry.get(name) is None:
            return None
        return self.registry.placements.get(name)

    def current_state(self, name: str) -> str:
        """fleet's currentState of a non-global unit: what the agent of its machine has done with it."""
        machine = self.placement(name)
        agent = self._loaded[machine].get(name) if machine in self._loaded else None
        return agent.state if agent else "inactive"

    def states(self) -> list[UnitState]:
        """UnitStates of units loaded on live machines, sorted by unit then machine. Built once per
        change, shared by every reader (do not modify it)."""
        changes = self.supervisor.take_changes()
        if changes is None:
            self._rebuild_state_rows()
        else:
            changes |= self._state_dirty
            self._state_dirty = set()
            for key in changes:
                self._update_state_row(key)
        stopped = frozenset(m for m in self.machines if m in self.registry.stopped_machines)
        keys = self._state_keys
        if keys is None:
            keys = self._state_keys = sorted(self._state_rows)
            self._state_list = None
        cached = self._state_list
        if cached is None or cached[0] != stopped:
            rows = self._state_rows
            cached = self._state_list = (stopped, [rows[k] for k in keys if k[1] not in stopped])
        return cached[1]

    def _state_row(self, key: tuple[str, str]) -> UnitState | None:
        unit, machine_id = key
        if unit not in self._loaded.get(machine_id, {}):
            return None
        rs = self.supervisor.state(unit, machine_id)
        if rs is None:
            return None
        return UnitState(rs.unit, rs.hash, rs.machine_id, rs.load_state, rs.active_state, rs.sub_state)

    def _update_state_row(self, key: tuple[str, str]) -> None:
        row = self._state_row(key)
        if row is None:
            if self._state_rows.pop(key, None) is not None:
                self._state_keys = None
        else:
            if key not in self._state_rows:
                self._state_keys = None
            self._state_rows[key] = row
        self._state_list = None

    def _rebuild_state_rows(self) -> None:
        rows = {}
        for rs in self.supervisor.states():
            key = (rs.unit, rs.machine_id)
            if (row := self._state_row(key)) is not None:
                rows[key] = row
        self._state_rows, self._state_keys, self._state_list = rows, None, None
        self._state_dirty = set()

    def _loaded_changed(self, unit: str, machine_id: str) -> None:
        """The agent loaded or unloaded ``unit`` (its state shows from then on, or no longer)."""
        self._state_dirty.add((unit, machine_id))

    def resolve_machine(self, ident: str) -> str | None:
        """A machine id from its full id, a unique id prefix, or its 1-based index."""
        if ident in self.machines:
            return ident
        if ident.isdigit():
            for machine in self.machines.values():
                if machine.index == int(ident):
                    return machine.id
        matches = [m for m in self.machines if m.startswith(ident)] if ident else []
        return matches[0] if len(matches) == 1 else None

    def journal_path(self, unit: str, machine_id: str | None = None) -> Path:
        return self.supervisor.journal_path(unit, machine_id)

    # -- the loops ---------------------------------------------------------------------------------

    def notify(self, unit: str | None = None) -> None:
        """A change was written (to ``unit``, if one): the engine and the agents notice it after their
        pace. Safe to call from any code running in the loop."""
        now = time.monotonic()
        if unit is not None:
            self._changed[unit] = now
        self._engine_loop.wake_at(now + self.pace)
        for machine_id, loop in self._agent_loops.items():
            loop.wake_at(now + self.agent_pace[machine_id])

    async def run(self) -> None:
        """Run the engine and every machine's agent until cancelled."""
        tasks = [asyncio.create_task(self._engine_loop.run(self.schedule_once), name="fleetop-node-engine")]
        for machine_id, loop in self._agent_loops.items():
            agent = functools.partial(self.reconcile_machine, machine_id)
            tasks.append(asyncio.create_task(loop.run(agent), name=f"fleetop-node-{loop.name}"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def schedule_once(self) -> None:
        """The engine: place every unit that wants a machine and publish the placements."""
        self.passes += 1
        machines = [SchedMachine(m.id, m.metadata) for m in self.live_machines()]
        decision = self._decide(machines, self.registry.take_unit_changes())
        before = dict(self.registry.placements)
        to_save = self.registry.set_placements(decision.placements)
        # A unit placed on a machine is news to that machine's agent; one taken off a machine is
        # not: the agent already acts on the desired state or the deletion that caused it.
        moved = {n for n, m in decision.placements.items() if before.get(n) != m}
        new_globals = dict(decision.global_placements)
        moved |= {n for n, ms in new_globals.items() if set(ms) - set(self._globals.get(n, ()))}
        self._globals = new_globals
        placed_on: dict[str, set[str]] = {m: set() for m in self.machines}
        for name, machine_id in decision.placements.items():
            placed_on[machine_id].add(name)
        for name, machine_ids in new_globals.items():
            for machine_id in machine_ids:
                placed_on[machine_id].add(name)
        # New to an agent too: a unit its machine had no schedule for, as every unit is to the first
        # pass after a start (the placements read back from the registry are not "moved", but no agent
        # has seen them; left alone, they would wait for the agents' resync).
        for machine_id, names in placed_on.items():
            moved |= names - self._placed_on[machine_id]
        self._placed_on = placed_on
        now = time.monotonic()
        for name in moved:
            self._changed[name] = now
        if moved:
            for machine_id, loop in self._agent_loops.items():
                loop.wake_at(now + self.agent_pace[machine_id])
        self._forget_settled(now)
        # Written after the agents are told (the same pass-to-agent order as before: they wait a
        # pace), in threads: the API keeps answering while the files are synced.
        await self.registry.store_units(to_save)
        # Only a pass that saw no unit with requirements lets the next place just the changed ones:
        # once the last such unit goes, units it kept off machines are placed by a full pass.
        self._scheduled_on = None if self._not_plain else machines

    def _decide(self, machines: list[SchedMachine], changes: set[str] | None) -> Schedule:
        """The schedule after ``changes`` (None: any unit may have changed). While every unit is plain
        (no ``[X-Fleet]`` requirements) and the live machines are those of the last pass, only the
        changed units are placed (:func:`place_plain`); otherwise every unit (:func:`schedule`)."""
        wanted = {} if changes is None else {n: self._sched_unit(n) for n in changes}
        for name, unit in wanted.items():
            if unit is None or is_plain(unit):
                self._not_plain.discard(name)
            else:
                self._not_plain.add(name)
        # Cleared until the pass has saved what it decided: after a failed pass, the next is full.
        last, self._scheduled_on = self._scheduled_on, None
        if changes is not None and not self._not_plain and machines == last:
            placements = place_plain(self.registry.placements, wanted, machines)
            if placements is not None:
                return Schedule(placements, {}, ())
        self.full_passes += 1
        units = [SchedUnit(u.name, u.options, u.desired_state) for u in self.registry.sorted_units()]
        self._not_plain = {u.name for u in units if not is_plain(u)}
        return schedule(units, machines, self.registry.placements)

    def _sched_unit(self, name: str) -> SchedUnit | None:
        unit = self.registry.get(name)
        return None if unit is None else SchedUnit(unit.name, unit.options, unit.desired_state)

    def _forget_settled(self, now: float) -> None:
        """Drop change times every agent has already noticed (kept small with thousands of units)."""
        longest = max(self.agent_pace.values(), default=0.0)
        for name in [n for n, at in self._changed.items() if now - at > longest]:
            del self._changed[name]

    def _targets(self, machine_id: str) -> dict[str, StoredUnit]:
        """The units the engine has placed on ``machine_id`` and that still want to be there."""
        if machine_id in self.registry.stopped_machines:
            return {}
        targets = {}
        for name in self._placed_on[machine_id]:
            unit = self.registry.get(name)
            if unit is not None and unit.desired_state in SCHEDULED_STATES:
                targets[name] = unit
        return targets

    async def reconcile_machine(self, machine_id: str) -> None:
        """One pass of a machine's agent. Units whose last change it has not noticed yet are left as
        they are, and the agent comes back when it will have."""
        loop = self._agent_loops[machine_id]
        pace = self.agent_pace[machine_id]
        async with self._lock:
            now = time.monotonic()
            targets = self._targets(machine_id)
            loaded = self._loaded[machine_id]
            unnoticed: float | None = None
            for name in sorted(loaded.keys() | targets.keys()):
                changed = self._changed.get(name)
                if changed is not None and now - changed < pace:
                    unnoticed = changed if unnoticed is None else min(unnoticed, changed)
                    continue
                unit = targets.get(name)
                agent = loaded.get(name)
                if agent is not None and (unit is None or unit.hash != agent.hash):
                    await self._teardown(name, machine_id, loop)
                if unit is not None:
                    await self._bring_up(unit, machine_id, loop)
            if unnoticed is not None:
                # Back when the oldest change left is noticeable; under a stream of changes, not
                # more often than four times a pace (each pass reads all of this machine's units).
                loop.wake_at(max(unnoticed + pace, now + pace / 4))

    async def _call(self, what: str, coro: Awaitable[None], loop: _Loop) -> bool:
        try:
            await coro
        except Exception:
            log.exception("node: %s failed; will retry", what)
            loop.failed = True
            return False
        return True

    async def _teardown(self, unit: str, machine_id: str, loop: _Loop) -> None:
        """Stop (if launched) and unload; the unit's state disappears from that machine."""
        loaded = self._loaded[machine_id]
        agent = loaded.get(unit)
        if agent is None:
            return
        if agent.state == "launched":
            if not await self._call(
                f"stop {unit} on {machine_id}", self.supervisor.stop(unit, machine_id), loop
            ):
                return
            agent.state = "loaded"
        if await self._call(f"unload {unit} on {machine_id}", self.supervisor.unload(unit, machine_id), loop):
            del loaded[unit]
            self._loaded_changed(unit, machine_id)

    async def _bring_up(self, unit: StoredUnit, machine_id: str, loop: _Loop) -> None:
        """One machine's part of a unit towards its desired state (loaded or launched)."""
        loaded = self._loaded[machine_id]
        agent = loaded.get(unit.name)
        if agent is not None and (agent.state == "launched") == (unit.desired_state == "launched"):
            return  # already where it should be: the usual case, on every pass, for every unit
        ctx = self.machines[machine_id].context()
        if agent is None:
            load = self.supervisor.load(unit.name, unit.options, ctx, unit.hash)
            if not await self._call(f"load {unit.name} on {machine_id}", load, loop):
                return
            agent = loaded[unit.name] = _Agent(unit.hash, "loaded")
            self._loaded_changed(unit.name, machine_id)
        if unit.desired_state == "launched" and agent.state != "launched":
            start = self.supervisor.start(unit.name, unit.options, ctx, unit.hash)
            if await self._call(f"start {unit.name} on {machine_id}", start, loop):
                agent.state = "launched"
        elif unit.desired_state == "loaded" and agent.state == "launched":
            stop = self.supervisor.stop(unit.name, machine_id)
            if await self._call(f"stop {unit.name} on {machine_id}", stop, loop):
                agent.state = "loaded"

    # -- machines and shutdown ---------------------------------------------------------------------

    async def stop_machine(self, machine_id: str) -> None:
        """Take a machine out: its units are stopped and unloaded, then rescheduled elsewhere."""
        if machine_id not in self.machines:
            raise KeyError(machine_id)
        self.registry.set_machine_stopped(machine_id, True)
        loop = self._agent_loops[machine_id]
        async with self._lock:
            for unit in sorted(self._loaded[machine_id]):
                await self._teardown(unit, machine_id, loop)
            await self._call(f"stop machine {machine_id}", self.supervisor.stop_machine(machine_id), loop)
        self.notify()

    async def start_machine(self, machine_id: str) -> None:
        """Bring a stopped machine back; the scheduler may place units on it again."""
        if machine_id not in self.machines:
            raise KeyError(machine_id)
        self.registry.set_machine_stopped(machine_id, False)
        self.notify()

    async def shutdown(self) -> None:
        """Stop every unit the Supervisor runs (desired states stay as they are, for the next start)."""
        async with self._lock:
            await self.supervisor.shutdown()
            for loaded in self._loaded.values():
                loaded.clear()
            self._state_rows, self._state_keys, self._state_list = {}, None, None
