"""Bounded work per key, end to end: real etcd, ``fleetop node --machines 3`` and ``fleetop run``.

* a custom template that would loop for hours gets ``RenderFailed`` at its time limit while the
  leader keeps its lease, ``/healthz`` answers and another service's scale change is applied;
* a large creation is stopped by deleting its spec: the units never grow past what existed at the
  delete plus one batch, and then all go;
* specs over the per-service and the cluster-wide ceilings are refused with ``Invalid`` and a Warning
  event, and nothing runs for them; room made by a scale-down admits the refused one.

Each test runs its own operator (its own key root and settings) on the module's node.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from ophelpers import Node, Operator, events_of, owned_mains, running_mains, spec, status_of

from fleetop.config import EtcdSettings
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.http import HttpSession, Timeouts
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer, free_port
from fleetop.models import ProxyStatus, ServiceStatus
from waiting import eventually

KEYS = Keys()
CONVERGE = 60.0
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"

Start = Callable[[str, list[str]], Operator]


@pytest.fixture
def start_operator(
    node: Node, etcd_server: EtcdServer, tmp_path: Path
) -> Iterator[Callable[[str, list[str]], Operator]]:
    started: list[Operator] = []

    def start(prefix: str, args: list[str]) -> Operator:
        proc = Operator(
            tmp_path, "bounded", etcd_server.endpoint, prefix, node.endpoint, extra_args=tuple(args)
        )
        started.append(proc.start())
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


async def connect(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=prefix)) as client:
        yield client


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/t/bounded-{os.getpid()}-{request.node.name.replace('_', '-')}"


@pytest.fixture
async def etcd(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Etcd]:
    async for client in connect(etcd_server, prefix):
        yield client


async def count_mains(fleet: FleetClient, name: str) -> int:
    return len(owned_mains(await fleet.list_units(), name))


async def running(fleet: FleetClient, name: str, replicas: int) -> bool:
    mains = await count_mains(fleet, name)
    return mains == replicas and len(await running_mains(fleet, name)) == replicas


async def test_slow_custom_template_fails_alone(
    etcd: Etcd, fleet: FleetClient, start_operator: Start, prefix: str
) -> None:
    operator = start_operator(prefix, ["--render-timeout", "8"])
    await etcd.put(KEYS.desired("services", "steady"), spec(1))
    await eventually(lambda: running(fleet, "steady", 1), CONVERGE, "steady to run 1 instance")
    leader = await etcd.get(KEYS.leader())
    assert leader is not None
    port = free_port()
    proxy = {
        "kind": "nginx",
        "listen": f"127.0.0.1:{port}",
        "managed": False,
        "routes": [{"service": "steady"}],
        "template": NESTED,
    }
    await etcd.put(KEYS.desired("proxies", "slowtpl"), json.dumps(proxy).encode())
    await etcd.put(KEYS.desired("services", "steady"), spec(3))  # while the template renders

    health: list[int] = []

    async def sample_health() -> None:
        url = f"http://127.0.0.1:{operator.metrics_port}"
        async with HttpSession(url, timeouts=Timeouts.uniform(2.0)) as http:
            while True:
                try:
                    health.append((await http.request("GET", "/healthz")).status)
                except Exception:  # a timeout is what this test is looking for
                    health.append(0)
                await asyncio.sleep(0.25)

    async def render_failed() -> ProxyStatus | None:
        kv = await etcd.get(KEYS.status("proxies", "slowtpl"))
        status = None if kv is None else ProxyStatus.model_validate_json(kv.value)
        degraded = status.condition("Degraded") if status is not None else None
        return status if degraded is not None and degraded.reason == "RenderFailed" else None

    sampler = asyncio.create_task(sample_health())
    try:
        await eventually(lambda: running(fleet, "steady", 3), CONVERGE, "steady to scale to 3")
        status = await eventually(render_failed, CONVERGE, "RenderFailed on slowtpl")
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    try:
        degraded = status.condition("Degraded")
        assert degraded is not None and "longer than 8s" in degraded.message
        assert "--render-timeout" in degraded.message
        assert any(
            e.reason == "RenderFailed" and e.type == "Warning"
            for e in await events_of(etcd, "slowtpl", "proxies")
        )
        assert await etcd.get(KEYS.proxy_config("slowtpl")) is None  # nothing published
        after = await etcd.get(KEYS.leader())
        assert after is not None and after.create_revision == leader.create_revision  # never lost its lease
        assert health and all(code == 200 for code in health), health
        assert operator.running
    except AssertionError:
        print(operator.log_tail())
        raise
    await etcd.delete(KEYS.desired("proxies", "slowtpl"))
    await etcd.delete(KEYS.desired("services", "steady"))
    await eventually(lambda: running(fleet, "steady", 0), CONVERGE, "steady to be gone")


@pytest.mark.parametrize("change", ["delete", "scale-down"])
async def test_deleting_or_scaling_down_a_large_spec_stops_its_creation(
    etcd: Etcd, fleet: FleetClient, start_operator: Start, prefix: str, change: str
) -> None:
    batch = 5
    operator = start_operator(prefix, ["--batch-size", str(batch)])
    key = KEYS.desired("services", "many")
    await etcd.put(key, spec(60))

    async def some_created() -> int:
        found = await count_mains(fleet, "many")
        return found if found >= 10 else 0

    await eventually(some_created, CONVERGE, "the first batches of many")
    if change == "delete":
        await etcd.delete(key)
    else:
        await etcd.put(key, spec(2))
    at_change = await count_mains(fleet, "many")
    assert at_change < 60  # the change came in the middle of the creation
    target = 0 if change == "delete" else 2
    seen: list[int] = []

    async def settled() -> bool:
        seen.append(await count_mains(fleet, "many"))
        return seen[-1] == target

    try:
        await eventually(settled, CONVERGE, f"many to settle at {target} units", every=0.05)
        assert max(seen) <= at_change + batch, (at_change, seen)
        if change == "scale-down":
            await eventually(lambda: running(fleet, "many", 2), CONVERGE, "many to run 2")
    except AssertionError:
        print(operator.log_tail())
        raise
    await etcd.delete(key)
    await eventually(lambda: running(fleet, "many", 0), CONVERGE, "many to be gone")


async def test_ceilings_refuse_specs_with_a_reason(
    etcd: Etcd, fleet: FleetClient, start_operator: Start, prefix: str
) -> None:
    operator = start_operator(prefix, ["--max-instances-per-service", "4", "--max-instances", "6"])

    async def refused(name: str, reason: str) -> ServiceStatus | None:
        status = await status_of(etcd, name)
        invalid = status.condition("Invalid") if status is not None else None
        return (
            status if invalid is not None and invalid.status == "True" and invalid.reason == reason else None
        )

    try:
        await etcd.put(KEYS.desired("services", "huge"), spec(5))
        status = await eventually(lambda: refused("huge", "ServiceInstanceCeiling"), CONVERGE, "huge refused")
        assert "replicas 5 exceeds the ceiling of 4" in (status.last_error or "")
        assert "--max-instances-per-service" in (status.last_error or "")
        assert [e.type for e in await events_of(etcd, "huge") if e.reason == "ServiceInstanceCeiling"] == [
            "Warning"
        ]

        await etcd.put(KEYS.desired("services", "first"), spec(3))
        await eventually(lambda: running(fleet, "first", 3), CONVERGE, "first to run 3")
        await etcd.put(KEYS.desired("services", "second"), spec(4))
        status = await eventually(
            lambda: refused("second", "ClusterInstanceCeiling"), CONVERGE, "second refused"
        )
        assert "over the ceiling of 6" in (status.last_error or "") and "--max-instances" in (
            status.last_error or ""
        )
        assert any(e.reason == "ClusterInstanceCeiling" for e in await events_of(etcd, "second"))
        assert await count_mains(fleet, "second") == 0 and await count_mains(fleet, "huge") == 0

        await etcd.put(KEYS.desired("services", "first"), spec(1))  # makes room: second is admitted
        await eventually(lambda: running(fleet, "second", 4), CONVERGE, "second to run 4 once admitted")
        await eventually(lambda: running(fleet, "first", 1), CONVERGE, "first to run 1")
        admitted = await status_of(etcd, "second")
        assert admitted is not None and admitted.condition("Invalid") is None
    except AssertionError:
        print(operator.log_tail())
        raise
    for name in ("huge", "first", "second"):
        await etcd.delete(KEYS.desired("services", name))
    for name in ("first", "second"):
        await eventually(lambda n=name: running(fleet, n, 0), CONVERGE, f"{name} to be gone")
