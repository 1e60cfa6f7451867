"""The proxy reconciler under the contract, in this process against a real etcd and ``fleetop node``:
a pass that acts on fleet returns at once (an expectation, never a wait for a poll), passes before the
poll that shows its actions change nothing in fleet but still publish and report, and that poll
queues the proxy again. Its events are a proxy's (``proxy/<name>``, under ``/fleetop/events/proxies/``),
and a proxy and a service of one name are refused, the later one with ``Invalid=True, NameTaken``.

No fleet poll loop runs here: the test polls by hand, so what a pass could have seen is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetop.cli import lightdescribe
from fleetop.config import EtcdSettings
from fleetop.controller.proxies.cache import ProxyCaches
from fleetop.controller.proxies.reconciler import ProxyReconciler
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.informers import Informers
from fleetop.controller.services.reconciler import ServiceReconciler
from fleetop.controller.unitfile import UnitSettings
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys, Kind
from fleetop.local.etcdserver import EtcdServer, free_port
from fleetop.models import Event, ProxyStatus, ServiceStatus
from fleetop.models.parse import parse_proxy, parse_service, spec_hash
from fleetop.prefixes import follow
from waiting import eventually

KEYS = Keys()
FENCE = (KEYS.leader(), b"me")
SETTINGS = UnitSettings(fleetop="/bin/false")  # the units exist in fleet; what they run does not matter


@dataclass
class World:
    etcd: Etcd
    fleet: FleetClient
    informers: Informers
    proxies: ProxyReconciler
    services: ServiceReconciler
    queued: list[str] = field(default_factory=list)

    async def put(self, kind: Kind, name: str, spec: dict[str, Any]) -> None:
        await self.etcd.put(KEYS.desired(kind, name), json.dumps(spec).encode())
        await eventually(lambda: name in self.informers.entries[kind], 10.0, f"{kind}/{name} in the cache")
        # a new spec may name a registration prefix: its cache starts now
        await eventually(lambda: all(self.informers.synced().values()), 10.0, "the caches to sync")

    async def status(self, kind: Kind, name: str) -> ProxyStatus | ServiceStatus | None:
        kv = await self.etcd.get(KEYS.status(kind, name))
        model = ProxyStatus if kind == "proxies" else ServiceStatus
        return None if kv is None else model.model_validate_json(kv.value)

    async def events(self, kind: Kind, name: str) -> list[Event]:
        items, _ = await self.etcd.list(KEYS.events(kind, name))
        return [Event.model_validate_json(kv.value) for kv in items]

    def fleet_calls(self) -> int:
        return sum(self.fleet.stats.calls.values())


@pytest.fixture
async def world(
    etcd_server: EtcdServer, etcd_prefix: str, fleet: FleetClient, tmp_path: Path
) -> AsyncIterator[World]:
    settings = EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    async with await Etcd.connect(settings) as etcd:
        await etcd.put(*FENCE)
        queued: list[str] = []
        informers = Informers(etcd, KEYS, fleet, queued.append, fast=0.5, slow=5.0)
        caches = ProxyCaches(etcd, KEYS, queued.append)
        executor = Executor(fleet, etcd, KEYS, lambda: FENCE)
        proxies = ProxyReconciler(informers, caches, executor, proxy_root=str(tmp_path), settings=SETTINGS)
        services = ServiceReconciler(informers, executor, settings=SETTINGS)
        runs = [follow(c) for c in (informers.services, informers.proxies, informers.statuses)]
        runs += [informers.registrations.run(), caches.run()]
        tasks = [asyncio.create_task(run) for run in runs]
        try:
            await informers.fleet.poll_once()
            await eventually(
                lambda: all(informers.synced().values()) and caches.synced, 10.0, "the caches to sync"
            )
            yield World(etcd, fleet, informers, proxies, services, queued)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def managed(port: int) -> dict[str, Any]:
    return {"kind": "nginx", "listen": f"127.0.0.1:{port}", "wait": {"min": "0s", "max": "0s"}}


async def judged_hash(world: World, kind: Kind, name: str) -> str:
    """``specHash`` of the stored spec: the sha256 of its normal form (64 hex digits)."""
    kv = await world.etcd.get(KEYS.desired(kind, name))
    assert kv is not None
    spec = parse_service(kv.value) if kind == "services" else parse_proxy(kv.value)
    digest = spec_hash(spec)
    assert len(digest) == 64 and int(digest, 16) >= 0
    return digest


async def test_the_status_names_the_spec_judged_valid_by_its_hash(world: World) -> None:
    """``specHash``: the digest of the spec judged valid at ``observedGeneration``, for both kinds,
    following a later valid revision (the reconcilers keep it per revision); emptied when a later
    revision is judged invalid (the status is otherwise kept as it was)."""
    port = free_port()
    specs: dict[str, list[dict[str, Any]]] = {
        "proxies": [
            {**managed(port), "managed": False},
            {**managed(port), "managed": False, "wait": {"min": "0s", "max": "1s"}},
        ],
        "services": [
            {"replicas": 0, "unit": {"execStart": "/bin/sleep 1"}},
            {"replicas": 0, "unit": {"execStart": "/bin/sleep 2"}},
        ],
    }
    for kind, name in (("proxies", "hashed"), ("services", "hashed-svc")):
        reconciler = world.proxies if kind == "proxies" else world.services
        seen: list[str] = []
        for spec in specs[kind]:
            await world.put(kind, name, spec)
            kv = await world.etcd.get(KEYS.desired(kind, name))
            assert kv is not None
            await eventually(
                lambda k=kind, n=name, r=kv.mod_revision: world.informers.entries[k][n].mod_revision == r,
                10.0,
                "the revision seen",
            )
            await reconciler.reconcile(name)
            status = await world.status(kind, name)
            assert status is not None and status.spec_hash == await judged_hash(world, kind, name), kind
            seen.append(status.spec_hash)
        assert seen[0] != seen[1], kind  # a new revision is hashed again
        raw = await world.etcd.get(KEYS.status(kind, name))
        assert raw is not None
        light = lightdescribe.ServiceStatus if kind == "services" else lightdescribe.ProxyStatus
        assert light(json.loads(raw.value)).spec_hash == status.spec_hash  # the CLI reads it whole
        await world.put(kind, name, {"replicas": -1})
        await eventually(
            lambda k=kind, n=name: world.informers.entries[k][n].error is not None, 10.0, "the change seen"
        )
        await reconciler.reconcile(name)
        status = await world.status(kind, name)
        kv = await world.etcd.get(KEYS.desired(kind, name))
        assert status is not None and kv is not None and status.observed_generation == kv.mod_revision
        assert status.spec_hash == "", kind


def assert_name_taken(status: ProxyStatus | ServiceStatus, by: str) -> None:
    invalid = status.condition("Invalid")
    assert invalid is not None and (invalid.status, invalid.reason) == ("True", "NameTaken"), invalid
    assert f"taken by {by}" in invalid.message


async def test_a_pass_that_acts_returns_and_the_poll_that_shows_it_comes_back(world: World) -> None:
    name, key = "nowait", "proxies/nowait"
    units = {f"{name}@1.service", f"{name}-agent@1.service"}
    await world.put("proxies", name, managed(free_port()))
    try:
        await world.proxies.reconcile(name)
        assert units <= {u.name for u in await world.fleet.list_units()}
        # returned without a poll: the snapshot cannot show the units yet, and the key says so
        assert units.isdisjoint(world.informers.fleet.snapshot.units)
        assert not world.informers.fleet.fresh_for(key)
        first = await world.status("proxies", name)
        assert isinstance(first, ProxyStatus) and first.generation == 1, first

        # a pass before that poll plans nothing in fleet (not a single call), and still reports
        await world.etcd.delete(KEYS.proxy_config(name))  # someone removed the published config
        await eventually(lambda: world.proxies.caches.published(name) is None, 10.0, "the delete seen")
        calls = world.fleet_calls()
        await world.proxies.reconcile(name)
        assert world.fleet_calls() == calls, "a pass planned from a poll older than its own writes"
        published = await world.etcd.get(KEYS.proxy_config(name))
        assert published is not None, "publishing does not wait for fleet"

        world.queued.clear()
        await world.informers.fleet.poll_once()
        assert key in world.queued, "the poll that shows the pass's actions queues the proxy again"
        assert world.informers.fleet.fresh_for(key)
        await world.proxies.reconcile(name)
        status = await world.status("proxies", name)
        assert isinstance(status, ProxyStatus)
        assert {u.name for u in status.units} == units, status.units
        assert not units - {u.name for u in await world.fleet.list_units()}, "nothing was replaced"
        events = await world.events("proxies", name)
        assert {e.kind for e in events} == {"Proxy"} and any(e.reason == "Created" for e in events)
    finally:
        for unit in units:
            with contextlib.suppress(Exception):
                await world.fleet.destroy_unit(unit)


async def test_a_deleted_proxy_is_cleaned_up_through_the_executor(world: World) -> None:
    name = "gone"
    await world.put("proxies", name, {**managed(free_port()), "managed": False})
    await world.proxies.reconcile(name)
    assert await world.etcd.get(KEYS.proxy_config(name)) is not None
    assert await world.etcd.get(KEYS.status("proxies", name)) is not None
    await world.etcd.delete(KEYS.desired("proxies", name))
    await eventually(lambda: name not in world.informers.entries["proxies"], 10.0, "the delete seen")
    await world.proxies.reconcile(name)
    assert await world.etcd.get(KEYS.proxy_config(name)) is None
    assert await world.etcd.get(KEYS.status("proxies", name)) is None


async def test_a_proxy_declared_after_a_service_of_its_name_is_refused(world: World) -> None:
    await world.put("services", "twin", {"replicas": 0, "unit": {"execStart": "/bin/sleep 1"}})
    await world.put("proxies", "twin", {**managed(free_port()), "managed": False})
    await world.proxies.reconcile("twin")
    status = await world.status("proxies", "twin")
    assert isinstance(status, ProxyStatus)
    assert_name_taken(status, "service 'twin'")
    assert await world.etcd.get(KEYS.proxy_config("twin")) is None, "a refused proxy publishes nothing"
    assert status.spec_hash == "", "a refused spec is not named as judged valid"
    await world.services.reconcile("twin")
    service = await world.status("services", "twin")
    assert isinstance(service, ServiceStatus) and service.condition("Invalid") is None
    assert service.spec_hash == await judged_hash(world, "services", "twin")
    # their events lie apart, each of its own kind
    proxy_events = await world.events("proxies", "twin")
    assert [(e.kind, e.reason) for e in proxy_events] == [("Proxy", "NameTaken")]
    assert all(e.kind == "Service" for e in await world.events("services", "twin"))


async def test_a_service_declared_after_a_proxy_of_its_name_is_refused(world: World) -> None:
    await world.put("proxies", "elder", {**managed(free_port()), "managed": False})
    await world.put("services", "elder", {"replicas": 1, "unit": {"execStart": "/bin/sleep 1"}})
    await world.services.reconcile("elder")
    status = await world.status("services", "elder")
    assert isinstance(status, ServiceStatus)
    assert_name_taken(status, "proxy 'elder'")
    assert not [u for u in await world.fleet.list_units() if u.name.startswith("elder@")]
    assert [(e.kind, e.reason) for e in await world.events("services", "elder")] == [("Service", "NameTaken")]
    assert status.spec_hash == ""
    await world.proxies.reconcile("elder")
    proxy = await world.status("proxies", "elder")
    assert isinstance(proxy, ProxyStatus) and proxy.condition("Invalid") is None
    assert proxy.spec_hash == await judged_hash(world, "proxies", "elder")
    assert await world.etcd.get(KEYS.proxy_config("elder")) is not None
    assert all(e.kind == "Proxy" for e in await world.events("proxies", "elder"))
