"""The executor: every write a reconcile pass makes. Fleet actions, status, events, published configs.

The planners decide; this module only performs, in a safe order, and reports what happened (the
contract: :mod:`fleetop.controller.runtime.contract`). Every method takes the
:class:`~fleetop.controller.runtime.contract.ObjectRef` it acts for (``services/web``, ``proxies/edge``).

* order: every create first, then desired-state repairs, then destroys (a stable sort keeps the
  planner's sidekick-before-main order). Creating before destroying is what makes a surge start
  before it stops, so the first failure stops the pass: a destroy never runs after a failed create.
* races are idempotent: a unit destroyed by someone else (404) is simply gone; a desired-state change
  on a unit that vanished (409) is left to the next pass; a create never replaces a unit that fleet
  holds under that name without our ``[X-Fleetop]`` section naming this object, in one of its kind's
  roles (fleet would replace its content), whatever the cache said.
* fencing: fleet's API cannot compare the leader key, so before each fleet write the executor calls
  ``guard`` (the elector's :meth:`~fleetop.controller.runtime.leader.LeaderElector.check_leading`), which
  raises NotLeader once this process's own monotonic clock says the lease was not renewed within
  the renew deadline. A leader paused past its lease and resumed stops before writing, even in the
  few loop iterations before its elector notices and cancels the pass. (The fleet client runs the
  same guard before each retry of a write.) What cannot be fenced is a request already sent.
* write-if-changed (:meth:`Executor.write_if_changed`): status and published configs are written only
  when they differ from what is stored (a write on every pass would trigger its own reconcile), fenced
  on the leader key, and every call returns what it did (``written``, ``unchanged``, ``deleted``) and
  counts it in ``fleetop_writes_total{what,result}`` (``fenced`` and ``failed`` too, before raising).
  "What is stored" is the informer's cache, unless the cache has not yet seen this process's own last
  write to the key (a watch event behind): the executor remembers its writes until the cache shows them.
  A service's status carries the time its current generation was first reported
  (``observedGenerationTime``): kept from the stored status while the generation is the same, now when
  the spec changed (``fleetop status``'s CHANGED).
* events: at most one per action or failed attempt, under ``keys.events(kind, name)`` as
  ``<ts>-<id>`` keys with the object's kind (``Service``, ``Proxy``), on a shared lease of about an hour
  that is granted again when it has expired. An event with the same type, reason and message as one of
  the object's recent ones bumps that event's ``count`` and time instead of adding a key (Kubernetes'
  event aggregation), so a crash loop or a retried failure is one event with a count, not a flood.
* bounded: a pass applies at most ``batch_size`` actions (in the order above) and reports the rest as
  ``deferred``; the reconciler comes back for them in a later pass, which plans again from a fresh
  read of the spec and of fleet. A pass of 10,000 creates would otherwise run for minutes on a plan
  nobody may want any more (the spec deleted or scaled down meanwhile).
* errors of fleet actions come back as a value (:class:`Outcome`); the reconciler decides, as the
  contract's table says: TemporaryError is raised for the queue to retry with backoff, anything else is
  reported in status and not retried until something changes (or the periodic resync).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel

from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.metrics import OperatorMetrics
from fleetop.controller.world import Action, CreateUnit, DestroyUnit, SetDesiredState, owner_key
from fleetop.errors import FleetAPIError, FleetopError, NotLeader
from fleetop.etcd.client import Etcd, KeyValue
from fleetop.fleet.client import FleetClient
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import unit_hash
from fleetop.keys import Keys
from fleetop.models import Event, ProxyStatus, ServiceStatus
from fleetop.timefmt import rfc3339

log = logging.getLogger(__name__)

Fence = Callable[[], tuple[str, bytes]]
Guard = Callable[[], None]
"""Raises NotLeader when this process may no longer write to fleet."""
What = Literal["status", "config"]
"""What a write-if-changed writes: the label ``what`` of ``fleetop_writes_total``."""
WriteResult = Literal["written", "unchanged", "deleted"]
Same = Callable[[bytes, bytes], bool]
"""(stored, new) -> True when ``new`` says nothing ``stored`` does not."""
_ORDER = {CreateUnit: 0, SetDesiredState: 1, DestroyUnit: 2}
LEASE_MARGIN = 120.0
"""Seconds before the events lease's expiry at which a new one is granted instead."""
RECENT_EVENTS = 32
"""Distinct recent events per object that a repeat is aggregated into."""


class KeyCache(Protocol):
    """What the write-if-changed reads a key from: an informer's cache of its prefix
    (:class:`~fleetop.prefixes.PrefixCache`), with the revision it has seen."""

    @property
    def revision(self) -> int: ...

    def get(self, key: str) -> KeyValue | None: ...


@dataclass(frozen=True)
class ReadNow:
    """One key as etcd returned it just now: a :class:`KeyCache` that has seen every earlier write."""

    key: str
    kv: KeyValue | None
    revision: int = 1 << 62

    def get(self, key: str) -> KeyValue | None:
        return self.kv if key == self.key else None


@dataclass
class Outcome:
    """What a pass did: the actions applied (as event messages) and the error that stopped it."""

    applied: list[str] = field(default_factory=list)
    skipped: int = 0
    error: FleetopError | None = None
    deferred: int = 0
    """Actions left for a later pass (over the batch size): that pass plans them again."""


def ordered(actions: Sequence[Action]) -> list[Action]:
    """Creates, then desired-state repairs, then destroys; the planner's order within each."""
    return sorted(actions, key=lambda a: _ORDER[type(a)])


def status_bytes(status: BaseModel) -> bytes:
    """Status as written to etcd: compact camelCase JSON."""
    return json.dumps(status.model_dump(mode="json", by_alias=True), separators=(",", ":")).encode()


def same_json(stored: bytes, new: bytes) -> bool:
    """True when both decode to the same JSON value (a status: key order and spacing do not matter)."""
    try:
        return bool(json.loads(stored) == json.loads(new))
    except ValueError:
        return False


def same_published(stored: bytes, new: bytes) -> bool:
    """True when both published configs carry the same ``hash`` (what agents compare): a new
    generation of the same config is no change."""
    try:
        old, fresh = json.loads(stored), json.loads(new)
    except ValueError:
        return False
    return isinstance(old, dict) and isinstance(fresh, dict) and old.get("hash") == fresh.get("hash")


class Executor:
    """Every write of one operator process's passes. ``fence()`` returns the current leader fence."""

    def __init__(
        self,
        client: FleetClient,
        etcd: Etcd,
        keys: Keys,
        fence: Fence,
        *,
        metrics: OperatorMetrics | None = None,
        event_ttl: int = 3600,
        clock: Callable[[], float] = time.time,
        guard: Guard | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.client = client
        self.etcd = etcd
        self.keys = keys
        self.fence = fence
        self.metrics = metrics
        self.event_ttl = event_ttl
        self.clock = clock
        self.guard = guard
        self.batch_size = batch_size
        """At most this many actions per :meth:`apply` (None: all of them)."""
        self._lease = 0
        self._lease_expires = 0.0
        self._recent: dict[ObjectRef, dict[tuple[str, str, str], tuple[str, Event]]] = {}
        self._written: dict[str, tuple[bytes | None, int]] = {}
        """key -> (what this process last wrote, None for a delete; the revision that write made, or
        for a delete the revision of the value it deleted), until the key's cache shows it."""

    # -- fleet ----------------------------------------------------------------------------------------
    async def apply(self, ref: ObjectRef, actions: Sequence[Action]) -> Outcome:
        """Apply ``actions`` in a safe order, at most ``batch_size`` of them; stop at the first
        failure and record it."""
        outcome = Outcome()
        steps = ordered(actions)
        if self.batch_size is not None and len(steps) > self.batch_size:
            outcome.deferred = len(steps) - self.batch_size
            steps = steps[: self.batch_size]
        for index, action in enumerate(steps):
            try:
                message = await self._one(ref, action)
            except NotLeader:
                raise
            except FleetopError as exc:
                outcome.error = exc
                outcome.skipped = len(steps) - index - 1
                await self.record(
                    ref, type(exc).__name__, f"{_verb(action)} {action.name}: {exc}", warning=True
                )
                return outcome
            if message:
                outcome.applied.append(message)
                await self.record(ref, message.split(" ", 1)[0], message)
        return outcome

    async def _one(self, ref: ObjectRef, action: Action) -> str | None:
        if isinstance(action, CreateUnit):
            return await self._create(ref, action)
        if isinstance(action, DestroyUnit):
            self._check_guard()
            existed = await self.client.destroy_unit(action.name)
            return f"Destroyed {action.name} ({action.reason})" if existed else None
        try:
            self._check_guard()
            await self.client.set_desired_state(action.name, action.state)
        except FleetAPIError as exc:
            if exc.code in (404, 409):
                log.info("%s: %s vanished before its desiredState could be set", ref.label, action.name)
                return None
            raise
        return f"SetDesiredState {action.name} to {action.state}"

    async def _create(self, ref: ObjectRef, action: CreateUnit) -> str | None:
        existing = await self.client.get_unit(action.name)
        if existing is not None:
            owner = owned_by(existing.options)
            if owner is None or owner_key(owner) != ref.key:
                raise FleetAPIError(409, f"{action.name} exists and is not owned by {ref.label}")
            if unit_hash(existing.options) != unit_hash(action.options):
                # Our unit with other content: PUT would replace it in place. The cache was stale;
                # the next pass plans from what fleet holds now.
                log.info("%s: %s already exists with other content; not replacing it", ref.label, action.name)
                return None
            if existing.desired_state == action.desired_state:
                return None
            self._check_guard()
            await self.client.set_desired_state(action.name, action.desired_state)
            return f"SetDesiredState {action.name} to {action.desired_state}"
        self._check_guard()
        result = await self.client.create_unit(action.name, action.options, action.desired_state)
        if result == "created":
            return f"Created {action.name}"
        return None

    def _check_guard(self) -> None:
        """Right before a fleet write: NotLeader unless the lease is known fresh (by our own clock)."""
        if self.guard is None:
            return
        try:
            self.guard()
        except NotLeader as exc:
            log.warning("fleet write refused: %s", exc)
            raise

    # -- write-if-changed -----------------------------------------------------------------------------
    def stored(self, key: str, cache: KeyCache) -> bytes | None:
        """What ``key`` holds as far as this process can tell: the cache's value, or this process's own
        last write to it while the cache has not seen that write yet."""
        cached = cache.get(key)
        mine = self._written.get(key)
        if mine is not None:
            body, revision = mine
            if body is None:  # our delete: the cache is behind while it shows the value we deleted
                behind = cached is not None and cached.mod_revision <= revision
            else:
                behind = (cached is None or cached.mod_revision < revision) and cache.revision < revision
            if behind:
                return body
            del self._written[key]
        return cached.value if cached is not None else None

    async def read_now(self, key: str) -> KeyCache:
        """``key`` read from etcd now, as a cache of that one key that has seen every write (for a
        writer outside the informers' view, such as the failure reporter)."""
        return ReadNow(key, await self.etcd.get(key))

    async def write_if_changed(
        self, what: What, key: str, body: bytes | None, cache: KeyCache, *, same: Same = same_json
    ) -> WriteResult:
        """Write ``body`` to ``key`` (None: delete it) unless what is stored (:meth:`stored`) already
        says it (``same``), fenced on the leader key; count the result."""
        try:
            current = self.stored(key, cache)
            mine, kv = self._written.get(key), cache.get(key)
            current_revision = mine[1] if mine is not None else kv.mod_revision if kv else 0
            if body is None:
                result: WriteResult = "unchanged"
                if current is not None and await self.etcd.delete(key, fence=self.fence()):
                    self._written[key] = (None, current_revision)
                    result = "deleted"
            elif current is not None and same(current, body):
                result = "unchanged"
            else:
                self._written[key] = (body, await self.etcd.put(key, body, fence=self.fence()))
                result = "written"
        except NotLeader:
            self._count(what, "fenced")
            raise
        except FleetopError:
            self._count(what, "failed")
            raise
        self._count(what, result)
        return result

    async def write_status(
        self, ref: ObjectRef, status: ServiceStatus | ProxyStatus | None, cache: KeyCache
    ) -> WriteResult:
        """``ref``'s status through :meth:`write_if_changed` (None deletes it). A service's status is
        stamped with the time its generation was first reported."""
        key = self.keys.status(ref.kind, ref.name)
        if isinstance(status, ServiceStatus):
            status = self._stamped(status, self.stored(key, cache))
        body = status_bytes(status) if status is not None else None
        return await self.write_if_changed("status", key, body, cache)

    async def publish(self, proxy: str, body: bytes | None, cache: KeyCache) -> WriteResult:
        """A proxy's published config (its wire bytes) through :meth:`write_if_changed`, compared by
        ``hash``: a config already published under another generation is not written again."""
        return await self.write_if_changed(
            "config", self.keys.proxy_config(proxy), body, cache, same=same_published
        )

    def _stamped(self, status: ServiceStatus, stored: bytes | None) -> ServiceStatus:
        """``status`` with the time its generation was first reported: the stored one's if it reported
        the same generation, else now."""
        since: object = None
        if stored is not None:
            try:
                previous = json.loads(stored)
            except ValueError:
                previous = None
            if (
                isinstance(previous, dict)
                and previous.get("observedGeneration") == status.observed_generation
            ):
                since = previous.get("observedGenerationTime")
        if not isinstance(since, str) or not since:
            since = rfc3339(self.clock())
        return status.model_copy(update={"observed_generation_time": since})

    def _count(self, what: What, result: str) -> None:
        if self.metrics is not None:
            self.metrics.writes.labels(what, result).inc()

    # -- events ---------------------------------------------------------------------------------------
    async def record(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        """Write one Event of ``ref`` (or bump the count of an identical previous one). Never raises,
        except NotLeader: an event is a report, and failing to write it must not fail the pass."""
        now = self.clock()
        recent = self._recent.setdefault(ref, {})
        aggregate = ("Warning" if warning else "Normal", reason, message)
        previous = recent.get(aggregate)
        if previous is not None:
            key = previous[0]
            event = previous[1].model_copy(update={"count": previous[1].count + 1, "time": rfc3339(now)})
        else:
            stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            key = f"{self.keys.events(ref.kind, ref.name)}{stamp}-{secrets.token_hex(3)}"
            event = Event(
                kind=ref.event_kind,
                name=ref.name,
                type="Warning" if warning else "Normal",
                reason=reason,
                message=message,
                time=rfc3339(now),
            )
        body = event.model_dump_json(by_alias=True).encode()
        try:
            await self._put_event(key, body)
        except NotLeader:
            raise
        except FleetopError as exc:
            log.warning("could not record event for %s (%s): %s", ref.label, message, exc)
            return
        recent.pop(aggregate, None)
        recent[aggregate] = (key, event)
        while len(recent) > RECENT_EVENTS:
            recent.pop(next(iter(recent)))
        log.log(logging.WARNING if warning else logging.INFO, "%s: %s", ref.label, message)
        if self.metrics is not None:
            self.metrics.events_recorded.labels(reason).inc()

    async def _put_event(self, key: str, body: bytes) -> None:
        lease = await self._events_lease()
        try:
            await self.etcd.put(key, body, lease=lease, fence=self.fence())
        except NotLeader:
            raise
        except FleetopError:
            # The lease may have been revoked or expired early (etcd restored, clock jumps): one more try.
            self._lease = 0
            await self.etcd.put(key, body, lease=await self._events_lease(), fence=self.fence())

    async def _events_lease(self) -> int:
        mono = time.monotonic()
        if not self._lease or mono > self._lease_expires - LEASE_MARGIN:
            self._lease = await self.etcd.grant(self.event_ttl)
            self._lease_expires = mono + self.event_ttl
        return self._lease

    def forget(self, ref: ObjectRef) -> None:
        """``ref`` is gone: drop its recent events and what this process remembers writing for it."""
        self._recent.pop(ref, None)
        self._written.pop(self.keys.status(ref.kind, ref.name), None)
        if ref.kind == "proxies":
            self._written.pop(self.keys.proxy_config(ref.name), None)


def _verb(action: Action) -> str:
    if isinstance(action, CreateUnit):
        return "create"
    if isinstance(action, DestroyUnit):
        return "destroy"
    return "set desiredState of"
