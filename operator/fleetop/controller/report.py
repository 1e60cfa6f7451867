"""The planner's status for one service, its new memory, and when to look again.

Status is observation: replica counts, the three conditions and every owned unit as fleet shows it.
It is a function of the world and the memory only (times come from memory, never from ``now``
directly), so a pass over an unchanged world returns an identical status and the executor writes
nothing. The memory keeps only entries for units that still exist, so it cannot grow without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetop.controller.conditions import (
    Counts,
    Trouble,
    build_conditions,
    deadline_exceeded,
    next_progress,
)
from fleetop.controller.instances import UNSCHEDULED_GRACE, Desired, Instance, Scene
from fleetop.controller.readiness import Health, assess, placement_problems
from fleetop.controller.rollout import Limits
from fleetop.controller.unitrender import ROLE_DISCOVERY
from fleetop.controller.world import ObservedState, ObservedUnit, PlanMemory, Progress, Seen
from fleetop.fleet.units import unit_hash
from fleetop.models.status import ReplicaCounts, ServiceStatus, UnitStatus


@dataclass(frozen=True, slots=True)
class Report:
    status: ServiceStatus
    memory: PlanMemory
    requeue_after: float | None


def _counts(desired: Desired, instances: list[Instance], limits: Limits) -> Counts:
    floor = Limits.from_spec(desired.spec, replicas=limits.replicas).min_ready
    return Counts(
        replicas=limits.replicas,
        min_ready=floor,
        total=len(instances),
        ready=sum(1 for i in instances if i.ready),
        updated=sum(1 for i in instances if i.updated),
        updated_ready=sum(1 for i in instances if i.updated and i.ready),
        old=sum(1 for i in instances if not i.updated),
        template=desired.main_template,
    )


def _unschedulable(
    scene: Scene, desired: Desired, instances: list[Instance], replace: set[int], limits: Limits
) -> list[str]:
    spec = desired.spec
    problems, eligible = placement_problems(spec, scene.service, scene.machines, scene.units)
    if spec.placement.spread and not desired.global_ and eligible and limits.replicas <= eligible:
        rolling = not spec.paused and any(not i.updated for i in instances)
        if rolling and limits.ceiling > eligible and limits.unavailable == 0:
            problems.append(
                f"spread: a surge needs {limits.ceiling} machines, {eligible} eligible; the rollout waits"
                " for a machine (maxUnavailable ≥ 1 would let it replace in place)"
            )
    kept = [i.name for i in instances if i.stuck and i.slot not in replace]
    if kept:
        spread = " with spread (one instance per machine)" if spec.placement.spread else ""
        problems.append(
            f"{len(kept)} unscheduled for more than {UNSCHEDULED_GRACE:g}s ({', '.join(kept)}), kept:"
            f" no free machine for a replacement{spread}, {eligible} eligible"
        )
    return problems


def _trouble(
    scene: Scene, desired: Desired, instances: list[Instance], replace: set[int], limits: Limits
) -> Trouble:
    failed = [
        f"{i.name if i.health.failed else i.sidekick.name if i.sidekick else i.name} failed"
        f" on {i.unit.machine_id or 'some machines'}"
        + (", replacing the instance" if i.slot in replace else "")
        for i in instances
        if i.failed
    ]
    rejected = [
        f"{i.name}: systemd rejected the unit ({i.health.state.load_state if i.health.state else '?'})"
        for i in instances
        if i.health.rejected
    ]
    return Trouble(_unschedulable(scene, desired, instances, replace, limits), failed, rejected)


def _unit_status(unit: ObservedUnit, role: str, instance: str, health: Health, template: str) -> UnitStatus:
    return unit_status(unit, health.state, role, instance, template)


def unit_status(
    unit: ObservedUnit,
    state: ObservedState | None,
    role: str,
    instance: str,
    template: str,
    *,
    ready: bool = False,
) -> UnitStatus:
    """A unit as status reports it: fleet's view and systemd's states."""
    return UnitStatus(
        name=unit.name,
        role=role,
        instance=instance,
        machine=unit.machine_id,
        desired_state=unit.desired_state,
        current_state=unit.current_state,
        load_state=state.load_state if state else None,
        active_state=state.active_state if state else None,
        sub_state=state.sub_state if state else None,
        template=template,
        ready=ready,
    )


def _units(scene: Scene, desired: Desired, instances: list[Instance]) -> list[UnitStatus]:
    out: list[UnitStatus] = []
    for i in instances:
        row = _unit_status(i.unit, "main", str(i.slot), i.health, i.template)
        out.append(row.model_copy(update={"ready": i.ready, "registered": i.registered}))
    for slot, unit in scene.ownership.sidekicks.items():
        health = assess(unit, unit_hash(unit.options), scene.states, desired.global_)
        owner = scene.ownership.owners[unit.name]
        row = _unit_status(unit, ROLE_DISCOVERY, str(slot), health, owner.template)
        registered = scene.registrations.get(str(slot), False)
        out.append(row.model_copy(update={"ready": health.running, "registered": registered}))
    for unit in scene.ownership.strays:
        stray = scene.ownership.owners[unit.name]
        health = assess(unit, unit_hash(unit.options), scene.states, desired.global_)
        out.append(_unit_status(unit, stray.role, "", health, stray.template))
    return sorted(out, key=lambda u: u.name)


def _requeue(
    desired: Desired, instances: list[Instance], progress: Progress | None, now: float
) -> float | None:
    spec = desired.spec
    waits: list[float] = []
    for i in instances:
        if i.ready_since is not None and not i.ready:
            waits.append(i.ready_since.since + spec.rollout.min_ready_seconds - now)
        for since, stuck in (
            (i.unscheduled_since, i.stuck),
            (i.sidekick_unscheduled_since, i.sidekick_stuck),
        ):
            if since is not None and not stuck:
                waits.append(since.since + UNSCHEDULED_GRACE - now)
    deadline = spec.rollout.progress_deadline_seconds
    if progress is not None and not progress.complete and not deadline_exceeded(progress, deadline, now):
        waits.append(progress.since + spec.rollout.progress_deadline_seconds - now)
    positive = [w for w in waits if w > 0]
    return min(positive) if positive else None


def _unscheduled_memory(instances: list[Instance]) -> dict[str, Seen]:
    out = {i.name: i.unscheduled_since for i in instances if i.unscheduled_since is not None}
    for i in instances:
        if i.sidekick is not None and i.sidekick_unscheduled_since is not None:
            out[i.sidekick.name] = i.sidekick_unscheduled_since
    return out


def build_report(
    scene: Scene,
    desired: Desired,
    instances: list[Instance],
    replace: set[int],
    limits: Limits,
    generation: int,
    memory: PlanMemory,
) -> Report:
    spec = desired.spec
    counts = _counts(desired, instances, limits)
    progress = None if spec.paused else next_progress(memory.progress, counts, scene.now)
    deadline = float(spec.rollout.progress_deadline_seconds)
    exceeded = progress is not None and deadline_exceeded(progress, deadline, scene.now)
    conditions, transitions = build_conditions(
        counts,
        _trouble(scene, desired, instances, replace, limits),
        paused=spec.paused,
        exceeded=exceeded,
        deadline=deadline,
        transitions=memory.transitions,
        now=scene.now,
    )
    replicas = ReplicaCounts(
        desired=limits.replicas,
        launched=sum(1 for i in instances if i.health.launched),
        running=sum(1 for i in instances if i.health.running),
        ready=counts.ready,
        updated=counts.updated,
    )
    status = ServiceStatus(
        observed_generation=generation,
        replicas=replicas,
        conditions=conditions,
        units=_units(scene, desired, instances),
        template=desired.main_template,
    )
    new_memory = PlanMemory(
        ready_since={i.name: i.ready_since for i in instances if i.ready_since is not None},
        unscheduled_since=_unscheduled_memory(instances),
        progress=progress,
        transitions=transitions,
    )
    return Report(status, new_memory, _requeue(desired, instances, progress, scene.now))
