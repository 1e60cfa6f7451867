"""Conditions and the rollout clock: turning counts into Available / Progressing / Degraded.

Kubernetes semantics, adapted to a world without timestamps: fleet never says when anything
happened, so the planner remembers when progress was last made (:class:`Progress`) and when each
condition last changed status (:class:`Transition`). ``lastTransitionTime`` moves only when a
condition's status changes, so a converged service gets a byte-identical status on every pass and
the executor has nothing to write.

Both kinds' statuses list their units the same way (:func:`unit_status`: fleet's view and systemd's
states), so that row is here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleetop.controller.world import ObservedState, ObservedUnit, Progress, Transition
from fleetop.models.status import Condition, ConditionType, UnitStatus
from fleetop.timefmt import rfc3339

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Counts:
    """The numbers the conditions are read from."""

    replicas: int
    min_ready: int
    total: int
    ready: int
    updated: int
    updated_ready: int
    old: int
    template: str

    @property
    def complete(self) -> bool:
        """Kubernetes' DeploymentComplete: exactly ``replicas`` instances, all updated and ready."""
        return self.total == self.replicas and self.updated_ready == self.replicas and self.old == 0


@dataclass(frozen=True, slots=True)
class Trouble:
    """Why the service is degraded, one list per reason, most urgent first. Empty lists: it is not."""

    machine_lost: list[str] = field(default_factory=list)
    unschedulable: list[str] = field(default_factory=list)
    failed_to_start: list[str] = field(default_factory=list)
    crash_loop: list[str] = field(default_factory=list)


def next_progress(previous: Progress | None, counts: Counts, now: float) -> Progress:
    """Advance the rollout clock. A new episode starts on a new template or when a complete service
    becomes incomplete; within an episode only a new best counts as progress."""
    complete = counts.complete
    fresh = previous is None or previous.template != counts.template or (previous.complete and not complete)
    if fresh:
        return Progress(counts.template, now, counts.updated, counts.updated_ready, counts.old, complete)
    assert previous is not None
    progressed = (
        counts.updated > previous.best_updated
        or counts.updated_ready > previous.best_ready
        or counts.old < previous.least_old
    )
    return Progress(
        previous.template,
        now if progressed else previous.since,
        max(previous.best_updated, counts.updated),
        max(previous.best_ready, counts.updated_ready),
        min(previous.least_old, counts.old),
        complete,
    )


def deadline_exceeded(progress: Progress, deadline: float, now: float) -> bool:
    return not progress.complete and now - progress.since >= deadline


Verdict = tuple[Status, str, str]
"""(status, reason, message) of one condition."""


def _available(counts: Counts) -> Verdict:
    message = f"{counts.ready} of {counts.replicas} instances ready (at least {counts.min_ready} required)"
    if counts.ready >= counts.min_ready:
        return "True", "MinimumReplicasAvailable", message
    return "False", "MinimumReplicasUnavailable", message


def _progressing(counts: Counts, paused: bool, exceeded: bool, deadline: float) -> Verdict:
    where = (
        f"template {counts.template}: {counts.updated_ready} of {counts.replicas} updated instances ready,"
        f" {counts.old} old remaining"
    )
    if paused:
        return "Unknown", "Paused", f"rollouts are paused; {where}"
    if counts.complete:
        return "True", "NewReplicaSetAvailable", f"template {counts.template} is fully rolled out"
    if exceeded:
        return "False", "ProgressDeadlineExceeded", f"no progress for {deadline:g}s or more; {where}"
    return "True", "ReplicaSetUpdated", f"rolling out {where}"


_DEGRADED_REASONS = ("MachineLost", "Unschedulable", "FailedToStart", "CrashLoop")


def _degraded(trouble: Trouble) -> Verdict:
    """``Degraded`` names the most urgent reason and lists every problem: a lost machine explains
    unscheduled instances; a unit that never started is a different fix from one that crashes."""
    lists = (trouble.machine_lost, trouble.unschedulable, trouble.failed_to_start, trouble.crash_loop)
    parts = [part for found in lists for part in found]
    for reason, found in zip(_DEGRADED_REASONS, lists, strict=True):
        if found:
            return "True", reason, "; ".join(parts)
    return "False", "AsExpected", "all instances are schedulable and none has failed"


def build_conditions(
    counts: Counts,
    trouble: Trouble,
    *,
    paused: bool,
    exceeded: bool,
    deadline: float,
    transitions: Mapping[str, Transition],
    now: float,
    rolled_back: str | None = None,
) -> tuple[list[Condition], dict[str, Transition]]:
    """The three conditions, with transition times carried over while the status stays the same.
    ``rolled_back``: the message of a rollback in force (``Progressing=False, RolledBack``)."""
    progressing: Verdict = (
        ("False", "RolledBack", rolled_back)
        if rolled_back is not None
        else _progressing(counts, paused, exceeded, deadline)
    )
    wanted: list[tuple[ConditionType, Verdict]] = [
        ("Available", _available(counts)),
        ("Progressing", progressing),
        ("Degraded", _degraded(trouble)),
    ]
    conditions: list[Condition] = []
    memo: dict[str, Transition] = {}
    for kind, (status, reason, message) in wanted:
        previous = transitions.get(kind)
        transition = (
            previous
            if previous is not None and previous.status == status
            else Transition(status, rfc3339(now))
        )
        memo[kind] = transition
        conditions.append(
            Condition(
                type=kind,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=transition.time,
            )
        )
    return conditions, memo


def invalid_condition(
    message: str, transitions: Mapping[str, Transition], now: float
) -> tuple[Condition, Transition]:
    """``Invalid=True``: the spec validated but cannot be written as a unit file."""
    previous = transitions.get("Invalid")
    transition = (
        previous if previous is not None and previous.status == "True" else Transition("True", rfc3339(now))
    )
    condition = Condition(
        type="Invalid",
        status="True",
        reason="UnitRenderFailed",
        message=message,
        last_transition_time=transition.time,
    )
    return condition, transition


SOURCE_JUDGED: tuple[ConditionType, ...] = ("Available", "Progressing", "Degraded")
"""The conditions judged from what fleet reports (``Invalid`` is judged from the spec alone)."""


def source_lost_message(source: str, since: str, error: str, tried: Sequence[str]) -> str:
    """``fleet has not answered since <since> (tried A, B): <error>``: the one message of an outage."""
    where = f" (tried {', '.join(tried)})" if tried else ""
    return f"{source} has not answered since {since}{where}: {error}"


def unknown_conditions(
    conditions: Sequence[Condition],
    *,
    reason: str,
    message: str,
    since: str,
    judged: Sequence[ConditionType] = SOURCE_JUDGED,
) -> list[Condition]:
    """The conditions once the source they are judged from is lost (pure).

    Each type in ``judged`` becomes ``Unknown`` with ``reason``, ``message`` (plus what it said last)
    and ``lastTransitionTime`` = ``since``, when the source was lost; one already ``Unknown`` for this
    ``reason`` is kept as it is, so every pass of an outage yields the same status. A judged type that
    is missing is added; the others (``Invalid``) are kept. Order: as given, added ones last.
    """
    result: list[Condition] = []
    for condition in conditions:
        if condition.type not in judged or (condition.status == "Unknown" and condition.reason == reason):
            result.append(condition)
            continue
        last = f"{condition.status}" + (f" ({condition.reason})" if condition.reason else "")
        result.append(
            Condition(
                type=condition.type,
                status="Unknown",
                reason=reason,
                message=f"{message}; last known: {last}",
                last_transition_time=since,
            )
        )
    present = {c.type for c in conditions}
    for kind in judged:
        if kind not in present:
            result.append(
                Condition(
                    type=kind, status="Unknown", reason=reason, message=message, last_transition_time=since
                )
            )
    return result


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
