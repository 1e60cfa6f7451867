"""The manager is generic: it runs whatever kinds its wiring gives it. Real etcd and ``fleetop node``;
the one kind here is neither services nor proxies, so nothing in the manager can be special-casing them.

On election the manager waits for every cache (the shared informers and the kind's own), asks each kind
to forget its last term, queues every key the caches know and hands ``widgets/<name>`` keys to the
kind's reconciler; when it stops, it leaves the wiring, which closes what it opened.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ophelpers import Node

from fleetop.config import EtcdSettings
from fleetop.controller.runtime.leader import LeaderTimings
from fleetop.controller.runtime.manager import Cache, Cluster, Controller, Manager, Wiring
from fleetop.controller.runtime.settings import FleetSettings, MetricsSettings, OperatorSettings
from fleetop.local.etcdserver import EtcdServer
from waiting import eventually


class Widgets:
    """A kind's reconciler that records the names it is given."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def reconcile(self, name: str) -> float | None:
        self.names.append(name)
        return None


async def test_the_manager_runs_the_kinds_it_is_wired_with(etcd_server: EtcdServer, node: Node) -> None:
    widgets = Widgets()
    forgotten: list[str] = []
    events: list[str] = []
    synced = asyncio.Event()

    async def follow() -> None:
        events.append("cache started")
        await asyncio.Event().wait()

    @asynccontextmanager
    async def wire(cluster: Cluster) -> AsyncIterator[Wiring]:
        events.append("wired")
        try:
            yield Wiring(
                controllers=[Controller("widgets", widgets, lambda: forgotten.append("widgets"))],
                caches=[Cache("widget cache", follow, synced.is_set, lambda: {"widgets/a", "widgets/b"})],
            )
        finally:
            events.append("closed")

    settings = OperatorSettings(
        etcd=EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=f"/t/manager-{os.getpid()}"),
        fleet=FleetSettings(endpoint=node.endpoint),
        leader=LeaderTimings(4.0, 2.0, 0.5),
        metrics=MetricsSettings(None),
        identity="generic",
    )
    manager = Manager(settings, wire)
    task = asyncio.create_task(manager.run())
    try:
        await manager.wait_started()
        await eventually(lambda: manager.leader.is_leader, 20, "the manager to lead")
        await asyncio.sleep(0.5)
        assert widgets.names == [], "no worker runs before every cache has synced"
        synced.set()
        await eventually(lambda: sorted(widgets.names) == ["a", "b"], 20, "both widget keys reconciled")
        assert forgotten == ["widgets"]
        assert events == ["wired", "cache started"]
    finally:
        manager.request_stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
    assert task.exception() is None
    assert events[-1] == "closed"
