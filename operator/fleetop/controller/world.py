"""The controller's shared vocabulary: what the planners observe and what they ask the executor for.

One poll of fleet is a *snapshot* (:class:`~fleetop.controller.runtime.informers.FleetSnapshot`,
fleet's own types); its *index* (:class:`FleetIndex`) is the same poll as planner values, grouped by
owner, built once per poll; one pass of one service reads it as a *scene*
(:class:`~fleetop.controller.services.instances.Scene`: that service's units, registrations and now).

The planners are pure, so their inputs are plain immutable values. They mirror fleet's entities
(``fleetop.fleet.model``) without importing them: the informer converts, and the planners stay
testable with hand-written worlds. Their answers are :data:`Action` values the executor carries out.
What the service planner remembers between passes is its own (:mod:`fleetop.controller.services.memory`);
the condition clock both kinds share (:class:`Progress`, :class:`Transition`) is here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleetop.fleet.ownership import PROXY_ROLES, Owner, owned_by
from fleetop.fleet.units import UnitOption

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


def launched_instances(service: str, units: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The instances of ``service`` whose main unit (``<service>@<instance>.service``) is among
    ``units`` (``(name, desiredState)`` of the units fleet holds for it) with desiredState launched."""
    found = set()
    for name, desired_state in units:
        prefix, _, rest = name.partition("@")
        if prefix == service and rest.endswith(".service") and desired_state == "launched":
            found.add(rest.removesuffix(".service"))
    return frozenset(found)


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


# -- the condition clock ---------------------------------------------------------------------------


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
