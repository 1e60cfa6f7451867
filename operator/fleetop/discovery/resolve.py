"""Resolving the DNS names that registrations carry, before they reach a proxy config.

A DNS name is a valid registration (``web-1.internal:8001``), but nginx resolves upstream names when it
checks a config: one name that does not resolve fails ``nginx -t`` for the whole config, and every
later config with it, so one registration would freeze the proxy for every route. So the operator
resolves names itself and the config carries the addresses:

* a name that does not resolve is left out and reported like any invalid registration, and the rest
  of the config still applies;
* the allowed networks (``allowedNetworks``) are checked against the addresses the proxy will
  actually dial, not against a name that could resolve elsewhere at the proxy's next reload;
* the proxy never resolves, so its check cannot fail on DNS, and a changed answer is followed
  within the cache's TTL (nginx would keep the address of its last start until a reload).

The operator rather than each agent: the operator is where registrations are parsed, filtered and
reported (``skippedRegistrations``, events), every agent gets the same bytes (the published hash),
and a name is looked up once per cluster rather than once per proxy machine. A proxy machine whose
DNS disagrees with the operator's is not a concern for the config, which holds addresses.

Lookups are blocking ``getaddrinfo`` calls, so they run on a small thread pool of their own (a hung
resolver never starves the event loop or the default executor), each awaited with a timeout; a name
in flight is looked up once however many passes ask for it. Answers are cached for ``ttl``, failures
for ``negative_ttl``. A temporary failure (``EAI_AGAIN``, a timeout) keeps the last good answer for up
to ``stale_limit``: a DNS hiccup should not empty a working upstream. ``lookup`` is injectable (tests
never query real DNS).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Lookup = Callable[[str], Sequence[str]]
"""A blocking lookup: name → IP addresses; raises :class:`LookupFailed` (or ``OSError``)."""

DEFAULT_TIMEOUT = 2.0
DEFAULT_TTL = 30.0
DEFAULT_NEGATIVE_TTL = 5.0
DEFAULT_STALE_LIMIT = 300.0
MAX_CACHED = 10_000
MAX_ADDRESSES = 16
"""At most this many addresses of one name reach a config (sorted, so the choice is stable)."""


class LookupFailed(OSError):
    """A name did not resolve. ``temporary``: the resolver could not answer (try again), as opposed
    to an answer that the name does not exist or has no address."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


def system_lookup(name: str) -> list[str]:
    """``getaddrinfo`` for TCP: the distinct IP addresses of ``name`` (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        temporary = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
        raise LookupFailed(exc.strerror or str(exc), temporary=temporary) from None
    found = {str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)}
    if not found:
        raise LookupFailed("no IPv4 or IPv6 address")
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer for one name: its addresses (normalised, sorted) or why there are none, and until
    when (monotonic clock) it may be used."""

    name: str
    addresses: tuple[str, ...]
    error: str | None
    expires: float
    since: float
    """When the addresses were last confirmed (a stale answer keeps the time of the good one)."""

    def fingerprint(self) -> tuple[str, tuple[str, ...], str]:
        return self.name, self.addresses, self.error or ""


def _normalise(addresses: Iterable[str]) -> tuple[str, ...]:
    """Valid IPs only (a zone index ``%eth0`` is dropped with the address), compressed, sorted."""
    found = set()
    for text in addresses:
        try:
            found.add(str(ipaddress.ip_address(text)))
        except ValueError:
            continue
    return tuple(sorted(found, key=lambda a: (":" in a, ipaddress.ip_address(a).packed)))[:MAX_ADDRESSES]


class Resolver:
    """A cache of name → :class:`Resolution`, refreshed on demand by :meth:`resolve`."""

    def __init__(
        self,
        lookup: Lookup = system_lookup,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        stale_limit: float = DEFAULT_STALE_LIMIT,
        threads: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.timeout = timeout
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_limit = stale_limit
        self.clock = clock
        self._threads = threads
        self._slots: asyncio.Semaphore | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._cache: dict[str, Resolution] = {}
        self._inflight: dict[str, asyncio.Future[Sequence[str]]] = {}

    async def resolve(self, names: Iterable[str]) -> dict[str, Resolution]:
        """The answer for each name: from the cache while fresh, else looked up (concurrently, each
        within ``timeout``). Never raises for a name that fails: the failure is its answer."""
        wanted = sorted(set(names))
        now = self.clock()
        stale = [n for n in wanted if (r := self._cache.get(n)) is None or r.expires <= now]
        if stale:
            answers = await asyncio.gather(*(self._refresh(name) for name in stale))
            self._cache.update(zip(stale, answers, strict=True))
            if len(self._cache) > MAX_CACHED:
                self._prune(set(wanted))
        return {name: self._cache[name] for name in wanted}

    def next_refresh(self, names: Iterable[str]) -> float | None:
        """Seconds until the first of ``names`` expires (None when none is cached)."""
        expiries = [r.expires for n in names if (r := self._cache.get(n)) is not None]
        return max(0.0, min(expiries) - self.clock()) if expiries else None

    def _prune(self, keep: set[str]) -> None:
        """Drop expired answers nobody asked for now: names come and go with registrations."""
        now = self.clock()
        for name in [n for n, r in self._cache.items() if r.expires <= now and n not in keep]:
            del self._cache[name]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _refresh(self, name: str) -> Resolution:
        previous = self._cache.get(name)
        try:
            addresses = _normalise(await self._lookup(name))
            if not addresses:
                raise LookupFailed("no usable IPv4 or IPv6 address")
        except TimeoutError:
            return self._failed(name, f"lookup timed out after {self.timeout:g} s", True, previous)
        except OSError as exc:
            temporary = isinstance(exc, LookupFailed) and exc.temporary
            return self._failed(name, str(exc) or type(exc).__name__, temporary, previous)
        now = self.clock()
        if previous is not None and previous.addresses != addresses:
            log.info(
                "%s now resolves to %s (was %s)", name, ", ".join(addresses), ", ".join(previous.addresses)
            )
        return Resolution(name, addresses, None, now + self.ttl, now)

    def _failed(self, name: str, reason: str, temporary: bool, previous: Resolution | None) -> Resolution:
        now = self.clock()
        keep = (
            temporary
            and previous is not None
            and previous.addresses
            and now - previous.since < self.stale_limit
        )
        if keep and previous is not None:
            log.warning(
                "cannot resolve %s (%s): keeping %s for now", name, reason, ", ".join(previous.addresses)
            )
            return Resolution(name, previous.addresses, None, now + self.negative_ttl, previous.since)
        return Resolution(
            name, (), f"host name {name} does not resolve: {reason}", now + self.negative_ttl, now
        )

    async def _lookup(self, name: str) -> Sequence[str]:
        """One lookup per name in flight, on this resolver's own threads, awaited within ``timeout``.
        At most ``threads`` lookups are started at once, so the timeout measures a lookup rather than
        its wait in a queue (a thousand names due together must not time out for that). A lookup
        that outlives its timeout keeps its thread until it returns; later passes wait on the same
        one instead of starting more."""
        future = self._inflight.get(name)
        if future is not None:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._threads)
        async with self._slots:
            future = self._inflight.get(name)  # another pass may have started it meanwhile
            if future is None:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, "fleetop-resolve")
                future = asyncio.get_running_loop().run_in_executor(self._pool, self.lookup, name)
                self._inflight[name] = future
                future.add_done_callback(lambda done: self._done(name, done))
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)

    def _done(self, name: str, future: asyncio.Future[Sequence[str]]) -> None:
        if self._inflight.get(name) is future:
            del self._inflight[name]
        if not future.cancelled():
            future.exception()  # retrieved: a late failure is not "never retrieved"


def names_of(hosts: Iterable[str]) -> set[str]:
    """The hosts that are DNS names (not IP addresses)."""
    found = set()
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            found.add(host)
    return found


def resolved_view(resolutions: Mapping[str, Resolution]) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """What a render depends on from DNS, comparable between passes."""
    return tuple(resolutions[name].fingerprint() for name in sorted(resolutions))
