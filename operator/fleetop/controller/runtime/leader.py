"""Leader election on an etcd lease, with the guarantees a fenced operator needs.

etcd3aio ships an Election recipe, but it never keeps its lease alive, so this one is ours, after
controller-runtime's leaderelection (lease 15 s, renew deadline 10 s, retry period 2 s by default):

* lease duration: the longest a dead leader holds the key — a leader killed at any moment is replaced
  within ``lease_duration`` seconds. The key's etcd lease is granted with a TTL of ``lease_duration -
  retry_period`` (whole seconds, rounded down: :attr:`LeaderTimings.lease_ttl`) and refreshed every
  retry period, so the key outlives the leader's last renewal by at most that TTL plus etcd's lessor
  granularity (0.5 s), and the retry period left over covers the lessor and the standby's takeover.
  (controller-runtime's lease duration is how long a standby waits after the last renewal it saw; the
  guarantee to a user is the same: a leader gone, another acting within the lease duration.)
* acquire: ``keys.leader()`` is created with this process's identity, bound to a fresh lease, by a
  transaction that succeeds only if the key is absent. Nobody ever overwrites a live leader.
* renew: every retry period the leader refreshes its lease and checks the key still holds its
  identity. A renewal that has not succeeded for ``renew_deadline`` seconds (measured from the moment
  the last successful renewal was *sent*, so the server's clock can only be later) makes the leader
  step down, and ``renew_deadline < lease_ttl`` means it stops acting before the lease can expire
  and before anyone else can become leader.
* fence: the identity bytes are what status and event writes compare (``fence=(keys.leader(),
  identity)``), so a stale leader that somehow keeps running is refused by etcd itself.
* guard: fleet writes cannot be fenced by etcd, so before each one the executor asks
  :meth:`LeaderElector.check_leading` (client-go's guard). It answers from this process's own
  monotonic clock alone: leading, and the last successful renewal was *sent* less than
  ``renew_deadline`` ago. A leader paused (SIGSTOP, a long GC, a swapped-out VM) past its lease and
  resumed is refused before its first write, whichever task the event loop happens to run first;
  nobody else can have taken the lease while the check passes, since ``renew_deadline <
  lease_ttl``. The clock (:class:`~fleetop.clock.Clock`: the renew deadline, the retry period,
  the waits between attempts) is injectable, so tests step it instead of sleeping.
* take over: standbys watch the key and campaign the moment it is deleted (resigned, or its lease
  expired), with no wait of their own.
* resign: on SIGTERM the leader deletes the key if it still holds its identity and revokes the lease;
  standbys watch the key, so one takes over within about a second instead of a lease duration.
* resume: a leader that stepped down because etcd was unreachable finds, when etcd is back, the key
  still holding its identity on a live lease (etcd restores leases on restart); it takes leadership
  back at once rather than waiting for its own lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from fleetop.backoff import HALF_JITTER, Backoff
from fleetop.clock import SYSTEM_CLOCK, Clock
from fleetop.errors import ConfigError, Conflict, FleetopError, NotLeader
from fleetop.etcd.client import Etcd
from fleetop.etcd.model import RECONNECT_CAP
from fleetop.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderTimings:
    """Leader election: how soon a dead leader is replaced, how long a leader may fail to renew, how
    often to renew. controller-runtime's defaults; :meth:`check` keeps ``retry period < renew
    deadline < lease TTL`` (the TTL being ``lease duration - retry period``)."""

    lease_duration: float = 15.0
    """Seconds within which a leader that died (even killed right after a renewal) is replaced
    (``--lease-duration``): the key's etcd lease lives :attr:`lease_ttl` after the last renewal, and
    the rest of the duration covers etcd's lessor and the standby's takeover."""
    renew_deadline: float = 10.0
    """Seconds a leader may fail to renew before it stops acting, before its lease can expire under
    it (``--renew-deadline``)."""
    retry_period: float = 2.0
    """Seconds between renewals, and between a standby's attempts to take the lease (``--retry-period``)."""

    @property
    def lease_ttl(self) -> int:
        """The TTL of the leader key's etcd lease: ``lease_duration - retry_period`` in whole seconds
        (etcd's TTLs are), rounded down so that a dead leader's key is gone within the duration."""
        return math.floor(self.lease_duration - self.retry_period)

    def check(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_ttl:
            raise ConfigError(
                "--retry-period, --renew-deadline, --lease-duration: leader election needs retry period "
                "< renew deadline < lease TTL (lease duration - retry period, whole seconds), so that a "
                "leader that cannot renew stops acting before its lease can expire; got "
                f"{self.retry_period:g}s < {self.renew_deadline:g}s < {self.lease_ttl}s "
                f"(lease duration {self.lease_duration:g}s)"
            )


def identity_value(identity: str) -> bytes:
    """The leader key's value: who holds it, readable with ``etcdctl get /fleetop/leader``."""
    body = {"holderIdentity": identity, "hostname": socket.gethostname(), "pid": os.getpid()}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def holder_of(value: bytes) -> str:
    """The identity stored in a leader key's value (the raw text if it is not ours)."""
    try:
        data = json.loads(value)
    except ValueError:
        return value.decode("utf-8", errors="replace")
    if isinstance(data, dict) and isinstance(data.get("holderIdentity"), str):
        return str(data["holderIdentity"])
    return value.decode("utf-8", errors="replace")


class LeaderElector:
    """One candidate. ``run()`` campaigns until cancelled; ``elected`` is set while it leads."""

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        identity: str,
        timings: LeaderTimings | None = None,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.etcd = etcd
        self.key = keys.leader()
        self.identity = identity
        self.value = identity_value(identity)
        self.timings = timings or LeaderTimings()
        self.timings.check()
        self.elected = asyncio.Event()
        self.deposed = asyncio.Event()
        self.deposed.set()
        self.observed_leader: str | None = None
        self.transitions = 0
        self._on_change = on_change
        self.clock = clock
        self.renewed_at: float | None = None
        """By :attr:`clock`: when the last successful acquisition or renewal was sent; None unless leading."""
        self._lease = 0
        self._resigned = False

    @property
    def is_leader(self) -> bool:
        return self.elected.is_set()

    def check_leading(self) -> None:
        """Raise NotLeader unless this process leads and renewed its lease within the renew deadline,
        by its own clock. Called right before every write that etcd cannot fence (fleet's API)."""
        renewed = self.renewed_at
        if not self.is_leader or renewed is None:
            raise NotLeader(f"{self.identity} is not the leader")
        age = self.clock.now() - renewed
        if age >= self.timings.renew_deadline:
            raise NotLeader(
                f"{self.identity} last renewed its leadership {age:.1f}s ago, past the "
                f"{self.timings.renew_deadline:g}s renew deadline: not writing"
            )

    @property
    def fence(self) -> tuple[str, bytes]:
        """What fenced writes compare: the leader key must hold exactly our identity bytes."""
        return (self.key, self.value)

    async def run(self) -> None:
        """Campaign, lead, step down, campaign again... until cancelled or :meth:`resign` is called."""
        # etcd unreachable: ask again soon (each attempt is one cheap request), and at once when the
        # client reconnects, so that leadership is back as soon as etcd serves rather than a retry
        # period (or a back-off) later
        delays = Backoff(0.1, min(RECONNECT_CAP, self.timings.retry_period), jitter=HALF_JITTER)
        try:
            while not self._resigned:
                try:
                    if await self._try_acquire():
                        delays.reset()
                        await self._lead()
                    else:
                        delays.reset()
                        await self._wait_for_vacancy()
                except FleetopError as exc:
                    delay = delays.next()
                    log.warning("leader election: %s (retrying within %.2fs)", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        async with self.clock.timeout(delay):
                            await self.etcd.reconnected()
        finally:
            self._set_leader(False)

    async def _try_acquire(self) -> bool:
        current = await self.etcd.get(self.key)
        if current is not None and current.value == self.value and current.lease:
            return await self._resume(current.lease)
        if current is not None:
            self.observed_leader = holder_of(current.value)
            return False
        sent = self.clock.now()
        lease = await self.etcd.grant(self.timings.lease_ttl)
        try:
            await self.etcd.put(self.key, self.value, lease=lease, prev_mod_revision=0)
        except Conflict:
            await self._revoke(lease)
            return False
        except BaseException:
            await self._revoke(lease)
            raise
        self._lease = lease
        self.renewed_at = sent
        self.observed_leader = self.identity
        log.info("became the leader (%s, lease %x)", self.identity, lease)
        return True

    async def _resume(self, lease: int) -> bool:
        """The key still holds our identity: we stepped down while etcd was unreachable, and etcd kept
        (or restored) our lease. Nobody else can have led meanwhile — the key was ours all along — so
        take leadership back now instead of waiting a lease duration for it to expire."""
        sent = self.clock.now()
        if await self.etcd.keepalive_once(lease) <= 0:
            return False
        current = await self.etcd.get(self.key)
        if current is None or current.value != self.value or current.lease != lease:
            return False
        self._lease = lease
        self.renewed_at = sent
        self.observed_leader = self.identity
        log.info("resumed leadership (%s, lease %x): the leader key is still ours", self.identity, lease)
        return True

    async def _lead(self) -> None:
        """Renew until the renew deadline passes without success or the key is no longer ours."""
        self._set_leader(True)
        try:
            while not self._resigned:
                await self.clock.sleep(self.timings.retry_period)
                if not await self._renew_within_deadline():
                    return
        finally:
            self.renewed_at = None
            if self.is_leader:
                self._set_leader(False)
                lease, self._lease = self._lease, 0
                if lease and not self._resigned:
                    await self._revoke(lease)

    async def _renew_within_deadline(self) -> bool:
        """One renewal attempt; False (step down now) when the deadline passed or the lease is lost."""
        sent = self.clock.now()
        renewed = self.renewed_at if self.renewed_at is not None else sent
        budget = renewed + self.timings.renew_deadline - sent
        if budget <= 0:
            log.error("could not renew leadership for %.1fs: stepping down", sent - renewed)
            return False
        try:
            async with self.clock.timeout(budget):
                if not await self._renew_once():
                    return False
            self.renewed_at = sent
        except (FleetopError, TimeoutError) as exc:
            log.warning("renewing leadership failed: %s", exc or "timed out")
            if self.clock.now() - renewed >= self.timings.renew_deadline:
                log.error("could not renew leadership within %gs: stepping down", self.timings.renew_deadline)
                return False
        return True

    async def _renew_once(self) -> bool:
        """Refresh the lease; False (lost) when it expired or the key holds someone else."""
        ttl = await self.etcd.keepalive_once(self._lease)
        if ttl <= 0:
            log.error("leader lease %x expired: stepping down", self._lease)
            return False
        current = await self.etcd.get(self.key)
        if current is None or current.value != self.value:
            log.error("the leader key no longer holds our identity: stepping down")
            return False
        return True

    async def _wait_for_vacancy(self) -> None:
        """Follow the leader key; return when it is deleted or after one retry period."""
        current = await self.etcd.get(self.key)
        if current is None:
            return
        self.observed_leader = holder_of(current.value)
        with contextlib.suppress(TimeoutError):
            async with self.clock.timeout(self.timings.retry_period):
                stream = self.etcd.watch(self.key, current.mod_revision + 1)
                async with contextlib.aclosing(stream):
                    async for batch in stream:
                        if any(e.key == self.key and e.type == "delete" for e in batch.events):
                            log.info("leader %s resigned or expired", self.observed_leader)
                            return

    async def resign(self) -> None:
        """Give leadership up at once: delete our key (only if it is still ours), revoke the lease."""
        self._resigned = True
        was_leader = self.is_leader
        self._set_leader(False)
        lease, self._lease = self._lease, 0
        if not lease:
            return
        with contextlib.suppress(NotLeader, FleetopError):
            await self.etcd.delete(self.key, fence=(self.key, self.value))
        await self._revoke(lease)
        if was_leader:
            log.info("resigned leadership (%s)", self.identity)

    async def _revoke(self, lease: int) -> None:
        try:
            await self.etcd.revoke(lease)
        except FleetopError as exc:
            log.debug("revoking lease %x: %s", lease, exc)

    def _set_leader(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        self.transitions += 1
        if leading:
            self.deposed.clear()
            self.elected.set()
        else:
            self.elected.clear()
            self.deposed.set()
        if self._on_change is not None:
            self._on_change(leading)
