"""What fleet's observations mean for one instance: running, failed, unscheduled, and where it could go.

fleet reports little and late (``fleet-observed.md`` §8, §10, §13): ``currentState`` is fleet's own view
and stays ``launched`` for a unit whose process failed; failure shows only in the systemd states; a
UnitState lingers for seconds or minutes after its unit is gone or replaced; and a unit that cannot
be placed stays silently unscheduled (no ``machineID``, ``currentState`` inactive). So a unit counts
as running only when a state with *its own* file hash reports ``loaded/active/running`` on *its own*
machine; any other state is a leftover and is ignored.

The placement helpers answer the questions the planner asks before replacing an unscheduled
instance: which machines could take it at all, and is any of them free.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetop.controller.world import LAUNCHED, ObservedMachine, ObservedState, ObservedUnit
from fleetop.models.service import ServiceSpec

RUNNING = ("loaded", "active", "running")


@dataclass(frozen=True, slots=True)
class Health:
    """One unit's condition as far as fleet shows it (not yet counting registration or time)."""

    state: ObservedState | None
    launched: bool
    running: bool
    failed: bool
    rejected: bool
    unscheduled: bool


def own_states(
    unit: ObservedUnit, file_hash: str, states: Mapping[str, Sequence[ObservedState]], global_: bool
) -> list[ObservedState]:
    """The states that describe this very unit: same name, same file hash, and (unless the unit is
    global, which runs everywhere without a machine of its own) on the unit's machine."""
    found = [s for s in states.get(unit.name, ()) if s.hash == file_hash]
    if global_:
        return found
    return [s for s in found if unit.machine_id is not None and s.machine_id == unit.machine_id]


def assess(
    unit: ObservedUnit, file_hash: str, states: Mapping[str, Sequence[ObservedState]], global_: bool
) -> Health:
    """Read one unit's health.

    For a global unit (one unit, one state per eligible machine) running means at least one machine
    runs it, failed means at least one machine reports it failed.
    """
    mine = own_states(unit, file_hash, states, global_)
    running = [s for s in mine if (s.load_state, s.active_state, s.sub_state) == RUNNING]
    failed = [s for s in mine if s.active_state == "failed"]
    rejected = [s for s in mine if s.load_state not in ("loaded", "")]
    shown = running[0] if running else (failed[0] if failed else (mine[0] if mine else None))
    wants_launch = unit.desired_state == LAUNCHED
    if global_:
        launched = wants_launch and bool(mine)
        unscheduled = False
    else:
        launched = wants_launch and unit.current_state == LAUNCHED
        unscheduled = wants_launch and unit.machine_id is None and unit.current_state in (None, "inactive")
    return Health(
        state=shown,
        launched=launched,
        running=launched and bool(running),
        failed=bool(failed),
        rejected=bool(rejected),
        unscheduled=unscheduled,
    )


def _metadata_matches(machine: ObservedMachine, wanted: Mapping[str, Sequence[str]]) -> bool:
    """fleet's rule: every key must match, any of the values listed for a key will do."""
    return all(machine.metadata.get(key) in values for key, values in wanted.items())


def eligible_machines(
    spec: ServiceSpec, machines: Sequence[ObservedMachine], units: Mapping[str, ObservedUnit]
) -> tuple[list[ObservedMachine], list[str]]:
    """Machines the placement allows (ignoring spread), and why the list is short, in words."""
    placement = spec.placement
    problems: list[str] = []
    eligible = list(machines)
    if not machines:
        problems.append("fleet lists no machines")
        return [], problems
    if placement.machine_metadata:
        eligible = [m for m in eligible if _metadata_matches(m, placement.machine_metadata)]
        if not eligible:
            wanted = ", ".join(f"{k}={'|'.join(v)}" for k, v in sorted(placement.machine_metadata.items()))
            problems.append(f"no machine has metadata {wanted}")
    if placement.machine_id:
        eligible = [m for m in eligible if m.id == placement.machine_id]
        if not any(m.id == placement.machine_id for m in machines):
            problems.append(f"machine {placement.machine_id} is not in the cluster")
    if placement.machine_of:
        target = units.get(placement.machine_of)
        where = target.machine_id if target is not None else None
        eligible = [m for m in eligible if m.id == where]
        if where is None:
            problems.append(f"machineOf target {placement.machine_of} is not scheduled")
    return eligible, problems


def spread_occupied(service: str, units: Mapping[str, ObservedUnit]) -> set[str]:
    """Machines already holding a unit that ``Conflicts=<svc>@*.service`` matches, owned or not."""
    pattern = f"{service}@*.service"
    return {
        u.machine_id
        for u in units.values()
        if u.machine_id is not None and fnmatch.fnmatchcase(u.name, pattern)
    }


def free_machines(
    spec: ServiceSpec, service: str, eligible: Sequence[ObservedMachine], units: Mapping[str, ObservedUnit]
) -> int:
    """How many eligible machines could take one more instance right now."""
    if not spec.placement.spread:
        return len(eligible)
    occupied = spread_occupied(service, units)
    return sum(1 for m in eligible if m.id not in occupied)


def placement_problems(
    spec: ServiceSpec, service: str, machines: Sequence[ObservedMachine], units: Mapping[str, ObservedUnit]
) -> tuple[list[str], int]:
    """Reasons the placement cannot be met for ``spec.replicas`` instances, and the eligible count."""
    eligible, problems = eligible_machines(spec, machines, units)
    if spec.placement.spread and not spec.placement.global_ and eligible and spec.replicas > len(eligible):
        problems.append(
            f"spread runs at most one instance per machine: {spec.replicas} replicas need"
            f" {spec.replicas} machines, {len(eligible)} eligible"
        )
    return problems, len(eligible)
