"""What the service planner remembers between passes, and what it answers.

The planner is pure, and fleet keeps no timestamps, so the few times it needs (when a unit was first
seen ready, first seen unscheduled, when progress was last made, when each condition last changed)
live in :class:`PlanMemory`, which the reconciler hands back on the next pass and a new leader recovers
from the status it finds. So do the facts a crash loop needs to be answered calmly rather than on
every pass: each unit's restart count, when it last failed and when it may be tried again
(:class:`Restart`), the machine each instance last ran on (to notice one that left the cluster), the
last template that was fully available and a rollback to it (:class:`Stable`, :class:`Rollback`).
One pass's answer is a :class:`Plan`: the actions for the executor, the status, the new memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetop.backoff import exponential
from fleetop.controller.world import Action, Progress, Transition
from fleetop.models.service import ServiceSpec
from fleetop.models.status import ServiceStatus


@dataclass(frozen=True, slots=True)
class Seen:
    """``since``: when the unit with file hash ``hash`` was first seen in some condition. A unit
    replaced in place keeps its name but gets a new hash, which restarts the clock."""

    hash: str
    since: float


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Crash-loop back-off, Kubernetes' CrashLoopBackOff numbers by default: a failed unit is
    replaced ``base`` seconds after its first failure, then after twice as long for every restart
    before it, at most ``cap``; a unit ready for ``reset`` seconds starts again from ``base``."""

    base: float = 10.0
    cap: float = 300.0
    reset: float = 600.0

    @classmethod
    def scaled(cls, base: float) -> BackoffPolicy:
        """The default shape (cap 30 times base, reset 60 times base) around another base."""
        return cls(base, base * 30, base * 60)

    def delay(self, restarts: int) -> float:
        return exponential(restarts, initial=self.base, cap=self.cap)


RestartPhase = Literal["failed", "destroyed", "created"]


RestartCause = Literal["failed", "unscheduled"]


@dataclass(frozen=True, slots=True)
class Restart:
    """One unit's replacement history, keyed by its name (main units and sidekicks separately).

    ``phase``: ``failed``, the unit failed and is kept (its state and journal stay visible) until
    ``next_try``; ``destroyed``, the planner destroyed it and creates it again under the same name
    once ``next_try`` has passed and fleet shows no state of that file any more; ``created``, it was
    created again and is watched: failing again starts a longer back-off, being ready for
    :attr:`BackoffPolicy.reset` forgets the record. ``count`` is how often it was created again,
    ``ran`` whether it was ever ready since the streak began (a crash loop rather than a unit that
    never started), ``state`` and ``machine`` the evidence of the last failure.
    """

    slot: int
    role: str
    phase: RestartPhase
    count: int
    failed_at: float
    next_try: float
    state: str
    machine: str = ""
    ran: bool = False
    cause: RestartCause = "failed"


@dataclass(frozen=True, slots=True)
class Stable:
    """The last template that was fully rolled out and ready, with the spec that renders it."""

    template: str
    spec: ServiceSpec


@dataclass(frozen=True, slots=True)
class Rollback:
    """``rollout.autoRollback`` acted: the spec written at ``generation`` (template ``from_template``)
    crash-looped until its progress deadline, so ``to_template`` runs instead until the spec is
    written again."""

    from_template: str
    to_template: str
    generation: int
    since: float


@dataclass(frozen=True, slots=True)
class PlanMemory:
    """What the planner needs to remember between passes for one service. Start with ``PlanMemory()``."""

    ready_since: Mapping[str, Seen] = field(default_factory=dict)
    unscheduled_since: Mapping[str, Seen] = field(default_factory=dict)
    progress: Progress | None = None
    transitions: Mapping[str, Transition] = field(default_factory=dict)
    restarts: Mapping[str, Restart] = field(default_factory=dict)
    placed: Mapping[str, str] = field(default_factory=dict)
    """Main unit -> the machine it was last seen on (kept while it is unscheduled)."""
    lost: frozenset[str] = frozenset()
    """Machines already reported as lost (one event each)."""
    started: Mapping[str, str] = field(default_factory=dict)
    """Main unit -> file hash, for units seen ready since they were created (a later failure is a
    crash, not a failure to start)."""
    stable: Stable | None = None
    rollback: Rollback | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "readySince": {k: [v.hash, v.since] for k, v in sorted(self.ready_since.items())},
            "unscheduledSince": {k: [v.hash, v.since] for k, v in sorted(self.unscheduled_since.items())},
            "progress": None
            if self.progress is None
            else {
                "template": self.progress.template,
                "since": self.progress.since,
                "bestUpdated": self.progress.best_updated,
                "bestReady": self.progress.best_ready,
                "leastOld": self.progress.least_old,
                "complete": self.progress.complete,
            },
            "transitions": {k: [v.status, v.time] for k, v in sorted(self.transitions.items())},
            "restarts": {k: _restart_json(v) for k, v in sorted(self.restarts.items())},
            "placed": dict(sorted(self.placed.items())),
            "lost": sorted(self.lost),
            "started": dict(sorted(self.started.items())),
            "stable": None
            if self.stable is None
            else {
                "template": self.stable.template,
                "spec": self.stable.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            },
            "rollback": None
            if self.rollback is None
            else {
                "from": self.rollback.from_template,
                "to": self.rollback.to_template,
                "generation": self.rollback.generation,
                "since": self.rollback.since,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanMemory:
        """Read :meth:`to_json` output; anything malformed is forgotten rather than trusted."""
        try:
            progress = data.get("progress")
            stable = data.get("stable")
            rollback = data.get("rollback")
            return cls(
                ready_since={
                    str(k): Seen(str(h), float(t)) for k, (h, t) in data.get("readySince", {}).items()
                },
                unscheduled_since={
                    str(k): Seen(str(h), float(t)) for k, (h, t) in data.get("unscheduledSince", {}).items()
                },
                progress=None
                if progress is None
                else Progress(
                    str(progress["template"]),
                    float(progress["since"]),
                    int(progress["bestUpdated"]),
                    int(progress["bestReady"]),
                    int(progress["leastOld"]),
                    bool(progress["complete"]),
                ),
                transitions={
                    str(k): Transition(str(s), str(t)) for k, (s, t) in data.get("transitions", {}).items()
                },
                restarts={str(k): _restart_of(v) for k, v in data.get("restarts", {}).items()},
                placed={str(k): str(v) for k, v in data.get("placed", {}).items()},
                lost=frozenset(str(m) for m in data.get("lost", [])),
                started={str(k): str(v) for k, v in data.get("started", {}).items()},
                stable=None
                if stable is None
                else Stable(str(stable["template"]), ServiceSpec.model_validate(stable["spec"])),
                rollback=None
                if rollback is None
                else Rollback(
                    str(rollback["from"]),
                    str(rollback["to"]),
                    int(rollback["generation"]),
                    float(rollback["since"]),
                ),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return cls()


def _restart_json(record: Restart) -> dict[str, Any]:
    return {
        "slot": record.slot,
        "role": record.role,
        "phase": record.phase,
        "count": record.count,
        "failedAt": record.failed_at,
        "nextTry": record.next_try,
        "state": record.state,
        "machine": record.machine,
        "ran": record.ran,
        "cause": record.cause,
    }


def _restart_of(data: Mapping[str, Any]) -> Restart:
    phase, cause = data["phase"], data.get("cause", "failed")
    if phase not in ("failed", "destroyed", "created") or cause not in ("failed", "unscheduled"):
        raise ValueError(f"unknown restart phase {phase!r} or cause {cause!r}")
    return Restart(
        slot=int(data["slot"]),
        role=str(data["role"]),
        phase=phase,
        count=int(data["count"]),
        failed_at=float(data["failedAt"]),
        next_try=float(data["nextTry"]),
        state=str(data["state"]),
        machine=str(data.get("machine", "")),
        ran=bool(data.get("ran", False)),
        cause=cause,
    )


@dataclass(frozen=True, slots=True)
class PlanEvent:
    """Something worth an Event beyond the actions themselves (a back-off restart, a lost machine,
    a rollback). ``message`` is stable for one cause, so repeats aggregate into one event's count."""

    reason: str
    message: str
    warning: bool = True


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer for one service.

    ``actions`` are listed in the order the executor applies them: every :class:`CreateUnit` first,
    then :class:`SetDesiredState`, then every :class:`DestroyUnit` (sidekicks before their main
    units, so a registration goes before its instance stops). Creating before destroying is what
    makes a surge "start before stop"; it also means a plan never creates and destroys the same name:
    replacing a unit in place is a destroy in one pass and a create in a later one.

    ``status`` is None when the service was deleted (the operator removes its status key).
    ``requeue_after`` is the number of seconds after which the answer may change with nothing
    observed changing (minReadySeconds, the unscheduled grace, the progress deadline, a back-off
    that ends), or None. ``events`` are to be recorded once, after the actions.
    """

    actions: list[Action]
    status: ServiceStatus | None
    memory: PlanMemory
    requeue_after: float | None = None
    events: list[PlanEvent] = field(default_factory=list)
