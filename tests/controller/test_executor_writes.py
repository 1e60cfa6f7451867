"""The executor's one write-if-changed, against a real etcd: what it returns (written, unchanged,
deleted), what it counts in ``fleetop_writes_total{what,result}``, fencing, and what "stored" means
while an informer's cache lags one watch event behind this process's own writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import cast

import pytest

from fleetop.config import EtcdSettings
from fleetop.controller.runtime.contain import FailureReporter
from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.metrics import OperatorMetrics
from fleetop.errors import FleetAPIError, NotLeader
from fleetop.etcd.client import Etcd, KeyValue
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import Event, ProxyStatus, PublishedConfig, ServiceStatus
from fleetop.prefixes import PrefixCache, follow
from fleetop.proxy.published import encode_published
from waiting import eventually

KEYS = Keys()
FENCE = (KEYS.leader(), b"me")
EDGE = ObjectRef("proxies", "edge")
WEB = ObjectRef("services", "web")


class Frozen:
    """A cache that never sees anything after it was made: the worst lag a cache can have."""

    def __init__(self, items: dict[str, KeyValue] | None = None, revision: int = 0) -> None:
        self.items = items or {}
        self.revision = revision

    def get(self, key: str) -> KeyValue | None:
        return self.items.get(key)


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(
        EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    ) as client:
        await client.put(*FENCE)
        yield client


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics()


@pytest.fixture
def executor(etcd: Etcd, metrics: OperatorMetrics) -> Executor:
    # writes to etcd only: no fleet call is made, so no fleet client is needed
    return Executor(cast(FleetClient, None), etcd, KEYS, lambda: FENCE, metrics=metrics)


def count(metrics: OperatorMetrics, what: str, result: str) -> float:
    value = metrics.registry.get_sample_value("fleetop_writes_total", {"what": what, "result": result})
    return value or 0.0


@contextlib.asynccontextmanager
async def following(etcd: Etcd, prefix: str) -> AsyncIterator[PrefixCache]:
    cache = PrefixCache(etcd, prefix, lambda changed: None)
    task = asyncio.create_task(follow(cache))
    try:
        await eventually(cache.synced.is_set, 10.0, f"the cache of {prefix} to sync")
        yield cache
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_each_outcome_is_returned_and_counted(
    etcd: Etcd, executor: Executor, metrics: OperatorMetrics
) -> None:
    key = KEYS.status("proxies", "edge")
    cache = Frozen()
    assert await executor.write_if_changed("status", key, b'{"a": 1, "b": [2]}', cache) == "written"
    # the cache never saw that write: what is stored is this process's own write, so nothing to do
    assert await executor.write_if_changed("status", key, b'{"b":[2],"a":1}', cache) == "unchanged"
    assert await executor.write_if_changed("status", key, b'{"a": 2, "b": [2]}', cache) == "written"
    stored = await etcd.get(key)
    assert stored is not None and json.loads(stored.value) == {"a": 2, "b": [2]}
    assert await executor.write_if_changed("status", key, None, cache) == "deleted"
    assert await etcd.get(key) is None
    assert await executor.write_if_changed("status", key, None, cache) == "unchanged"
    assert (count(metrics, "status", "written"), count(metrics, "status", "unchanged")) == (2, 2)
    assert count(metrics, "status", "deleted") == 1


async def test_a_write_someone_else_made_is_seen_once_the_cache_shows_it(
    etcd: Etcd, executor: Executor
) -> None:
    key = KEYS.status("services", "web")
    async with following(etcd, KEYS.status("services")) as cache:
        assert await executor.write_if_changed("status", key, b'{"v":1}', cache) == "written"
        await eventually(lambda: cache.get(key) is not None, 10.0, "the cache to show the write")
        assert await executor.write_if_changed("status", key, b'{"v":1}', cache) == "unchanged"
        await etcd.put(key, b'{"v":"theirs"}')  # not this process's write
        await eventually(lambda: executor.stored(key, cache) == b'{"v":"theirs"}', 10.0, "their value")
        assert await executor.write_if_changed("status", key, b'{"v":1}', cache) == "written"
        await etcd.delete(key)  # deleted behind our back: written again once the cache shows it
        await eventually(lambda: executor.stored(key, cache) is None, 10.0, "the delete")
        assert await executor.write_if_changed("status", key, b'{"v":1}', cache) == "written"


async def test_a_delete_is_remembered_while_the_cache_still_shows_the_value(
    etcd: Etcd, executor: Executor
) -> None:
    key = KEYS.proxy_config("edge")
    await etcd.put(key, b'{"hash":"h1"}')
    cache = Frozen({key: cast(KeyValue, await etcd.get(key))}, revision=1 << 40)
    assert await executor.publish("edge", None, cache) == "deleted"
    assert executor.stored(key, cache) is None, "the cache's value is the one this process deleted"
    assert await executor.publish("edge", None, cache) == "unchanged"


async def test_a_config_is_compared_by_hash(executor: Executor, metrics: OperatorMetrics) -> None:
    def body(generation: int, digest: str) -> bytes:
        return encode_published(
            PublishedConfig(hash=digest, generation=generation, kind="nginx", body=f"# {digest}\n")
        )

    cache = Frozen()
    assert await executor.publish("edge", body(1, "h1"), cache) == "written"
    assert await executor.publish("edge", body(2, "h1"), cache) == "unchanged", "same config, next generation"
    assert await executor.publish("edge", body(2, "h2"), cache) == "written"
    assert (count(metrics, "config", "written"), count(metrics, "config", "unchanged")) == (2, 1)


async def test_a_write_refused_by_the_fence_is_counted_and_raised(
    etcd: Etcd, metrics: OperatorMetrics
) -> None:
    deposed = Executor(
        cast(FleetClient, None), etcd, KEYS, lambda: (KEYS.leader(), b"someone-else"), metrics=metrics
    )
    key = KEYS.status("proxies", "edge")
    with pytest.raises(NotLeader):
        await deposed.write_if_changed("status", key, b"{}", Frozen())
    assert await etcd.get(key) is None
    assert count(metrics, "status", "fenced") == 1 and count(metrics, "status", "written") == 0


async def test_status_of_either_kind_goes_through_it(etcd: Etcd, executor: Executor) -> None:
    proxies, services = Frozen(), Frozen()
    assert await executor.write_status(EDGE, ProxyStatus(config_hash="h1"), proxies) == "written"
    assert await executor.write_status(EDGE, ProxyStatus(config_hash="h1"), proxies) == "unchanged"
    status = ServiceStatus(observed_generation=3)
    assert await executor.write_status(WEB, status, services) == "written"
    # stamped with the time generation 3 was first reported: kept, so nothing changed
    assert await executor.write_status(WEB, status, services) == "unchanged"
    raw = await etcd.get(KEYS.status("services", "web"))
    assert raw is not None and json.loads(raw.value)["observedGenerationTime"]
    assert await executor.write_status(EDGE, None, proxies) == "deleted"
    assert await etcd.get(KEYS.status("proxies", "edge")) is None


async def test_the_failure_reporter_writes_through_it(
    etcd: Etcd, executor: Executor, metrics: OperatorMetrics
) -> None:
    """A terminal error on a proxy: Degraded (not retried) on its status, kept otherwise, and a Proxy
    event; the status write is the executor's, read from etcd at once (not from a cache)."""
    before = ProxyStatus(observed_generation=4, config_hash="h1")
    await etcd.put(KEYS.status("proxies", "edge"), before.model_dump_json(by_alias=True).encode())
    reporter = FailureReporter(executor)
    await reporter.report("proxies", "edge", FleetAPIError(400, "bad unit"))
    raw = await etcd.get(KEYS.status("proxies", "edge"))
    assert raw is not None
    status = ProxyStatus.model_validate_json(raw.value)
    degraded = status.condition("Degraded")
    assert degraded is not None and degraded.reason == "ReconcileFailed"
    assert "not retried" in degraded.message and status.config_hash == "h1"
    assert count(metrics, "status", "written") == 1
    await reporter.report("proxies", "edge", FleetAPIError(400, "bad unit"))
    assert count(metrics, "status", "unchanged") == 1, "the same report twice is one write"
    items, _ = await etcd.list(KEYS.events("proxies", "edge"))
    events = [Event.model_validate_json(kv.value) for kv in items]
    assert [(e.kind, e.reason, e.count) for e in events] == [("Proxy", "ReconcileFailed", 2)]
