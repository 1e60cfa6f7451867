"""The manager: connects, builds the shared components, owns their task group, and gates the
workers on leadership. It knows no kind by name: which reconciler handles which keys, and the caches
each needs, come from the wiring it is given (:mod:`fleetop.controller.operator`).

Every long-running piece has the same lifecycle, ``async def run()`` until cancelled
(controller-runtime's Runnable). The manager only decides which run when:

* always: the informers and the kinds' own caches (followers keep their caches warm, so a failover
  starts from a synced world), the leader elector, and the health server;
* only while leader: the reconcile workers and the periodic resync. On election the caches are
  awaited, every kind forgets what it remembered of the last term, and every known key is queued; on
  losing the lease the workers are cancelled at once (the renew deadline expires before the lease
  does, so they stop before anyone else can start).

Shutdown order matters: stop the workers, then resign (so the successor never overlaps with a pass
still in flight), then cancel everything else, then leave the wiring (which closes what it opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from fleetop.clock import SYSTEM_CLOCK, Clock
from fleetop.controller.runtime.contain import FailureReporter
from fleetop.controller.runtime.contract import Dispatcher, Reconciler
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.health import HealthApp, HealthServer, parse_address
from fleetop.controller.runtime.informers import Informers
from fleetop.controller.runtime.leader import LeaderElector
from fleetop.controller.runtime.metrics import OperatorMetrics
from fleetop.controller.runtime.observed import ObservationWriter
from fleetop.controller.runtime.queue import WorkQueue, run_resync, run_workers
from fleetop.controller.runtime.settings import OperatorSettings
from fleetop.errors import ConfigError, FleetopError
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys


@dataclass(frozen=True)
class Cluster:
    """What the manager has connected and built before any kind: handed to the wiring."""

    etcd: Etcd
    fleet: FleetClient
    keys: Keys
    informers: Informers
    """The shared caches: fleet's poll, the desired specs, the statuses, the registrations."""
    executor: Executor
    """Fenced writes to fleet and etcd, events and statuses, gated on leadership."""
    metrics: OperatorMetrics
    enqueue: Callable[[str], None]
    """Queue a key (``services/web``) for a pass."""


@dataclass(frozen=True)
class Controller:
    """One kind of key: ``<kind>/<name>`` goes to ``reconciler``."""

    kind: str
    reconciler: Reconciler
    forget: Callable[[], None]
    """Called at the start of every term as leader: what the kind remembered of an earlier term may be
    stale, so it starts again from the stored status."""


@dataclass(frozen=True)
class Cache:
    """A kind's own informer, run (like the shared ones) by every replica, leader or not."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    synced: Callable[[], bool]
    """Whether it has listed once: the workers of a new term wait for every cache."""
    known_keys: Callable[[], set[str]]
    """The keys it knows of, queued on election and on every resync."""


@dataclass(frozen=True)
class Wiring:
    """What the operator's wiring gives the manager: the kinds and their caches."""

    controllers: Sequence[Controller]
    caches: Sequence[Cache] = ()


Setup = Callable[[Cluster], AbstractAsyncContextManager[Wiring]]
"""Builds the kinds on the cluster; leaving the context closes whatever they opened."""


log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0
"""Seconds ``/readyz`` waits for etcd to answer a read."""


class Manager:
    """One operator process. ``run()`` until cancelled or :meth:`request_stop`."""

    def __init__(self, settings: OperatorSettings, setup: Setup, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.setup = setup
        self.clock = clock
        """The one monotonic clock the queue, the fleet informer and the leader elector run on."""
        self.metrics = OperatorMetrics()
        self.queue = WorkQueue(clock=clock)
        self.health_url: str | None = None
        self.wiring = Wiring(controllers=())
        """The kinds and their caches, once :meth:`run` has connected and set them up."""
        self._stop = asyncio.Event()
        self._started = asyncio.Event()

    def request_stop(self) -> None:
        """Stop workers, resign, shut down (what SIGTERM does)."""
        self._stop.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self) -> None:
        settings = self.settings
        async with (
            await Etcd.connect(settings.etcd) as etcd,
            # fleet over the standard library's http.client, a connection per request in threads of the
            # session's own: a third of httpx's CPU per request (what a quiet cluster costs is its polls),
            # and httpx (6 MB) is never imported. The informer's polls have a client of their own, so a
            # burst of writes never delays the poll that detects a failure; one set of counters for both.
            FleetClient(settings.fleet.endpoint, plain=True) as client,
            FleetClient(settings.fleet.endpoint, plain=True, stats=client.stats) as poller,
        ):
            keys = Keys()
            fleet = settings.fleet
            informers = Informers(
                etcd,
                keys,
                poller,
                self.queue.add,
                fast=fleet.poll_fast,
                slow=fleet.poll_slow,
                timer=self.clock,
            )
            leader = LeaderElector(
                etcd,
                keys,
                settings.identity,
                settings.leader,
                on_change=self._leader_changed,
                clock=self.clock,
            )
            client.write_guard = leader.check_leading  # every attempt of a fleet write, retries too
            executor = Executor(
                client,
                etcd,
                keys,
                lambda: leader.fence,
                metrics=self.metrics,
                event_ttl=settings.workers.event_ttl,
                guard=leader.check_leading,
                batch_size=settings.limits.batch_size,
            )
            sources = self.metrics.sources
            sources.queue, sources.fleet_stats = self.queue, client.stats
            sources.is_leader, sources.synced = (lambda: leader.is_leader), informers.synced
            self.etcd, self.informers, self.leader = etcd, informers, leader
            self.observed = ObservationWriter(
                etcd, keys, informers.fleet, settings.identity, lambda: leader.fence
            )
            cluster = Cluster(etcd, client, keys, informers, executor, self.metrics, self.queue.add)
            async with self.setup(cluster) as wiring:
                self.wiring = wiring
                kinds = {c.kind: c.reconciler for c in wiring.controllers}
                reconciler = Dispatcher(kinds, report=FailureReporter(executor).report)
                await self._run_components(reconciler)

    async def _run_components(self, reconciler: Dispatcher) -> None:
        async with asyncio.TaskGroup() as group:
            background = [
                group.create_task(self.informers.run(), name="informers"),
                group.create_task(self.leader.run(), name="leader election"),
            ]
            background += [group.create_task(c.run(), name=c.name) for c in self.wiring.caches]
            if self.settings.metrics.address:
                server = self._health_server()
                self.health_url = server.url
                background.append(group.create_task(server.run(), name="health server"))
            controller = group.create_task(self._controller(reconciler), name="controller")
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await self._shutdown(controller, background)

    async def _shutdown(self, controller: asyncio.Task[None], background: list[asyncio.Task[None]]) -> None:
        controller.cancel()
        await asyncio.gather(controller, return_exceptions=True)
        with contextlib.suppress(FleetopError, TimeoutError):
            async with asyncio.timeout(max(1.0, self.settings.leader.retry_period)):
                await self.leader.resign()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    def _health_server(self) -> HealthServer:
        address = self.settings.metrics.address or ""
        try:
            host, port = parse_address(address)
            return HealthServer(HealthApp(self.metrics, self._ready, self._describe), host, port)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--metrics-address {address}: {exc}") from exc

    async def _controller(self, reconciler: Dispatcher) -> None:
        """Each term as leader: wait for the caches, queue everything, run workers until deposed."""
        while True:
            await self.leader.elected.wait()
            if not await self._caches_synced_while_leading():
                continue
            for controller in self.wiring.controllers:
                controller.forget()
            count = self.queue.resync(self._known_keys())
            log.info("leading: %d keys queued, %d workers", count, self.settings.workers.count)
            workers = asyncio.create_task(
                run_workers(
                    self.queue,
                    reconciler.reconcile,
                    self.settings.workers.count,
                    self.metrics.observe_reconcile,
                )
            )
            resync = asyncio.create_task(
                run_resync(self.queue, self.settings.workers.resync_period, self._known_keys)
            )
            observed = asyncio.create_task(self.observed.run(), name="observed")
            deposed = asyncio.create_task(self.leader.deposed.wait())
            try:
                await asyncio.wait({workers, deposed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (workers, resync, observed, deposed):
                    task.cancel()
                await asyncio.gather(workers, resync, observed, deposed, return_exceptions=True)
            log.info("not leading any more: workers stopped")

    def _known_keys(self) -> set[str]:
        keys = set(self.informers.known_keys())
        for cache in self.wiring.caches:
            keys |= cache.known_keys()
        return keys

    async def _caches_synced_while_leading(self) -> bool:
        while self.leader.is_leader:
            if all(self.informers.synced().values()) and all(c.synced() for c in self.wiring.caches):
                return True
            await asyncio.sleep(0.1)
        return False

    def _leader_changed(self, leading: bool) -> None:
        if leading:
            self.metrics.leader_since.set(time.time())

    async def _ready(self) -> tuple[bool, dict[str, object]]:
        synced = self.informers.synced()
        details: dict[str, object] = {"caches": synced}
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.etcd.get(self.leader.key)
            details["etcd"] = "ok"
            etcd_ok = True
        except (FleetopError, TimeoutError) as exc:
            details["etcd"] = str(exc) or "timed out"
            etcd_ok = False
        if self.informers.fleet.last_error:
            details["fleet"] = self.informers.fleet.last_error
        return etcd_ok and all(synced.values()), details

    def _describe(self) -> dict[str, object]:
        leader = getattr(self, "leader", None)
        if leader is None:
            return {"identity": self.settings.identity}
        return {
            "identity": self.settings.identity,
            "leader": leader.observed_leader,
            "isLeader": leader.is_leader,
        }
