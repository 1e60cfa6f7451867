"""The planner's vocabulary: what it observes, what it remembers, and what it asks for.

The planner is pure, so its inputs are plain immutable values. They mirror fleet's entities
(``fleetop.fleet.model``) without importing them: the operator converts, and the planner stays
testable with hand-written worlds. fleet keeps no timestamps, so the few times the planner needs
(when a unit was first seen ready, first seen unscheduled, when progress was last made, when each
condition last changed) live in :class:`PlanMemory`, which the operator hands back on the next pass
and may persist as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetop.fleet.units import UnitOption
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
class PlanMemory:
    """What the planner needs to remember between passes for one service. Start with ``PlanMemory()``."""

    ready_since: Mapping[str, Seen] = field(default_factory=dict)
    unscheduled_since: Mapping[str, Seen] = field(default_factory=dict)
    progress: Progress | None = None
    transitions: Mapping[str, Transition] = field(default_factory=dict)

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
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanMemory:
        """Read :meth:`to_json` output; anything malformed is forgotten rather than trusted."""
        try:
            progress = data.get("progress")
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
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return cls()


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
    observed changing (minReadySeconds, the unscheduled grace, the progress deadline), or None.
    """

    actions: list[Action]
    status: ServiceStatus | None
    memory: PlanMemory
    requeue_after: float | None = None
