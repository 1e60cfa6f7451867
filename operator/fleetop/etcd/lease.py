"""Keeping an etcd lease alive, and knowing for certain when it may not be.

A leader must stop acting *before* its lease can expire, and a sidekick must register again after
its lease is gone; etcd3aio's keepalive does neither (its Lock/Election never renew at all). The
keeper here renews every ttl/3 with a deadline on each call and keeps a local deadline: the send
time of the last successful renewal plus the TTL etcd granted. The server starts counting later
than we do, so the local deadline is always early. When the lease cannot be proven alive
``margin`` seconds before that deadline, or etcd says it has expired, ``lost`` is set.

With ``regrant=True`` (sidekicks) the keeper carries on: once etcd answers again it keeps the old
lease if it survived (etcd extends leases over a restart) or grants a new one and awaits
``on_regrant(lease)`` so the owner can write its keys again; then ``lost`` is cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from fleetop.backoff import HALF_JITTER, Backoff
from fleetop.errors import EtcdUnavailable, FleetopError

log = logging.getLogger(__name__)


class Leases(Protocol):
    """The lease calls a keeper makes (:class:`fleetop.etcd.client.Etcd` has them). Declared here, where
    they are used, so that the client may build on this module without this module importing it."""

    async def grant(self, ttl: int) -> int: ...

    async def revoke(self, lease: int) -> None: ...

    async def keepalive_once(self, lease: int) -> int: ...


class LeaseKeeper:
    """Keep ``lease`` (or, when it is 0, a lease granted on start) alive in a background task.

    ``async with LeaseKeeper(etcd, 0, ttl=10) as keeper: await etcd.put(k, v, lease=keeper.lease)``.
    ``lost`` is an :class:`asyncio.Event` (pass your own to share it); ``expired`` says etcd itself
    reported the lease gone. ``stop()`` (or leaving the ``async with``) ends the task and revokes the
    lease if ``revoke_on_exit`` (default: only a lease the keeper granted itself).
    """

    def __init__(
        self,
        etcd: Leases,
        lease: int,
        ttl: int,
        *,
        lost: asyncio.Event | None = None,
        regrant: bool = False,
        on_regrant: Callable[[int], Awaitable[None]] | None = None,
        revoke_on_exit: bool | None = None,
        margin: float | None = None,
    ) -> None:
        if ttl < 1:
            raise ValueError("lease ttl must be at least 1 second")
        self.etcd = etcd
        self.ttl = ttl
        self.lease = lease
        self.regrant = regrant
        self.on_regrant = on_regrant
        self.revoke_on_exit = not lease if revoke_on_exit is None else revoke_on_exit
        self.margin = min(1.0, ttl / 5) if margin is None else margin
        self.lost = lost if lost is not None else asyncio.Event()
        self.expired = False
        self._deadline = 0.0
        self._granted_ttl = float(ttl)
        self._task: asyncio.Task[None] | None = None

    @property
    def deadline(self) -> float:
        """The ``loop.time()`` until which the lease is surely alive; ``lost`` is set ``margin`` before."""
        return self._deadline

    async def start(self) -> int:
        """Grant the lease unless one was given (then prove it alive), and start renewing it."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        if self.lease:
            remaining = await self.etcd.keepalive_once(self.lease)
            if remaining <= 0:
                raise EtcdUnavailable(f"lease {self.lease:x} has already expired")
            self._granted_ttl = float(remaining)
        else:
            self.lease = await self.etcd.grant(self.ttl)
        self._deadline = sent + self._granted_ttl
        self._task = asyncio.create_task(self._run(), name=f"lease-keeper-{self.lease:x}")
        return self.lease

    async def stop(self) -> None:
        """Stop renewing; revoke the lease if ``revoke_on_exit`` and it was not lost."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.revoke_on_exit and self.lease and not self.lost.is_set():
            try:
                await self.etcd.revoke(self.lease)
            except FleetopError as exc:
                log.warning("could not revoke lease %x: %s", self.lease, exc)

    async def __aenter__(self) -> LeaseKeeper:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(0.1, self._granted_ttl / 3))
            if await self._renew_before_deadline():
                continue
            self.lost.set()
            log.warning("lease %x lost (%s)", self.lease, "expired" if self.expired else "etcd unreachable")
            if not self.regrant:
                return
            await self._recover()

    async def _renew_before_deadline(self) -> bool:
        """Renew; retry with backoff while etcd is down. False once the lease is not provably alive."""
        loop = asyncio.get_running_loop()
        delays = Backoff(0.1, max(0.2, self.ttl / 6), jitter=HALF_JITTER)
        while True:
            sent = loop.time()
            usable = self._deadline - self.margin - sent
            if usable <= 0:
                return False
            try:
                async with asyncio.timeout(usable):
                    remaining = await self.etcd.keepalive_once(self.lease)
            except (EtcdUnavailable, TimeoutError) as exc:
                log.info("lease %x: renewal failed (%s); retrying", self.lease, exc)
                await asyncio.sleep(min(delays.next(), max(0.0, self._deadline - self.margin - loop.time())))
                continue
            except FleetopError as exc:
                log.warning("lease %x: renewal refused: %s", self.lease, exc)
                return False
            if remaining <= 0:
                self.expired = True
                return False
            self._granted_ttl = float(remaining)
            self._deadline = sent + remaining
            return True

    async def _recover(self) -> None:
        """Wait for etcd, keep the lease if it survived or grant a new one and re-register."""
        loop = asyncio.get_running_loop()
        delays = Backoff(0.2, 5.0, jitter=HALF_JITTER)
        registered = True
        while True:
            try:
                sent = loop.time()
                remaining = await self.etcd.keepalive_once(self.lease)
                if remaining <= 0:
                    self.lease = await self.etcd.grant(self.ttl)
                    remaining, registered = self.ttl, False
                    log.info("lease expired; granted new lease %x", self.lease)
                self._granted_ttl = float(remaining)
                self._deadline = sent + remaining
                if not registered and self.on_regrant is not None:
                    await self.on_regrant(self.lease)
                registered = True
                self.expired = False
                self.lost.clear()
                return
            except FleetopError as exc:
                delay = delays.next()
                log.info("lease %x: recovery failed (%s); retrying in %.2f s", self.lease, exc, delay)
                await asyncio.sleep(delay)
