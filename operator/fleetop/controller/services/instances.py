"""The planner's reading of the world: which units are this service's, and how each instance is doing.

Ownership is decided by the ``[X-Fleetop]`` section alone, never by a name: a unit is this service's
when it says ``Service=<name>`` with ``Role=main`` or ``Role=discovery``. Anything else, including an
unowned ``web@9999.service`` or another service's unit that happens to share a name, is left alone,
and its names are never reused. An owned unit whose name is not one fleetop would write for that
role (``<svc>@<n>.service`` / ``<svc>-discovery@<n>.service``, ``n`` a plain number) is a stray.

Readiness of an instance (a main unit in a slot): desired and current state ``launched``, a state with
the unit's own file hash running on the unit's machine, its registration present when one is
expected (a sidekick, or an explicit ``discovery.prefix`` that something else registers under), all
of it continuously for ``minReadySeconds``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetop.controller.services.memory import Seen
from fleetop.controller.services.readiness import Health, assess
from fleetop.controller.services.unitrender import (
    main_template,
    render_main,
    render_sidekick,
    sidekick_template,
)
from fleetop.controller.unitfile import DEFAULT_UNITS, UnitSettings, needs_sidekick
from fleetop.controller.world import ObservedMachine, ObservedState, ObservedUnit
from fleetop.fleet.ownership import ROLE_DISCOVERY, ROLE_MAIN, Owner, owned_by
from fleetop.fleet.units import UnitOption, unit_hash
from fleetop.models.service import ServiceSpec

MAX_SLOT = 65535
UNSCHEDULED_GRACE = 30.0
"""Seconds a launched unit may stay unscheduled before the planner counts it as stuck. fleet schedules
a fresh unit within about two seconds on an idle cluster (``fleet-observed.md`` §8), much later under
load."""


@dataclass(frozen=True, slots=True)
class Ownership:
    """This service's units: main and sidekick units by slot, and owned units that fit no slot."""

    mains: dict[int, ObservedUnit]
    sidekicks: dict[int, ObservedUnit]
    strays: list[ObservedUnit]
    owners: dict[str, Owner]


def _slot_of(pattern: re.Pattern[str], name: str) -> int | None:
    match = pattern.fullmatch(name)
    if match is None:
        return None
    digits = match.group(1)
    if digits != str(int(digits)) or not 0 < int(digits) <= MAX_SLOT:
        return None
    return int(digits)


def read_ownership(service: str, units: Sequence[ObservedUnit]) -> Ownership:
    main_re = re.compile(rf"{re.escape(service)}@(\d+)\.service")
    side_re = re.compile(rf"{re.escape(service)}-discovery@(\d+)\.service")
    mains: dict[int, ObservedUnit] = {}
    sidekicks: dict[int, ObservedUnit] = {}
    strays: list[ObservedUnit] = []
    owners: dict[str, Owner] = {}
    for unit in units:
        owner = owned_by(unit.options)
        if owner is None or owner.service != service or owner.role not in (ROLE_MAIN, ROLE_DISCOVERY):
            continue
        owners[unit.name] = owner
        slot = _slot_of(main_re if owner.role == ROLE_MAIN else side_re, unit.name)
        if slot is None:
            strays.append(unit)
        elif owner.role == ROLE_MAIN:
            mains[slot] = unit
        else:
            sidekicks[slot] = unit
    return Ownership(mains, sidekicks, strays, owners)


@dataclass(frozen=True, slots=True)
class Scene:
    """The observations of one pass, indexed by unit name."""

    service: str
    units: Mapping[str, ObservedUnit]
    states: Mapping[str, Sequence[ObservedState]]
    registrations: Mapping[str, bool]
    machines: Sequence[ObservedMachine]
    ownership: Ownership
    now: float


@dataclass(frozen=True, slots=True)
class Desired:
    """What this spec renders to. Main units do not depend on their slot; sidekicks do."""

    service: str
    spec: ServiceSpec
    main_options: tuple[UnitOption, ...]
    main_hash: str
    main_template: str
    sidekick_template: str | None
    start: int
    global_: bool
    expects_registration: bool
    settings: UnitSettings = DEFAULT_UNITS

    @classmethod
    def build(cls, spec: ServiceSpec, service: str, settings: UnitSettings = DEFAULT_UNITS) -> Desired:
        """Render once; raises RenderError when the spec cannot become a unit file. ``settings`` are the
        installation's (fleetop's path, the key root sidekicks register under)."""
        start = spec.ports.base if spec.ports is not None else 1
        options = tuple(render_main(spec, service, start))
        sidekick = needs_sidekick(spec)
        if sidekick:
            render_sidekick(spec, service, start, settings)
        return cls(
            service=service,
            spec=spec,
            main_options=options,
            main_hash=unit_hash(options),
            main_template=main_template(spec, service),
            sidekick_template=sidekick_template(spec, service, settings) if sidekick else None,
            start=start,
            global_=spec.placement.global_,
            expects_registration=sidekick or spec.discovery.prefix is not None,
            settings=settings,
        )

    def sidekick_options(self, slot: int) -> tuple[UnitOption, ...]:
        return tuple(render_sidekick(self.spec, self.service, slot, self.settings))

    def slots(self) -> range:
        """Slot numbers to try, lowest first. A global service has exactly one."""
        if self.global_:
            return range(self.start, self.start + 1)
        return range(self.start, MAX_SLOT + 1)


@dataclass(frozen=True, slots=True)
class Instance:
    """One main unit (and its sidekick) with everything the decisions need."""

    slot: int
    unit: ObservedUnit
    sidekick: ObservedUnit | None
    template: str
    updated: bool
    health: Health
    registered: bool
    ready_now: bool
    ready_since: Seen | None
    ready: bool
    unscheduled_since: Seen | None
    stuck: bool
    sidekick_failed: bool = False
    sidekick_unscheduled_since: Seen | None = None
    sidekick_stuck: bool = False
    file_hash: str = ""

    @property
    def name(self) -> str:
        return self.unit.name

    @property
    def failed(self) -> bool:
        """The main unit failed. A failed sidekick (it restarts itself, ``Restart=always``, so failed
        means systemd's start limit) is restarted alone and does not fail its instance."""
        return self.health.failed


def _since(previous: Mapping[str, Seen], name: str, file_hash: str, now: float) -> Seen:
    seen = previous.get(name)
    return seen if seen is not None and seen.hash == file_hash else Seen(file_hash, now)


def _updated(desired: Desired, ownership: Ownership, slot: int, main_owner: Owner) -> bool:
    if main_owner.template != desired.main_template:
        return False
    sidekick = ownership.sidekicks.get(slot)
    if sidekick is None or desired.sidekick_template is None:
        return True
    return ownership.owners[sidekick.name].template == desired.sidekick_template


@dataclass(frozen=True, slots=True)
class _Memory:
    ready: Mapping[str, Seen]
    unscheduled: Mapping[str, Seen]
    now: float


def _sidekick_trouble(
    sidekick: ObservedUnit | None,
    main: ObservedUnit,
    states: Mapping[str, Sequence[ObservedState]],
    global_: bool,
    memory: _Memory,
) -> tuple[bool, Seen | None, bool]:
    """(failed, unscheduled since, stuck) of an instance's sidekick. A sidekick can only be stuck
    while its main unit has a machine: until then ``MachineOf`` cannot be met, which is expected."""
    if sidekick is None:
        return False, None, False
    file_hash = unit_hash(sidekick.options)
    health = assess(sidekick, file_hash, states, global_)
    since = _since(memory.unscheduled, sidekick.name, file_hash, memory.now) if health.unscheduled else None
    stuck = (
        since is not None and main.machine_id is not None and memory.now - since.since >= UNSCHEDULED_GRACE
    )
    return health.failed, since, stuck


def read_instances(
    desired: Desired,
    ownership: Ownership,
    states: Mapping[str, Sequence[ObservedState]],
    registrations: Mapping[str, bool],
    ready_memory: Mapping[str, Seen],
    unscheduled_memory: Mapping[str, Seen],
    now: float,
) -> list[Instance]:
    """Every owned main unit as an :class:`Instance`, by slot."""
    memory = _Memory(ready_memory, unscheduled_memory, now)
    return [
        _instance(desired, ownership, slot, unit, states, registrations, memory)
        for slot, unit in sorted(ownership.mains.items())
    ]


def _instance(
    desired: Desired,
    ownership: Ownership,
    slot: int,
    unit: ObservedUnit,
    states: Mapping[str, Sequence[ObservedState]],
    registrations: Mapping[str, bool],
    memory: _Memory,
) -> Instance:
    now = memory.now
    file_hash = unit_hash(unit.options)
    health = assess(unit, file_hash, states, desired.global_)
    registered = registrations.get(str(slot), False)
    sidekick = ownership.sidekicks.get(slot)
    side_failed, side_since, side_stuck = _sidekick_trouble(sidekick, unit, states, desired.global_, memory)
    ready_now = health.running and (registered or not desired.expects_registration)
    ready_since = _since(memory.ready, unit.name, file_hash, now) if ready_now else None
    unscheduled = _since(memory.unscheduled, unit.name, file_hash, now) if health.unscheduled else None
    return Instance(
        slot=slot,
        unit=unit,
        sidekick=sidekick,
        template=ownership.owners[unit.name].template,
        updated=_updated(desired, ownership, slot, ownership.owners[unit.name]),
        health=health,
        registered=registered,
        ready_now=ready_now,
        ready_since=ready_since,
        ready=ready_since is not None and now - ready_since.since >= desired.spec.rollout.min_ready_seconds,
        unscheduled_since=unscheduled,
        stuck=unscheduled is not None and now - unscheduled.since >= UNSCHEDULED_GRACE,
        sidekick_failed=side_failed,
        sidekick_unscheduled_since=side_since,
        sidekick_stuck=side_stuck,
        file_hash=file_hash,
    )
