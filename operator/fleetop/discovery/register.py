"""``fleetop register``: keep ``/services/<svc>/<instance> = host:port`` in etcd exactly while healthy.

The articles' sidekick looped ``curl``, ``etcdctl set ... --ttl 30``, ``sleep 20``: a new instance waited
up to 20 s to appear, a failed one lingered up to 30 s, and a crashed sidekick left its key for the TTL.
This one keeps the same contract (the value is the bare text ``host:port`` that confd templates and
etcdctl users read) and tightens it:

- the first check runs at once and is retried quickly until it passes, then every ``interval``;
- the key is bound to a lease that a :class:`~fleetop.etcd.client.LeaseKeeper` keeps alive, so a killed
  sidekick's key expires within the TTL, and a failed check or SIGTERM deletes it at once;
- etcd outages are ridden out: when etcd is back (and the instance healthy) a new lease is granted and
  the key written again; a key someone deleted is written again at the next check.

The address is validated strictly before anything is written, because the value ends up verbatim in
proxy configs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field

from fleetop.backoff import exponential
from fleetop.discovery.addresses import parse_address, registration_key
from fleetop.discovery.checks import CheckResult, HealthCheck, host_port_text
from fleetop.errors import FleetopError, InputError, NotFound, TemporaryError
from fleetop.etcd.client import Compare, Etcd, LeaseKeeper, Op

log = logging.getLogger(__name__)

FAST_RETRY = 0.25
"""Seconds between checks until the first one passes (and the first step of the back-off after one fails)."""
ETCD_RETRY = 1.0
"""Seconds between attempts to register while etcd is unreachable."""
CLEANUP_TIMEOUT = 3.0
"""How long stopping may spend deleting the key and revoking the lease before leaving them to the TTL."""


@dataclass(frozen=True, slots=True)
class RegisterConfig:
    """What to register where, and how to check it. Build it with :meth:`build`, which validates.

    ``key`` is the logical key (``/services/web/8001``); :class:`~fleetop.etcd.client.Etcd` puts the
    installation root in front of it.
    """

    key: str
    host: str
    port: int
    check: HealthCheck = field(default_factory=HealthCheck)
    interval: float = 10.0
    ttl: int = 30
    fast_retry: float = FAST_RETRY

    @property
    def value(self) -> str:
        """The registration value: the bare text ``host:port`` (IPv6 in brackets)."""
        return host_port_text(self.host, self.port)

    @classmethod
    def build(
        cls,
        *,
        service: str,
        instance: str,
        address: str,
        prefix: str | None = None,
        check: HealthCheck | None = None,
        interval: float = 10.0,
        ttl: float = 30.0,
    ) -> RegisterConfig:
        """Validate the flags; raise :class:`InputError` naming the flag at fault."""
        host, port = parse_address(address)
        key = registration_key(service, instance, prefix)
        if not interval > 0:
            raise InputError("the check interval must be positive", where="--interval")
        if ttl < 1:
            raise InputError("the TTL must be at least 1s", where="--ttl")
        return cls(key, host, port, check or HealthCheck(), interval, math.ceil(ttl))

    def describe(self) -> str:
        check = self.check.describe()
        return f"{self.key} = {self.value} (check {check}, every {self.interval:g}s, ttl {self.ttl}s)"


class Registrar:
    """The key and the lease it rides on. Knows nothing about checks: ``ensure`` or ``withdraw``.

    Retryable etcd errors are logged and reported as "not registered"; the caller retries on its next
    tick. ``lost`` is set when the keeper can no longer prove the lease alive (etcd forgot it, or it
    could not be renewed in time), so the caller registers again on a new lease without waiting.
    Leases that were replaced or given up are revoked once etcd answers (until then their TTL runs).
    """

    def __init__(self, etcd: Etcd, config: RegisterConfig) -> None:
        self.etcd = etcd
        self.config = config
        self.registered = False
        self._keeper: LeaseKeeper | None = None
        self._stale: list[int] = []
        self._idle = asyncio.Event()
        self._etcd_down = False

    @property
    def lost(self) -> asyncio.Event:
        return self._keeper.lost if self._keeper is not None else self._idle

    async def ensure(self) -> bool:
        """Make sure the key holds our value on a live lease of ours. True when it is so."""
        try:
            try:
                await self._put_if_needed()
            except NotFound:  # the lease was revoked or expired before the keeper noticed
                log.warning("lease of %s is gone; registering on a new one", self.config.key)
                await self._stop_keeper()
                await self._put_if_needed()
            self.registered = True
            if self._etcd_down:
                log.info("etcd answers again")
                self._etcd_down = False
        except TemporaryError as exc:
            state = "the registration may lapse" if self.registered else "not registered"
            log.log(
                logging.DEBUG if self._etcd_down else logging.WARNING, "etcd unavailable, %s: %s", state, exc
            )
            self._etcd_down, self.registered = True, False
            return False
        with contextlib.suppress(TemporaryError):  # leftovers of earlier leases: their TTL runs anyway
            await self._revoke_stale()
        return True

    async def _put_if_needed(self) -> None:
        key, value = self.config.key, self.config.value
        renewed = self._keeper is None or self._keeper.lost.is_set()
        if renewed:
            await self._new_lease()
        assert self._keeper is not None
        lease = self._keeper.lease
        current = await self.etcd.get(key)
        if current is not None and current.value == value.encode() and current.lease == lease:
            return
        await self.etcd.put(key, value, lease=lease)
        if renewed and self.registered:
            why = " on a new lease"
        else:
            why = " (it had vanished or changed)" if self.registered else ""
        log.info("registered %s = %s, lease %x, ttl %ss%s", key, value, lease, self.config.ttl, why)

    async def withdraw(self) -> None:
        """Stop renewing, delete the key if it still holds our value, revoke the lease.

        When etcd cannot be reached the lease is no longer renewed, so the key expires within the TTL.
        """
        await self._stop_keeper()
        was_registered, self.registered = self.registered, False
        if not was_registered and not self._stale:
            return
        key, value = self.config.key, self.config.value
        try:
            deleted, _ = await self.etcd.txn([Compare.value_is(key, value)], [Op.delete(key)])
            await self._revoke_stale()
        except TemporaryError as exc:
            log.warning("cannot delete %s now (its lease expires within %ss): %s", key, self.config.ttl, exc)
            return
        if was_registered or deleted:
            log.info("deregistered %s", key)

    async def _new_lease(self) -> None:
        await self._stop_keeper()
        keeper = LeaseKeeper(self.etcd, lease=0, ttl=self.config.ttl, revoke_on_exit=False)
        await keeper.start()
        self._keeper = keeper

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()
            self._stale.append(keeper.lease)

    async def _revoke_stale(self) -> None:
        while self._stale:
            await self.etcd.revoke(self._stale[0])
            self._stale.pop(0)


async def _check_or_stop(config: RegisterConfig, stop: asyncio.Event) -> CheckResult | None:
    """One check, abandoned (and its process killed) the moment ``stop`` is set. None when stopped."""
    check = asyncio.ensure_future(config.check.run(config.host, config.port))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({check, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (check, stopped):
            task.cancel()
        await asyncio.gather(check, stopped, return_exceptions=True)
    if check.cancelled():
        return None
    return check.result()  # a check that raised is a bug: let it end the loop (after cleanup)


async def _sleep(delay: float, *events: asyncio.Event) -> None:
    """Sleep ``delay`` seconds or until one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def run_register(etcd: Etcd, config: RegisterConfig, *, stop: asyncio.Event) -> None:
    """Check, register while healthy, deregister when not, until ``stop`` is set; then deregister.

    Checks run at once and every ``fast_retry`` seconds until the first pass, then every ``interval``;
    after a failure they back off from ``fast_retry`` to ``interval`` so a restarted instance comes
    back quickly. Permanent etcd errors (permissions) end the loop with the exception, after cleanup.
    """
    registration = Registrar(etcd, config)
    healthy: bool | None = None
    ever_healthy = False
    failures = 0
    log.info("checking %s", config.describe())
    try:
        while not stop.is_set():
            result = await _check_or_stop(config, stop)
            if result is None:
                break
            if result.healthy != healthy:
                log.log(
                    logging.INFO if result.healthy else logging.WARNING,
                    "%s is %s: %s",
                    config.value,
                    "healthy" if result.healthy else "unhealthy",
                    result.detail,
                )
                healthy = result.healthy
            if result.healthy:
                ever_healthy, failures = True, 0
                delay = config.interval if await registration.ensure() else ETCD_RETRY
            else:
                failures += 1
                await registration.withdraw()
                delay = (
                    exponential(failures - 1, initial=config.fast_retry, cap=config.interval)
                    if ever_healthy
                    else config.fast_retry
                )
            await _sleep(delay, stop, registration.lost)
    finally:
        await _final_withdraw(registration)


async def _final_withdraw(registration: Registrar) -> None:
    """Deregister on the way out, within :data:`CLEANUP_TIMEOUT`; the lease covers anything left."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await registration.withdraw()
    except (TimeoutError, FleetopError) as exc:
        log.warning("could not deregister %s cleanly: %s", registration.config.key, exc or "timed out")
