"""Caches of etcd prefixes kept current by list + watch, shared by the operator's informers and the
proxy agents (which follow the registrations of the servers they hold).

* :class:`PrefixCache` lists an etcd prefix and then watches it from the list's revision
  (``Etcd.list_watch`` relists after a compaction and resumes after etcd restarts); each snapshot or
  batch of events updates the cache and reports the keys that changed. ``revision``: the cache holds
  every change up to that etcd revision.
* :class:`RegistrationCaches` keeps one :class:`PrefixCache` per prefix wanted, started and stopped as
  the wanted set changes; where many prefixes share a parent (``/services/web/``, ``/services/api/``...),
  one :class:`SharedPrefixCache` lists and watches the parent and feeds them, so 1,000 services cost
  one watch stream, not 1,000.
* :func:`follow` runs a cache for ever: only cancellation ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from fleetop.errors import EtcdDenied, FleetopError
from fleetop.etcd.client import Etcd, Events, KeyValue, Snapshot, WatchEvent

log = logging.getLogger(__name__)

ChangeHandler = Callable[[set[str]], None]
"""Called with the full etcd keys that changed (put or deleted) in one snapshot or batch."""

ARRIVALS_KEPT = 256


async def _list_watch_into(etcd: Etcd, prefix: str, feed: Callable[[Snapshot | Events], None]) -> None:
    """Feed ``prefix``'s snapshot, then its watch batches, to ``feed`` until cancelled."""
    stream = etcd.list_watch(prefix)
    async with contextlib.aclosing(stream):
        async for update in stream:
            feed(update)


class PrefixCache:
    """``key -> KeyValue`` for everything under ``prefix``, kept current by list + watch."""

    def __init__(self, etcd: Etcd, prefix: str, on_change: ChangeHandler) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.items: dict[str, KeyValue] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self._on_change = on_change
        # When changes arrived (monotonic), newest last: render coalescing judges a burst by when its
        # changes happened, not by when a (possibly busy) reconcile pass got to see them.
        # (made at the first change: most of 1,000 registration prefixes never see one)
        self.arrivals: deque[float] | None = None
        self._burst: tuple[tuple[int, float, float], tuple[float, float] | None] | None = None

    async def run(self) -> None:
        """Follow the prefix until cancelled. The first snapshot marks the cache synced."""
        await _list_watch_into(self.etcd, self.prefix, self.feed)

    def feed(self, update: Snapshot | Events) -> None:
        """Apply one snapshot or batch (from this cache's own watch or a shared one) and report it."""
        changed = self._apply(update)
        self.synced.set()
        if changed:
            if self.arrivals is None:
                self.arrivals = deque(maxlen=ARRIVALS_KEPT)
            self.arrivals.append(time.monotonic())
            self._notify(changed)

    def _notify(self, changed: set[str]) -> None:
        """Report a change; a handler that fails loses this report, never the watch."""
        try:
            self._on_change(changed)
        except Exception:
            log.exception("handling a change under %s failed (%d keys)", self.prefix, len(changed))

    def _apply(self, update: Snapshot | Events) -> set[str]:
        if isinstance(update, Snapshot):
            fresh = {kv.key: kv for kv in update.items}
            changed = {
                k for k in self.items.keys() | fresh.keys() if _differs(self.items.get(k), fresh.get(k))
            }
            self.items = fresh
            self.revision = update.revision
            return changed
        changed = set()
        for event in update.events:
            if event.type == "delete":
                self.items.pop(event.key, None)
            else:
                self.items[event.key] = KeyValue(
                    event.key,
                    event.value,
                    event.create_revision,
                    event.mod_revision,
                    event.version,
                    event.lease,
                )
            changed.add(event.key)
        self.revision = max(self.revision, update.revision)
        return changed

    def get(self, key: str) -> KeyValue | None:
        return self.items.get(key)

    def burst(self, gap: float) -> tuple[float, float] | None:
        """(when the latest change arrived, when its burst began): a burst is a run of changes less
        than ``gap`` apart. None before any change; a burst longer than the history began at -inf.
        Kept until a change arrives: a pass asks every routed prefix, and most have not moved."""
        arrivals = self.arrivals
        if arrivals is None:
            return None
        key = (len(arrivals), arrivals[-1] if arrivals else 0.0, gap)
        if self._burst is not None and self._burst[0] == key:
            return self._burst[1]
        found = burst_of(list(arrivals), gap, full=len(arrivals) == arrivals.maxlen)
        self._burst = (key, found)
        return found

    def under(self, prefix: str) -> list[KeyValue]:
        return [kv for key, kv in sorted(self.items.items()) if key.startswith(prefix)]


def burst_of(arrivals: list[float], gap: float, *, full: bool = False) -> tuple[float, float] | None:
    """Pure: the latest arrival and the start of the run of arrivals less than ``gap`` apart ending at it.
    ``full`` says older arrivals were dropped, so a run reaching the oldest kept one began earlier."""
    if not arrivals:
        return None
    index = len(arrivals) - 1
    while index > 0 and arrivals[index] - arrivals[index - 1] < gap:
        index -= 1
    start = float("-inf") if index == 0 and full else arrivals[index]
    return arrivals[-1], start


def _differs(old: KeyValue | None, new: KeyValue | None) -> bool:
    if old is None or new is None:
        return old is not new
    return old.mod_revision != new.mod_revision


SHARED_WATCH_FROM = 8
"""Registration prefixes under one parent (``/services/web/``, ``/services/api/``... under
``/services/``) from which one list + watch of the parent serves them all instead of a watch each.
Every open watch stream costs the operator about 36 KB (gRPC's call, its buffers, the task and the
cache): 36 MB at 1,000 services. The parent's keys that no spec names are kept too (they become a
prefix's items at once when a spec names it later), so a parent is shared only when many of its
children are wanted, and never the root."""


def parent_prefix(prefix: str) -> str | None:
    """``/services/web/`` -> ``/services/``; None for a prefix directly under the root."""
    parent = prefix.rstrip("/").rpartition("/")[0]
    return f"{parent}/" if parent else None


class SharedPrefixCache:
    """One list + watch of ``prefix`` (a parent) feeding a :class:`PrefixCache` per wanted child prefix
    (``prefix`` + one segment + ``/``), which readers use as if it followed its own watch: each sees
    only its keys, and its ``revision`` and arrivals move only when one of them changed (or on a
    relist). Keys of children no one wants are kept by child, ready for :meth:`want`."""

    def __init__(self, etcd: Etcd, prefix: str, on_change: Callable[[str, set[str]], None]) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.views: dict[str, PrefixCache] = {}
        self.others: dict[str, dict[str, KeyValue]] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self._on_change = on_change

    def child_of(self, key: str) -> str | None:
        """The child prefix ``key`` lies under, or None for a key right under the parent."""
        name, slash, _ = key[len(self.prefix) :].partition("/")
        return f"{self.prefix}{name}/" if slash else None

    def want(self, prefixes: Iterable[str]) -> None:
        """The child prefixes to serve; a new one is synced at once when the parent is."""
        wanted = set(prefixes)
        for prefix in [p for p in self.views if p not in wanted]:
            view = self.views.pop(prefix)
            if view.items:
                self.others[prefix] = view.items
        for prefix in sorted(wanted - self.views.keys()):
            view = PrefixCache(self.etcd, prefix, functools.partial(self._on_change, prefix))
            self.views[prefix] = view
            if self.synced.is_set():
                view.feed(Snapshot(list(self.others.pop(prefix, {}).values()), self.revision))

    async def run(self) -> None:
        """Follow the parent until cancelled."""
        await _list_watch_into(self.etcd, self.prefix, self.feed)

    def feed(self, update: Snapshot | Events) -> None:
        if isinstance(update, Snapshot):
            grouped: dict[str, list[KeyValue]] = {}
            for kv in update.items:
                child = self.child_of(kv.key)
                if child is not None:
                    grouped.setdefault(child, []).append(kv)
            self.revision = update.revision
            self.others = {
                child: {kv.key: kv for kv in found}
                for child, found in grouped.items()
                if child not in self.views
            }
            self.synced.set()
            for prefix, view in list(self.views.items()):
                view.feed(Snapshot(grouped.get(prefix, []), update.revision))
            return
        by_child: dict[str, list[WatchEvent]] = {}
        for event in update.events:
            child = self.child_of(event.key)
            if child is not None:
                by_child.setdefault(child, []).append(event)
        self.revision = max(self.revision, update.revision)
        for child, events in by_child.items():
            wanted = self.views.get(child)
            if wanted is not None:
                wanted.feed(Events(events, events[-1].mod_revision))
                continue
            items = self.others.setdefault(child, {})
            for event in events:
                after = event.kv
                if after is None:
                    items.pop(event.key, None)
                else:
                    items[event.key] = after
            if not items:
                del self.others[child]


class RegistrationCaches:
    """The registrations under every prefix in use (:meth:`want` says which): a :class:`PrefixCache`
    each, following its own watch, or, where at least SHARED_WATCH_FROM of them share a parent, fed
    by one :class:`SharedPrefixCache` of the parent."""

    def __init__(
        self, etcd: Etcd, on_change: Callable[[str, set[str]], None], *, denied_retry: float = 1.0
    ) -> None:
        self.etcd = etcd
        self.denied_retry = denied_retry
        self.caches: dict[str, PrefixCache] = {}
        """The prefixes followed alone."""
        self.shared: dict[str, SharedPrefixCache] = {}
        """Parent prefix -> the shared cache serving its wanted children."""
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._on_change = on_change
        self._wanted: set[str] = set()
        self._synced_for: set[str] | None = None
        self._wake = asyncio.Event()

    def want(self, prefixes: Iterable[str]) -> None:
        """The prefixes that specs name right now (each ending in ``/``)."""
        wanted = set(prefixes)
        if wanted != self._wanted:
            self._wanted = wanted
            self._wake.set()

    def _found(self, prefix: str) -> PrefixCache | None:
        found = self.caches.get(prefix)
        if found is None:
            parent = parent_prefix(prefix)
            shared = self.shared.get(parent) if parent is not None else None
            found = shared.views.get(prefix) if shared is not None else None
        return found

    def cache(self, prefix: str) -> PrefixCache | None:
        """The cache of ``prefix`` once it has synced, else None (the caller requeues)."""
        found = self._found(prefix)
        return found if found is not None and found.synced.is_set() else None

    @property
    def synced(self) -> bool:
        """Every wanted prefix's cache has synced. Asked on every pass of every object, so the answer
        is kept while it holds: a cache stays synced once it is, and only :meth:`want` (a new set)
        or stopping a cache can make it false again."""
        if self._synced_for is self._wanted:
            return True
        done = all(self.cache(prefix) is not None for prefix in self._wanted)
        if done:
            self._synced_for = self._wanted
        return done

    @property
    def watches(self) -> int:
        """Watch streams open for registrations."""
        return len(self._tasks)

    async def run(self) -> None:
        """Start and stop prefix caches as :meth:`want` changes, until cancelled."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self._reconcile_tasks()
                except Exception:
                    log.exception("starting or stopping registration watches failed (retrying in 1s)")
                    await asyncio.sleep(1.0)
                    self._wake.set()
        finally:
            await self._stop(list(self._tasks))

    def plan(self) -> tuple[dict[str, set[str]], set[str]]:
        """(parent -> its wanted children, for the parents shared; the prefixes followed alone)."""
        groups: dict[str, set[str]] = {}
        for prefix in self._wanted:
            parent = parent_prefix(prefix)
            if parent is not None:
                groups.setdefault(parent, set()).add(prefix)
        shared = {parent: found for parent, found in groups.items() if len(found) >= SHARED_WATCH_FROM}
        alone = {p for p in self._wanted if p not in shared.get(parent_prefix(p) or "", ())}
        return shared, alone

    async def _reconcile_tasks(self) -> None:
        shared, alone = self.plan()
        await self._stop([("alone", p) for p in self.caches if p not in alone])
        await self._stop([("shared", p) for p in self.shared if p not in shared])
        for parent, children in sorted(shared.items()):
            cache = self.shared.get(parent)
            if cache is None:
                cache = self.shared[parent] = SharedPrefixCache(self.etcd, parent, self._on_change)
                task = asyncio.create_task(
                    follow(cache, denied_retry=self.denied_retry), name=f"registrations {parent}*"
                )
                self._tasks["shared", parent] = task
                log.debug("watching registrations under %s for %d prefixes", parent, len(children))
            cache.want(children)
        for prefix in sorted(alone - self.caches.keys()):
            single = PrefixCache(self.etcd, prefix, functools.partial(self._on_change, prefix))
            self.caches[prefix] = single
            self._tasks["alone", prefix] = asyncio.create_task(
                follow(single, denied_retry=self.denied_retry), name=f"registrations {prefix}"
            )
            log.debug("watching registrations under %s", prefix)

    async def _stop(self, which: list[tuple[str, str]]) -> None:
        self._synced_for = None
        tasks = [self._tasks.pop(key) for key in which]
        for kind, prefix in which:
            if kind == "alone":
                self.caches.pop(prefix, None)
            else:
                self.shared.pop(prefix, None)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def follow(cache: PrefixCache | SharedPrefixCache, *, denied_retry: float = 1.0) -> None:
    """Run a cache for ever: ``list_watch`` rides out etcd restarts; anything else is retried
    (cancellation alone ends it). A prefix etcd refuses to show (``EtcdDenied``: the user's role
    does not cover it) is tried again every ``denied_retry`` seconds, said once."""
    denied = False
    while True:
        pause = 1.0
        try:
            await cache.run()
        except EtcdDenied as exc:
            pause = denied_retry
            if not denied:
                log.warning("watching %s: %s (trying again every %gs)", cache.prefix, exc, pause)
            denied = True
        except FleetopError as exc:
            log.warning("watching %s: %s (retrying in 1s)", cache.prefix, exc)
        except Exception:
            log.exception("watching %s failed (retrying in 1s)", cache.prefix)
        await asyncio.sleep(pause)
