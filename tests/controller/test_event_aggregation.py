"""Events aggregate like Kubernetes': a repeat of one of a service's recent events (same type, reason and
message) bumps that event's count instead of adding a key, even when other events came in between, as
they do in a crash loop (Created, BackOff, Destroyed, Created, ...). Against a real etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest

from fleetop.config import EtcdSettings
from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.executor import RECENT_EVENTS, Executor
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import Event

KEYS = Keys()
FENCE = ("/fleetop/leader", b"test-leader")
WEB, API = ObjectRef("services", "web"), ObjectRef("services", "api")


@pytest.fixture
async def executor(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Executor]:
    settings = EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    async with await Etcd.connect(settings) as etcd:
        await etcd.put(*FENCE)
        # records events only: no fleet call is made, so no fleet client is needed
        yield Executor(cast(FleetClient, None), etcd, KEYS, lambda: FENCE)


async def _stored(executor: Executor, service: str) -> list[Event]:
    items, _ = await executor.etcd.list(KEYS.events("services", service))
    return [Event.model_validate_json(kv.value) for kv in items]


async def _events(executor: Executor, service: str) -> dict[tuple[str, str, str], int]:
    found = await _stored(executor, service)
    assert len(found) == len({(e.type, e.reason, e.message) for e in found}), "one key per aggregate"
    return {(e.type, e.reason, e.message): e.count for e in found}


async def test_a_crash_loop_is_a_few_events_with_counts(executor: Executor) -> None:
    for _ in range(4):
        await executor.record(WEB, "Created", "Created web@8001.service")
        await executor.record(WEB, "BackOff", "Back-off restarting failed web@8001.service", warning=True)
        await executor.record(WEB, "Destroyed", "Destroyed web@8001.service (failed)")
    assert await _events(executor, "web") == {
        ("Normal", "Created", "Created web@8001.service"): 4,
        ("Warning", "BackOff", "Back-off restarting failed web@8001.service"): 4,
        ("Normal", "Destroyed", "Destroyed web@8001.service (failed)"): 4,
    }


async def test_type_and_service_keep_events_apart(executor: Executor) -> None:
    await executor.record(WEB, "Failed", "create web@1.service: refused")
    await executor.record(WEB, "Failed", "create web@1.service: refused", warning=True)
    await executor.record(API, "Failed", "create web@1.service: refused")
    assert len(await _events(executor, "web")) == 2
    assert len(await _events(executor, "api")) == 1


async def test_only_recent_events_aggregate(executor: Executor) -> None:
    await executor.record(WEB, "Scaled", "first")
    for index in range(RECENT_EVENTS):
        await executor.record(WEB, "Scaled", f"other {index}")
    await executor.record(WEB, "Scaled", "first")
    stored = await _stored(executor, "web")
    assert len(stored) == RECENT_EVENTS + 2, "the oldest was forgotten, so its repeat is a new event"
    assert all(e.count == 1 for e in stored)
