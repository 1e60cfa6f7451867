"""The manager: builds the components, owns their task group, and gates the workers on leadership.

Every long-running piece has the same lifecycle, ``async def run()`` until cancelled
(controller-runtime's Runnable). The manager only decides which run when:

* always: the informers (followers keep their caches warm, so a failover starts from a synced
  world), the leader elector, and the health server;
* only while leader: the reconcile workers and the periodic resync. On election the caches are
  awaited and every known key is queued; on losing the lease the workers are cancelled at once (the
  renew deadline expires before the lease does, so they stop before anyone else can start).

Shutdown order matters: stop the workers, then resign (so the successor never overlaps with a pass
still in flight), then cancel everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fleetop.controller.proxies.cache import ProxyCaches
from fleetop.controller.proxies.reconciler import ProxyReconciler
from fleetop.controller.runtime.contain import FailureReporter
from fleetop.controller.runtime.contract import Dispatcher
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.health import HealthApp, HealthServer, parse_address
from fleetop.controller.runtime.informers import Informers
from fleetop.controller.runtime.leader import LeaderElector
from fleetop.controller.runtime.metrics import OperatorMetrics
from fleetop.controller.runtime.observed import ObservationWriter
from fleetop.controller.runtime.queue import WorkQueue, run_resync, run_workers
from fleetop.controller.runtime.run import RunConfig
from fleetop.controller.services.reconciler import ServiceReconciler
from fleetop.controller.world import BackoffPolicy
from fleetop.discovery.resolve import Resolver
from fleetop.errors import ConfigError, FleetopError
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.proxy.sandbox import RenderPool

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0
"""Seconds ``/readyz`` waits for etcd to answer a read."""


class Manager:
    """One operator process. ``run()`` until cancelled or :meth:`request_stop`."""

    def __init__(self, config: RunConfig, *, resolver: Resolver | None = None) -> None:
        self.config = config
        self.resolver = resolver if resolver is not None else Resolver()
        self.metrics = OperatorMetrics()
        self.queue = WorkQueue()
        self.health_url: str | None = None
        self.sandbox = RenderPool(config.render)
        """Worker processes for custom proxy templates, stopped when :meth:`run` ends."""
        self._stop = asyncio.Event()
        self._started = asyncio.Event()

    def request_stop(self) -> None:
        """Stop workers, resign, shut down (what SIGTERM does)."""
        self._stop.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self) -> None:
        config = self.config
        async with await Etcd.connect(config.etcd) as etcd, FleetClient(config.fleet_endpoint) as client:
            keys = Keys()
            informers = Informers(
                etcd, keys, client, self.queue.add, fast=config.fleet_poll_fast, slow=config.fleet_poll_slow
            )
            leader = LeaderElector(etcd, keys, config.identity, config.leader, on_change=self._leader_changed)
            client.write_guard = leader.check_leading  # every attempt of a fleet write, retries too
            executor = Executor(
                client,
                etcd,
                keys,
                lambda: leader.fence,
                metrics=self.metrics,
                event_ttl=config.event_ttl,
                guard=leader.check_leading,
                batch_size=config.limits.batch_size,
            )
            services = ServiceReconciler(
                informers,
                executor,
                self.metrics,
                settings=config.unit_settings,
                backoff=BackoffPolicy.scaled(config.restart_backoff),
                limits=config.limits,
            )
            proxy_caches = ProxyCaches(etcd, keys, self.queue.add)
            proxies = ProxyReconciler(
                informers,
                proxy_caches,
                executor,
                proxy_root=config.proxy_root,
                settings=config.unit_settings,
                sandbox=self.sandbox,
                resolver=self.resolver,
            )
            reconciler = Dispatcher(
                {"services": services, "proxies": proxies}, report=FailureReporter(executor).report
            )
            sources = self.metrics.sources
            sources.queue, sources.fleet_stats = self.queue, client.stats
            sources.is_leader, sources.synced = (lambda: leader.is_leader), informers.synced
            self.etcd, self.informers, self.leader, self.services = etcd, informers, leader, services
            self.proxy_caches, self.proxies = proxy_caches, proxies
            self.observed = ObservationWriter(
                etcd, keys, informers.fleet, config.identity, lambda: leader.fence
            )
            try:
                await self._run_components(reconciler)
            finally:
                self.sandbox.close()
                self.resolver.close()

    async def _run_components(self, reconciler: Dispatcher) -> None:
        async with asyncio.TaskGroup() as group:
            background = [
                group.create_task(self.informers.run(), name="informers"),
                group.create_task(self.proxy_caches.run(), name="proxy informers"),
                group.create_task(self.leader.run(), name="leader election"),
            ]
            if self.config.metrics_address:
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
            async with asyncio.timeout(max(1.0, self.config.leader.retry_period)):
                await self.leader.resign()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    def _health_server(self) -> HealthServer:
        address = self.config.metrics_address or ""
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
            self.services.memory.clear()
            self.proxies.memory.clear()
            count = self.queue.resync(self._known_keys())
            log.info("leading: %d keys queued, %d workers", count, self.config.workers)
            workers = asyncio.create_task(
                run_workers(
                    self.queue, reconciler.reconcile, self.config.workers, self.metrics.observe_reconcile
                )
            )
            resync = asyncio.create_task(run_resync(self.queue, self.config.resync_period, self._known_keys))
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
        return self.informers.known_keys() | self.proxy_caches.known_keys()

    async def _caches_synced_while_leading(self) -> bool:
        while self.leader.is_leader:
            if all(self.informers.synced().values()) and self.proxy_caches.synced:
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
            return {"identity": self.config.identity}
        return {
            "identity": self.config.identity,
            "leader": leader.observed_leader,
            "isLeader": leader.is_leader,
        }
