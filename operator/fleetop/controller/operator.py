"""The operator: the two kinds fleetop reconciles, wired onto the generic manager.

:class:`~fleetop.controller.runtime.manager.Manager` is controller-runtime's Manager (the task group,
the informers, leader election, health, workers gated on leadership) and knows no kind by name. This
module is where the kinds meet it (controller-runtime's ``main.go`` with its
``ctrl.NewControllerManagedBy(mgr)`` lines):

* ``services/<name>``: :class:`~fleetop.controller.services.reconciler.ServiceReconciler`, with the
  unit settings of the installation, the crash-loop back-off and the instance ceilings;
* ``proxies/<name>``: :class:`~fleetop.controller.proxies.reconciler.ProxyReconciler`, with its own
  caches (published configs, proxy statuses, agents' reports), the proxy root, a pool of worker
  processes for custom templates (:class:`~fleetop.proxy.sandbox.RenderPool`) and a DNS resolver
  (:class:`~fleetop.discovery.resolve.Resolver`), both closed when the manager stops.

:func:`run_operator` is ``fleetop run`` after its flags: it logs what it runs with and runs the manager
under :func:`~fleetop.controller.runtime.run.run_until_signalled`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fleetop.controller.proxies.cache import ProxyCaches
from fleetop.controller.proxies.reconciler import ProxyReconciler
from fleetop.controller.runtime.manager import Cache, Cluster, Controller, Manager, Wiring
from fleetop.controller.runtime.run import run_until_signalled
from fleetop.controller.runtime.settings import OperatorSettings, fleetop_path_problem
from fleetop.controller.services.memory import BackoffPolicy
from fleetop.controller.services.reconciler import ServiceReconciler
from fleetop.discovery.resolve import Resolver
from fleetop.proxy.sandbox import RenderPool

log = logging.getLogger(__name__)


def build_manager(settings: OperatorSettings, *, resolver: Resolver | None = None) -> Manager:
    """The manager of one operator process, with both kinds wired. ``resolver`` replaces the DNS
    resolver of proxy backends (tests give a stub); it is closed when the manager stops."""

    @asynccontextmanager
    async def wire(cluster: Cluster) -> AsyncIterator[Wiring]:
        dns = resolver if resolver is not None else Resolver()
        sandbox = RenderPool(settings.proxies.render)
        try:
            yield _kinds(settings, cluster, sandbox, dns)
        finally:
            sandbox.close()
            dns.close()

    return Manager(settings, wire)


def _kinds(settings: OperatorSettings, cluster: Cluster, sandbox: RenderPool, resolver: Resolver) -> Wiring:
    services = ServiceReconciler(
        cluster.informers,
        cluster.executor,
        cluster.metrics,
        settings=settings.unit_settings,
        backoff=BackoffPolicy.scaled(settings.workers.restart_backoff),
        limits=settings.limits,
    )
    proxy_caches = ProxyCaches(cluster.etcd, cluster.keys, cluster.enqueue)
    proxies = ProxyReconciler(
        cluster.informers,
        proxy_caches,
        cluster.executor,
        proxy_root=settings.proxies.root,
        settings=settings.unit_settings,
        sandbox=sandbox,
        resolver=resolver,
    )
    return Wiring(
        controllers=(
            Controller("services", services, services.memory.clear),
            Controller("proxies", proxies, proxies.memory.clear),
        ),
        caches=(
            Cache("proxy informers", proxy_caches.run, lambda: proxy_caches.synced, proxy_caches.known_keys),
        ),
    )


async def run_operator(settings: OperatorSettings, *, handle_signals: bool = True) -> None:
    """Run the operator until cancelled or until SIGTERM/SIGINT (which resign leadership first)."""
    settings.leader.check()
    log.info(
        "fleetop run: identity %s, %s, fleet %s, %d workers",
        settings.identity,
        settings.etcd.describe(),
        settings.fleet.endpoint,
        settings.workers.count,
    )
    path = settings.install.fleetop_path
    problem = fleetop_path_problem(path)
    if problem is not None:
        log.warning("%s: units that run fleetop fail with 203/EXEC on machines without it", problem)
    else:
        log.info("units run %s", path)
    await run_until_signalled(build_manager(settings), handle_signals=handle_signals)
    log.info("fleetop run: stopped")
