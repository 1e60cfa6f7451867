"""Informers: in-memory caches of etcd prefixes and of fleet, which say *which* key to reconcile.

Reconciling is level-triggered: a reconcile reads these caches and decides from scratch, so an
informer's only output besides its cache is a set of keys to enqueue. Nothing downstream acts on
deltas.

* The caches of etcd prefixes (:mod:`fleetop.prefixes`): the specs' and the registrations' (one
  :class:`~fleetop.prefixes.RegistrationCaches` per operator, for the prefixes the specs name).
* :class:`FleetInformer` polls fleet (which has no watch) for units, states and machines: every
  ``fast`` seconds while something converges, every ``slow`` seconds (or further apart, see
  QUIET_POLL_SHARE) when steady; units only when needed (UNITS_AT_LEAST). A poll that read every page
  as last time reuses the last snapshot and reports nothing. Otherwise it diffs snapshots
  and reports the owners (from each unit's ``[X-Fleetop]`` section) whose units or states changed.
  :meth:`FleetInformer.expect` gives the reconcilers read-your-writes without waiting: after the
  executor changed units, that key plans nothing in fleet until a poll that began after the change has
  completed, and that poll queues the key again. Nothing waits for a poll.
  When fleet stops answering (a poll fails, or one has hung for ``stall_after`` seconds) the informer
  keeps its last snapshot but says it is blind (:attr:`FleetInformer.loss`: since when, why, which
  endpoints were tried) and reports every owner, so each is re-judged without acting; the first poll
  that succeeds again reports every owner once more.

No key can stop an informer: a spec that cannot be read becomes an invalid entry
(:meth:`~fleetop.store.Store.entry`), a change handler that fails is logged and the stream goes on,
a fleet poll that fails for any reason counts as a failed poll, and :func:`follow` restarts a cache
whatever ended it. Only cancellation ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from fleetop.backoff import exponential
from fleetop.clock import SYSTEM_CLOCK, Clock
from fleetop.controller.world import FleetIndex, ObservedMachine, ObservedState, ObservedUnit, owner_key
from fleetop.errors import FleetopError
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.fleet.model import Machine, Unit, UnitState
from fleetop.fleet.ownership import owned_by
from fleetop.keys import Keys, is_name
from fleetop.models import ProxySpec, ServiceSpec
from fleetop.prefixes import (
    PrefixCache,
    RegistrationCaches,
    follow,
)
from fleetop.store import KIND_ORDER, Entry, Kind, Store, other_kind, shared_name

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class FleetSnapshot:
    """One consistent-enough poll of fleet: units by name, states by unit name, machines by id."""

    units: Mapping[str, Unit] = field(default_factory=dict)
    states: Mapping[str, tuple[UnitState, ...]] = field(default_factory=dict)
    machines: Mapping[str, Machine] = field(default_factory=dict)
    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Queue key (``services/web``) -> names of the units it owns."""
    owner_of: Mapping[str, str] = field(default_factory=dict)
    """Unit name -> queue key of its owner (owned units only)."""
    started: float = 0.0
    """The informer's ``timer.now()`` (monotonic) when the poll began: a change made before it is
    visible in it."""

    def restamped(self, started: float) -> FleetSnapshot:
        """The same poll seen again at ``started``: the same mappings (and index, once built)."""
        again = dataclasses.replace(self, started=started)
        if "index" in self.__dict__:
            again.__dict__["index"] = self.__dict__["index"]
        return again

    def same_poll(self, other: FleetSnapshot) -> bool:
        """True when ``other`` is this poll restamped (:meth:`restamped`): nothing changed."""
        return self.units is other.units and self.states is other.states and self.machines is other.machines

    @functools.cached_property
    def index(self) -> FleetIndex:
        """This poll as the planners read it: built on first use, once per poll, shared by every pass
        (no unit's options are read again: the owners are the ones this snapshot already holds)."""
        units = {name: _observed_unit(u) for name, u in self.units.items()}
        states = {name: tuple(_observed_state(s) for s in found) for name, found in self.states.items()}
        machines = tuple(
            ObservedMachine(m.id, m.primary_ip, dict(m.metadata)) for m in self.machines.values()
        )
        owned = {key: tuple(units[n] for n in sorted(names)) for key, names in self.owners.items()}
        return FleetIndex(units, states, machines, owned)

    def owned(self, key: str) -> tuple[list[Unit], list[UnitState]]:
        names = sorted(self.owners.get(key, frozenset()))
        units = [self.units[n] for n in names]
        states = [s for n in names for s in self.states.get(n, ())]
        return units, states


def _observed_unit(u: Unit) -> ObservedUnit:
    return ObservedUnit(u.name, tuple(u.options), u.desired_state, u.current_state, u.machine_id)


def _observed_state(s: UnitState) -> ObservedState:
    return ObservedState(s.name, s.hash, s.machine_id, s.load_state, s.active_state, s.sub_state)


def unit_owner_key(unit: Unit) -> str | None:
    """The queue key of the owner of ``unit``, or None for a unit fleetop does not own."""
    owner = owned_by(unit.options)
    return None if owner is None else owner_key(owner)


def build_snapshot(
    units: list[Unit],
    states: list[UnitState],
    machines: list[Machine],
    started: float,
    previous: FleetSnapshot | None = None,
) -> FleetSnapshot:
    """Index one poll. A unit that is the very object ``previous`` held (the client reuses what it
    parsed from an unchanged page) keeps its owner without its options being read again."""
    by_state: dict[str, list[UnitState]] = {}
    for state in states:
        by_state.setdefault(state.name, []).append(state)
    owners: dict[str, set[str]] = {}
    owner_of: dict[str, str] = {}
    old_units = previous.units if previous is not None else {}
    old_owner_of = previous.owner_of if previous is not None else {}
    for unit in units:
        key = old_owner_of.get(unit.name) if old_units.get(unit.name) is unit else unit_owner_key(unit)
        if key is not None:
            owners.setdefault(key, set()).add(unit.name)
            owner_of[unit.name] = key
    return FleetSnapshot(
        units={u.name: u for u in units},
        states={name: tuple(found) for name, found in by_state.items()},
        machines={m.id: m for m in machines},
        owners={k: frozenset(v) for k, v in owners.items()},
        owner_of=owner_of,
        started=started,
    )


def _same(new: list[T], old: list[T]) -> bool:
    """The same objects in the same order: the client reused every page it parsed last time."""
    return len(new) == len(old) and all(a is b for a, b in zip(new, old, strict=True))


def changed_owners(old: FleetSnapshot, new: FleetSnapshot) -> set[str]:
    """Owner keys whose units or states differ between two snapshots (either side)."""
    changed: set[str] = set()
    for key in old.owners.keys() | new.owners.keys():
        before, after = old.owners.get(key, frozenset()), new.owners.get(key, frozenset())
        if before != after:
            changed.add(key)
            continue
        for name in after:
            if old.units.get(name) != new.units.get(name) or old.states.get(name) != new.states.get(name):
                changed.add(key)
                break
    # A state that lingers after its unit is gone still matters to whoever owned the unit last.
    for name in old.states.keys() ^ new.states.keys():
        unit = old.units.get(name) or new.units.get(name)
        owner = unit_owner_key(unit) if unit is not None else None
        if owner is not None:
            changed.add(owner)
    return changed


@dataclass(frozen=True)
class FleetLoss:
    """fleet stopped answering: since when (UNIX time the first unanswered poll began), why, and the
    endpoints that were tried. Fixed for the whole outage, so a status built from it is stable."""

    since: float
    error: str
    endpoints: tuple[str, ...]
    last_seen: float | None
    """UNIX time of the last poll that fleet answered (None: never, in this process)."""


STALL_AFTER = 20.0
"""Seconds a poll may run before fleet counts as not answering: longer than one request's read timeout,
so that a failover to a second endpoint completes first."""

QUIET_POLL_SHARE = 0.005
"""The most of one core that polling a quiet fleet may take (the CPU time of a poll, the process's, as
the requests run in a worker thread, sets how far apart quiet polls must be; 3,000 units: about 6 s).
Half of the operator's 1 % at rest: the rest is the leader's renewals, gRPC, the health server and
the event loop."""

QUIET_POLL_MAX = 30.0
"""Seconds quiet polls are apart at most, whatever they cost (unless ``slow`` says more): how late a
unit failure or a lost machine may be seen on a very large cluster."""

UNITS_AT_LEAST = 60.0
"""Seconds between listings of units when nothing else calls for one. A poll lists states and machines
(unit failures and machine loss show there) and, at 3,000 units, half its requests are units; a unit
changes without its states changing only by hand (``fleetctl submit``, a desired state fleet has not
acted on yet). So a poll lists units too when the states or machines differ from the last poll, while
a key expects its own writes or something converges, while fleet is lost or not yet seen, and at
least this often."""

SYNC_WAIT = 0.25
"""Seconds a pass of any kind asks to wait before trying again when a cache its key needs has not
synced yet."""
CONVERGING_POLL = 30.0
"""Seconds of fast fleet polling a pass of any kind asks for (:meth:`FleetInformer.hurry`) after it
acted or has not converged."""


class FleetInformer:
    """Polls fleet; ``on_change(keys, machines_changed)`` reports owners whose world changed."""

    def __init__(
        self,
        client: FleetClient,
        on_change: Callable[[set[str], bool], None],
        *,
        fast: float = 0.5,
        slow: float = 5.0,
        stall_after: float = STALL_AFTER,
        clock: Callable[[], float] = time.time,
        timer: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``clock`` gives the UNIX times recorded (``seen_at``, ``loss``); ``timer`` is the monotonic
        clock polls are paced and timed by (a FakeClock in tests)."""
        self.client = client
        self.fast = fast
        self.slow = slow
        self.stall_after = stall_after
        self.clock = clock
        self.timer = timer
        self.snapshot = FleetSnapshot()
        self.synced = asyncio.Event()
        """Set once fleet's state is known: a first snapshot, or that fleet cannot be seen (``loss``)."""
        self.last_error: str | None = None
        self.loss: FleetLoss | None = None
        """Set while fleet does not answer: nothing may be planned from ``snapshot`` then."""
        self.seen_at: float | None = None
        """UNIX time the last answered poll began: how old ``snapshot`` is."""
        self._on_change = on_change
        self._hurry_until = 0.0
        self._wake = asyncio.Event()
        self._expecting: dict[str, float] = {}
        self._poll_cpu = 0.0
        self._quiet = False
        """Whether the last poll read every page as the one before (nothing changed)."""
        self._units: list[Unit] = []
        self._states: list[UnitState] = []
        self._machines: list[Machine] = []
        self._units_at = float("-inf")

    def hurry(self, seconds: float = 30.0) -> None:
        """Poll every ``fast`` seconds for the next ``seconds`` (something is converging)."""
        self._hurry_until = max(self._hurry_until, self.timer.now() + seconds)

    def expect(self, key: str) -> None:
        """``key`` just changed fleet: until a poll that began after now has completed, the snapshot
        cannot show it (:meth:`fresh_for` is False); that poll reports ``key`` as changed. The
        operator's form of client-go's expectations: a worker never waits for fleet, and a pass
        never plans from a snapshot older than its own last writes."""
        self._expecting[key] = self.timer.now()
        self._wake.set()

    def fresh_for(self, key: str) -> bool:
        since = self._expecting.get(key)
        return since is None or self.snapshot.started >= since

    @property
    def interval(self) -> float:
        """``fast`` while something converges; otherwise ``slow``, stretched on a cluster so large that
        polling every ``slow`` seconds would take more than QUIET_POLL_SHARE of a core (judged by the
        last quiet poll's CPU), up to QUIET_POLL_MAX."""
        if self.timer.now() < self._hurry_until:
            return self.fast
        return min(max(self.slow, self._poll_cpu / QUIET_POLL_SHARE), max(self.slow, QUIET_POLL_MAX))

    async def run(self) -> None:
        """Poll until cancelled. Failed polls keep the last snapshot, mark fleet lost and back off (up
        to ``slow``); a poll that hangs past ``stall_after`` marks it lost while it goes on waiting."""
        failures = 0
        while True:
            self._wake.clear()
            began, cpu, wall = self.timer.now(), time.process_time(), self.clock()
            try:
                await self._poll_watched(wall)
                if self._quiet:
                    # paced by what a quiet poll costs: not the first (every page parsed) nor a busy one
                    self._poll_cpu = time.process_time() - cpu
                failures = 0
                delay = self.interval
            except Exception as exc:  # a bug reading one unit is a failed poll, not a dead informer
                failures += 1
                self.last_error = (
                    str(exc) if isinstance(exc, FleetopError) else f"{type(exc).__name__}: {exc}"
                )
                self._lost(wall, self.last_error)
                delay = exponential(failures, initial=self.fast, cap=self.slow)
                log.warning(
                    "polling fleet failed: %s (retry in %.1fs)",
                    self.last_error,
                    delay,
                    exc_info=not isinstance(exc, FleetopError),
                )
            ended = self.timer.now()
            with contextlib.suppress(TimeoutError):
                async with self.timer.timeout(delay):
                    await self._wake.wait()
            # At least as long idle as the poll took, however often it is woken: on a large cluster
            # polling takes at most half of the operator's time, on a small one this is nothing.
            idle = self.timer.now() - ended
            if idle < ended - began:
                await self.timer.sleep(ended - began - idle)

    async def _poll_watched(self, wall: float) -> None:
        """One poll; if it has not finished after ``stall_after`` seconds, fleet counts as lost (since
        the poll began) while the poll goes on."""
        poll = asyncio.create_task(self.poll_once(wall), name="fleet poll")
        try:
            with contextlib.suppress(TimeoutError):
                async with self.timer.timeout(self.stall_after):
                    await asyncio.shield(poll)
            if not poll.done():
                self._lost(wall, f"no answer within {self.stall_after:g}s")
            await poll
        finally:
            if not poll.done():
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)

    def _lost(self, since: float, error: str) -> None:
        """Record the start of an outage (once) and have every owner judged again."""
        if self.loss is not None:
            return
        tried = tuple(self.client.unreachable) or tuple(self.client.endpoints)
        self.loss = FleetLoss(since, error, tried, self.seen_at)
        log.warning("fleet is unreachable (%s): acting on nothing until it answers", error)
        self.synced.set()
        try:
            self._on_change(set(self.snapshot.owners), True)
        except Exception:  # no key can stop an informer
            log.exception("fleet: queueing the owners after a loss failed")

    def _units_due(self, started: float, same: bool) -> bool:
        """Whether this poll lists units too: see :data:`UNITS_AT_LEAST`."""
        return (
            not same
            or self.loss is not None
            or not self.synced.is_set()
            or bool(self._expecting)
            or started < self._hurry_until
            or started - self._units_at >= UNITS_AT_LEAST
        )

    async def poll_once(self, wall: float | None = None) -> None:
        started = self.timer.now()
        wall = self.clock() if wall is None else wall
        states = await self.client.list_states()
        machines = await self.client.list_machines()
        same = _same(states, self._states) and _same(machines, self._machines)
        units = self._units
        if self._units_due(started, same):
            units = await self.client.list_units()
            self._units_at = started
        old = self.snapshot
        if same and _same(units, self._units):
            # Every page as last time (the client reused what it parsed): nothing to index or diff.
            new = old.restamped(started)
        else:
            new = build_snapshot(units, states, machines, started, old)
        self._quiet = new.same_poll(old)
        self.snapshot = new
        self._units, self._states, self._machines = units, states, machines
        self.last_error = None
        self.seen_at = wall
        recovered, self.loss = self.loss is not None, None
        if recovered:
            log.info("fleet answers again: reconciling resumes")
        first = not self.synced.is_set() or recovered
        self.synced.set()
        if first:
            keys = set(new.owners) | set(old.owners)
        else:
            keys = set() if new.same_poll(old) else changed_owners(old, new)
        met = [key for key, since in self._expecting.items() if since <= started]
        for key in met:
            del self._expecting[key]
        keys.update(met)
        machines_changed = first or (old.machines is not new.machines and old.machines != new.machines)
        if keys or machines_changed:
            try:
                self._on_change(keys, machines_changed)
            except Exception:  # the poll itself succeeded: fleet is not lost because a handler failed
                log.exception("handling a change of fleet failed (%d owners)", len(keys))


class Informers:
    """Every cache of one operator, and the index from a change to the queue keys it concerns.

    ``enqueue`` receives ``services/<name>`` and ``proxies/<name>`` keys. A service's registrations
    concern the service and every proxy that routes to it; a machine joining or leaving concerns every
    service (placement); fleet changes concern the owners of the units that changed, and a service's
    units also concern the proxies that route to it (their backends follow its launched units).
    """

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        client: FleetClient,
        enqueue: Callable[[str], None],
        *,
        fast: float,
        slow: float,
        timer: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.keys = keys
        self.store = Store(etcd, keys)
        self.enqueue = enqueue
        self.services = PrefixCache(etcd, keys.desired("services"), lambda c: self._specs("services", c))
        self.proxies = PrefixCache(etcd, keys.desired("proxies"), lambda c: self._specs("proxies", c))
        self.statuses = PrefixCache(etcd, keys.status("services"), lambda c: None)
        self.registrations = RegistrationCaches(etcd, self._registrations_changed)
        self.fleet = FleetInformer(client, self._fleet_changed, fast=fast, slow=slow, timer=timer)
        self.entries: dict[str, dict[str, Entry]] = {"services": {}, "proxies": {}}
        """What reconcilers see: each spec as read, except the later of a service and a proxy that
        share a name, which is invalid (:func:`shared_name`)."""
        self._read: dict[str, dict[str, Entry]] = {"services": {}, "proxies": {}}
        self._prefix_owners: dict[str, set[str]] = {}
        self._routes: dict[str, set[str]] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for cache in (self.services, self.proxies, self.statuses):
                group.create_task(follow(cache), name=f"informer {cache.prefix}")
            group.create_task(self.registrations.run(), name="informer registrations")
            group.create_task(self.fleet.run(), name="informer fleet")

    def synced(self) -> dict[str, bool]:
        return {
            "services": self.services.synced.is_set(),
            "proxies": self.proxies.synced.is_set(),
            "status": self.statuses.synced.is_set(),
            "registrations": self.registrations.synced,
            "fleet": self.fleet.synced.is_set(),
        }

    def known_keys(self) -> set[str]:
        """Every key worth a periodic resync: specs, and owners of units in fleet."""
        found = {f"{kind}/{name}" for kind, entries in self.entries.items() for name in entries}
        return found | set(self.fleet.snapshot.owners)

    def registration_prefix(self, service: str) -> str:
        entry = self.entries["services"].get(service)
        if entry is not None and isinstance(entry.spec, ServiceSpec):
            return self.keys.registrations(entry.spec.registration_prefix(service))
        return self.keys.default_registrations(service)

    def _specs(self, kind: Kind, changed: set[str]) -> None:
        cache = self.services if kind == "services" else self.proxies
        read = self._read[kind]
        for key in changed:
            name = self.keys.name_of(key, kind)
            if name is None:
                continue
            kv = cache.get(key)
            entry = self.store.entry(kind, kv) if kv is not None else None
            if entry is None:
                read.pop(name, None)
            else:
                read[name] = entry
            self._settle(name)
            self.enqueue(f"{kind}/{name}")
        self._reindex()

    def _settle(self, name: str) -> None:
        """Set both kinds' entries of ``name`` from what was read; queue the other kind's when its
        entry changed (a service and a proxy of one name: the first declared keeps it)."""
        for kind in KIND_ORDER:
            entry = shared_name(kind, self._read[kind].get(name), self._read[other_kind(kind)].get(name))
            previous = self.entries[kind].get(name)
            if entry is None:
                self.entries[kind].pop(name, None)
            else:
                self.entries[kind][name] = entry
            if entry is not previous and (entry is None or previous is None or entry.error or previous.error):
                self.enqueue(f"{kind}/{name}")

    def _reindex(self) -> None:
        """Which registration prefixes to watch, and who cares about each."""
        routes: dict[str, set[str]] = {}
        for proxy, entry in self.entries["proxies"].items():
            if isinstance(entry.spec, ProxySpec):
                for route in entry.spec.routes:
                    routes.setdefault(route.service, set()).add(proxy)
        owners: dict[str, set[str]] = {}
        for service in {s for s in self.entries["services"] if is_name(s)} | routes.keys():
            owners.setdefault(self.registration_prefix(service), set()).add(service)
        self._routes, self._prefix_owners = routes, owners
        self.registrations.want(owners)

    def _registrations_changed(self, prefix: str, changed: set[str]) -> None:
        # The proxies first: their published configs are what traffic waits for, while a service's
        # pass only reports its backends. Passes take turns on one loop until they wait for etcd, so
        # a service queued first would hold the proxy's pass for its own, and its status write would
        # reach etcd ahead of the config.
        services = self._prefix_owners.get(prefix, ())
        for service in services:
            for proxy in self._routes.get(service, ()):
                self.enqueue(f"proxies/{proxy}")
        for service in services:
            self.enqueue(f"services/{service}")

    def _fleet_changed(self, owners: set[str], machines_changed: bool) -> None:
        for key in sorted(owners):
            self.enqueue(key)
            kind, _, service = key.partition("/")
            for proxy in self._routes.get(service, ()) if kind == "services" else ():
                self.enqueue(f"proxies/{proxy}")  # its backends follow the service's launched units
        if machines_changed:
            for name in self.entries["services"]:
                self.enqueue(f"services/{name}")
