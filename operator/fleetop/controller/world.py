"""The planners' vocabulary: what they observe, what they remember, and what they ask for.

One poll of fleet is a *snapshot* (:class:`~fleetop.controller.runtime.informers.FleetSnapshot`,
fleet's own types); its *index* (:class:`FleetIndex`) is the same poll as planner values, grouped by
owner, built once per poll; one pass of one service reads it as a *scene*
(:class:`~fleetop.controller.services.instances.Scene`: that service's units, registrations and now).

The planner is pure, so its inputs are plain immutable values. They mirror fleet's entities
(``fleetop.fleet.model``) without importing them: the operator converts, and the planner stays
testable with hand-written worlds. fleet keeps no timestamps, so the few times the planner needs
(when a unit was first seen ready, first seen unscheduled, when progress was last made, when each
condition last changed) live in :class:`PlanMemory`, which the operator hands back on the next pass
and may persist as JSON. So do the facts a crash loop needs to be answered calmly rather than on
every pass: each unit's restart count, when it last failed and when it may be tried again
(:class:`Restart`), the machine each instance last ran on (to notice one that left the cluster), the
last template that was fully available and a rollback to it (:class:`Stable`, :class:`Rollback`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetop.backoff import exponential
from fleetop.fleet.ownership import PROXY_ROLES, Owner, owned_by
from fleetop.fleet.units import UnitOption
from fleetop.models.service import ServiceSpec
from fleetop.models.status import ServiceStatus

LAUNCHED = "launched"


@dataclass(frozen=True, slots=True)
class ObservedUnit:
    """A unit as fleet lists it. ``machine_id`` None: unscheduled. ``current_state`` None: omitted."""

    name: str
    options: tuple[UnitOption, ...]
    desired_state: str = LAUNCHED
    current_state: str | None = None
    machine_id: str | None = None


@dataclass(frozen=True, slots=True)
class ObservedState:
    """A UnitState: what systemd reports on one machine for the unit file with ``hash``."""

    name: str
    hash: str
    machine_id: str
    load_state: str = "loaded"
    active_state: str = "active"
    sub_state: str = "running"


@dataclass(frozen=True, slots=True)
class ObservedMachine:
    id: str
    primary_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


# -- the index of one poll ---------------------------------------------------------------------------


def owner_key(owner: Owner) -> str:
    """The work-queue key of a unit's owner: ``services/<name>`` or ``proxies/<name>``."""
    return f"{'proxies' if owner.role in PROXY_ROLES else 'services'}/{owner.service}"


@dataclass(frozen=True, slots=True)
class FleetIndex:
    """One poll of fleet (a snapshot) as the planners read it, built once per poll and shared by every
    pass, so that a pass costs what its own key owns rather than what the whole cluster holds.

    ``owned`` groups the units whose ``[X-Fleetop]`` section names an owner by the owner's queue key
    (``services/web``, ``proxies/edge``). ``units`` holds every unit, owned or not: a name someone else
    took matters to a planner choosing names."""

    units: Mapping[str, ObservedUnit] = field(default_factory=dict)
    states: Mapping[str, Sequence[ObservedState]] = field(default_factory=dict)
    machines: Sequence[ObservedMachine] = ()
    owned: Mapping[str, Sequence[ObservedUnit]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        units: Iterable[ObservedUnit],
        states: Iterable[ObservedState] = (),
        machines: Iterable[ObservedMachine] = (),
    ) -> FleetIndex:
        """Index hand-made observations (tests, tools); the operator's informer builds it from its
        snapshot without reading any unit's options twice."""
        by_state: dict[str, list[ObservedState]] = {}
        for state in states:
            by_state.setdefault(state.name, []).append(state)
        owned: dict[str, list[ObservedUnit]] = {}
        all_units = list(units)
        for unit in all_units:
            owner = owned_by(unit.options)
            if owner is not None:
                owned.setdefault(owner_key(owner), []).append(unit)
        return cls(
            {u.name: u for u in all_units},
            {name: tuple(found) for name, found in by_state.items()},
            tuple(machines),
            {key: tuple(sorted(found, key=lambda u: u.name)) for key, found in owned.items()},
        )

    def owned_by(self, key: str) -> Sequence[ObservedUnit]:
        """The units owned by queue key ``key`` (any role), in name order."""
        return self.owned.get(key, ())

    def states_of(self, units: Iterable[ObservedUnit]) -> list[ObservedState]:
        return [s for u in units for s in self.states.get(u.name, ())]


# -- actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateUnit:
    """PUT a unit that does not exist yet, with all its options."""

    name: str
    options: tuple[UnitOption, ...]
    desired_state: str = LAUNCHED


@dataclass(frozen=True, slots=True)
class DestroyUnit:
    """DELETE an owned unit. ``reason`` is for events and logs."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetDesiredState:
    """PUT only a desiredState on an owned unit (e.g. someone ran ``fleetctl stop`` on it)."""

    name: str
    state: str


Action = CreateUnit | DestroyUnit | SetDesiredState


# -- memory ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """``since``: when the unit with file hash ``hash`` was first seen in some condition. A unit
    replaced in place keeps its name but gets a new hash, which restarts the clock."""

    hash: str
    since: float


@dataclass(frozen=True, slots=True)
class Progress:
    """The current rollout episode, for ``progressDeadlineSeconds``.

    An episode starts when the template changes or when a complete service becomes incomplete.
    ``since`` is the last time progress was made: more updated instances, more of them ready, or
    fewer old ones than ever before in the episode (so churn is not progress).
    """

    template: str
    since: float
    best_updated: int
    best_ready: int
    least_old: int
    complete: bool


@dataclass(frozen=True, slots=True)
class Transition:
    """A condition's last status and when it took it (RFC 3339)."""

    status: str
    time: str


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
