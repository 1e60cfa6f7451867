"""The planner's status for one service, its new memory, and when to look again.

Status is observation: replica counts, the three conditions, every owned unit as fleet shows it
(with its restart count), and the restart records of units in back-off. It is a function of the
world and the memory only (times come from memory, never from ``now`` directly: a back-off says
when the next try is, not how long until it), so a pass over an unchanged world returns an
identical status and the executor writes nothing. The memory keeps only entries for units that
still exist or slots still reserved, so it cannot grow without bound.

``Degraded`` says what is wrong, with the unit and the state that shows it: ``MachineLost``,
``Unschedulable``, ``FailedToStart`` (a unit that failed or was rejected by systemd without ever
having been ready: a missing binary, a bad setting) and ``CrashLoop`` (one that ran, then kept
failing). The restart records are in status so that a new leader continues a back-off where the
last one left it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleetop.controller.conditions import (
    Counts,
    Trouble,
    build_conditions,
    deadline_exceeded,
    next_progress,
    unit_status,
)
from fleetop.controller.services import rollback as rollbacks
from fleetop.controller.services.instances import UNSCHEDULED_GRACE, Desired, Instance, Scene
from fleetop.controller.services.machineloss import Losses
from fleetop.controller.services.memory import BackoffPolicy, PlanMemory, Restart, Rollback, Seen, Stable
from fleetop.controller.services.readiness import Health, assess, placement_problems
from fleetop.controller.services.restarts import state_text
from fleetop.controller.services.rollout import Limits
from fleetop.controller.world import ObservedUnit, Progress
from fleetop.fleet.ownership import ROLE_DISCOVERY, ROLE_MAIN
from fleetop.fleet.units import unit_hash
from fleetop.models.service import ServiceSpec
from fleetop.models.status import (
    AvailableTemplate,
    ReplicaCounts,
    RestartStatus,
    RollbackStatus,
    ServiceStatus,
    UnitStatus,
)
from fleetop.timefmt import parse_rfc3339, rfc3339


@dataclass(frozen=True, slots=True)
class Report:
    status: ServiceStatus
    memory: PlanMemory
    requeue_after: float | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the pass read and decided, as the report needs it."""

    instances: list[Instance]
    replace: set[int]
    records: Mapping[str, Restart]
    losses: Losses
    rollback: Rollback | None = None


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


def _times(count: int) -> str:
    return f", restarted {count} time{'' if count == 1 else 's'}" if count else ""


def restart_message(name: str, record: Restart) -> str:
    """``web@8001.service loaded/failed/failed on m1, restarted 3 times, next try in 40s (at ...)``."""
    where = f"{record.state} on {record.machine}" if record.machine else record.state
    if record.phase == "failed":
        delay = record.next_try - record.failed_at
        return f"{name} {where}{_times(record.count)}, next try in {delay:g}s (at {rfc3339(record.next_try)})"
    if record.phase == "destroyed":
        return (
            f"{name} {where}{_times(record.count)}; destroyed, created again under the same name once"
            " fleet shows no state of it"
        )
    return f"{name} created again after {where}{_times(record.count)}, not ready yet"


def _failures(
    desired: Desired, instances: list[Instance], records: Mapping[str, Restart], started: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """(failed to start, crash loop) problems: restart records of units not ready, units systemd
    rejected, and the failures of a global unit (which is never replaced, so has no record)."""
    never: list[str] = []
    crashing: list[str] = []
    by_name = {i.name: i for i in instances}
    sidekick_of = {i.sidekick.name: i for i in instances if i.sidekick is not None}
    for name, record in sorted(records.items()):
        if record.cause != "failed":
            continue
        instance = by_name.get(name) or sidekick_of.get(name)
        if record.phase == "created" and instance is not None:
            healthy = instance.ready_now if record.role == ROLE_MAIN else instance.registered
            if healthy:
                continue
        (crashing if record.ran else never).append(restart_message(name, record))
    for i in instances:
        if i.health.rejected:
            load = i.health.state.load_state if i.health.state else "?"
            never.append(f"{i.name}: systemd rejected the unit ({load})")
        elif desired.global_ and i.health.failed:
            text = f"{i.name} {state_text(i.health.state)} on some machines"
            (crashing if started.get(i.name) == i.file_hash else never).append(text)
    return never, crashing


def _trouble(
    scene: Scene, desired: Desired, outcome: Outcome, limits: Limits, started: Mapping[str, str]
) -> Trouble:
    never, crashing = _failures(desired, outcome.instances, outcome.records, started)
    unschedulable = _unschedulable(scene, desired, outcome.instances, outcome.replace, limits)
    return Trouble(outcome.losses.troubles, unschedulable, never, crashing)


def _row(
    unit: ObservedUnit, role: str, slot: str, health: Health, template: str, restarts: int
) -> UnitStatus:
    row = unit_status(unit, health.state, role, slot, template)
    return row.model_copy(update={"restarts": restarts}) if restarts else row


def _units(scene: Scene, desired: Desired, outcome: Outcome) -> list[UnitStatus]:
    out: list[UnitStatus] = []
    counts = {name: r.count for name, r in outcome.records.items()}
    for i in outcome.instances:
        row = _row(i.unit, "main", str(i.slot), i.health, i.template, counts.get(i.name, 0))
        out.append(row.model_copy(update={"ready": i.ready, "registered": i.registered}))
    for slot, unit in scene.ownership.sidekicks.items():
        health = assess(unit, unit_hash(unit.options), scene.states, desired.global_)
        owner = scene.ownership.owners[unit.name]
        row = _row(unit, ROLE_DISCOVERY, str(slot), health, owner.template, counts.get(unit.name, 0))
        registered = scene.registrations.get(str(slot), False)
        out.append(row.model_copy(update={"ready": health.running, "registered": registered}))
    for unit in scene.ownership.strays:
        stray = scene.ownership.owners[unit.name]
        health = assess(unit, unit_hash(unit.options), scene.states, desired.global_)
        out.append(_row(unit, stray.role, "", health, stray.template, 0))
    return sorted(out, key=lambda u: u.name)


def _restarts(records: Mapping[str, Restart]) -> list[RestartStatus]:
    return [
        RestartStatus(
            unit=name,
            instance=str(r.slot),
            role=r.role,
            phase=r.phase,
            cause=r.cause,
            restarts=r.count,
            last_failure=rfc3339(r.failed_at),
            next_try=rfc3339(r.next_try),
            state=r.state,
            machine=r.machine,
            ran=r.ran,
        )
        for name, r in sorted(records.items())
    ]


DRAIN_RECHECK = 1.0
"""Seconds between looks at fleet while a destroyed unit's state lingers before its re-creation."""


def _requeue(
    desired: Desired,
    outcome: Outcome,
    progress: Progress | None,
    now: float,
    policy: BackoffPolicy,
) -> float | None:
    spec = desired.spec
    waits: list[float] = []
    for i in outcome.instances:
        if i.ready_since is not None and not i.ready:
            waits.append(i.ready_since.since + spec.rollout.min_ready_seconds - now)
        for since, stuck in (
            (i.unscheduled_since, i.stuck),
            (i.sidekick_unscheduled_since, i.sidekick_stuck),
        ):
            if since is not None and not stuck:
                waits.append(since.since + UNSCHEDULED_GRACE - now)
        if i.ready_since is not None and i.name in outcome.records:
            waits.append(i.ready_since.since + policy.reset - now)  # the back-off is forgotten then
    for r in outcome.records.values():
        if r.phase == "failed":
            waits.append(r.next_try - now)
        elif r.phase == "destroyed":
            # waiting for fleet to drop the old state: a state of a unit that no longer exists names no
            # owner, so no poll queues this service when it goes; look again shortly
            waits.append(max(r.next_try - now, DRAIN_RECHECK))
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


def _started(instances: list[Instance], previous: Mapping[str, str]) -> dict[str, str]:
    return {i.name: i.file_hash for i in instances if i.ready_now or previous.get(i.name) == i.file_hash}


def _rollback_status(rollback: Rollback | None) -> RollbackStatus | None:
    if rollback is None:
        return None
    return RollbackStatus(
        from_template=rollback.from_template,
        to_template=rollback.to_template,
        generation=rollback.generation,
        time=rfc3339(rollback.since),
    )


def _last_available(desired: Desired, memory: PlanMemory) -> AvailableTemplate | None:
    """Kept in status with ``autoRollback`` only, so a new leader can still roll back."""
    stable = memory.stable
    if stable is None or not desired.spec.rollout.auto_rollback:
        return None
    spec = stable.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return AvailableTemplate(template=stable.template, spec=spec)


def build_report(
    scene: Scene,
    desired: Desired,
    limits: Limits,
    generation: int,
    memory: PlanMemory,
    outcome: Outcome,
    policy: BackoffPolicy,
) -> Report:
    spec = desired.spec
    instances = outcome.instances
    counts = _counts(desired, instances, limits)
    progress = None if spec.paused else next_progress(memory.progress, counts, scene.now)
    deadline = float(spec.rollout.progress_deadline_seconds)
    exceeded = progress is not None and deadline_exceeded(progress, deadline, scene.now)
    started = _started(instances, memory.started)
    rolled_back = None if outcome.rollback is None else rollbacks.message(outcome.rollback, deadline)
    conditions, transitions = build_conditions(
        counts,
        _trouble(scene, desired, outcome, limits, started),
        paused=spec.paused,
        exceeded=exceeded,
        deadline=deadline,
        transitions=memory.transitions,
        now=scene.now,
        rolled_back=rolled_back,
    )
    new_memory = PlanMemory(
        ready_since={i.name: i.ready_since for i in instances if i.ready_since is not None},
        unscheduled_since=_unscheduled_memory(instances),
        progress=progress,
        transitions=transitions,
        restarts=dict(outcome.records),
        placed=outcome.losses.placed,
        lost=outcome.losses.reported,
        started=started,
        stable=rollbacks.next_stable(memory, desired.main_template, spec, counts.complete),
        rollback=outcome.rollback,
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
        units=_units(scene, desired, outcome),
        template=desired.main_template,
        restarts=_restarts(outcome.records),
        rollback=_rollback_status(outcome.rollback),
        last_available=_last_available(desired, new_memory),
    )
    requeue = _requeue(desired, outcome, progress, scene.now, policy)
    return Report(status, new_memory, requeue)


def _time(text: str) -> float:
    return parse_rfc3339(text).timestamp()


def _record(row: RestartStatus) -> Restart:
    return Restart(
        slot=int(row.instance),
        role=row.role,
        phase=row.phase,
        count=row.restarts,
        failed_at=_time(row.last_failure),
        next_try=_time(row.next_try),
        state=row.state,
        machine=row.machine,
        ran=row.ran,
        cause=row.cause,
    )


def memory_from_status(status: ServiceStatus) -> PlanMemory:
    """What a new leader recovers from the status the last one wrote: the restart records (times to
    the second), where each instance ran, the last available template and a rollback in force.
    Anything that does not read back is left out rather than trusted."""
    restarts: dict[str, Restart] = {}
    for row in status.restarts:
        try:
            restarts[row.unit] = _record(row)
        except ValueError:
            continue
    stable = None
    if status.last_available is not None:
        try:
            spec = ServiceSpec.model_validate(status.last_available.spec)
            stable = Stable(status.last_available.template, spec)
        except ValueError:
            stable = None
    rollback = None
    if status.rollback is not None and stable is not None:
        held = status.rollback
        try:
            rollback = Rollback(held.from_template, held.to_template, held.generation, _time(held.time))
        except ValueError:
            rollback = None
    placed = {u.name: u.machine for u in status.units if u.role == ROLE_MAIN and u.machine}
    return PlanMemory(restarts=restarts, placed=placed, stable=stable, rollback=rollback)
