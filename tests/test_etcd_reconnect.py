"""A client finds a restarted etcd again by itself, within its capped reconnect back-off.

The timings are pinned by value (gRPC's defaults, 1 s growing to 120 s, would find an etcd back after
a minute away up to two minutes later); the behaviour against a real etcd stopped and started again
on the same port: the same client, never reopened, answers again, and :meth:`Etcd.reconnected`
returns when it does (what the watch and election retry loops wait on) and not while connected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
import pytest

from fleetop.config import settings_from
from fleetop.errors import EtcdUnavailable
from fleetop.etcd import rpc
from fleetop.etcd.client import Etcd
from fleetop.etcd.model import RECONNECT_CAP
from fleetop.etcd.watch import retry_pause
from fleetop.local.etcdserver import EtcdServer


@pytest.fixture
async def client(own_etcd: EtcdServer) -> AsyncIterator[Etcd]:
    settings = settings_from({"endpoints": own_etcd.endpoint, "command_timeout": "2s"}, {})
    async with await Etcd.connect(settings) as etcd:
        yield etcd


async def test_the_channel_reconnects_within_half_a_second_and_waits_out_a_starting_etcd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    real = grpc.aio.insecure_channel

    def capture(target: str, options: list[tuple[str, Any]]) -> Any:
        seen.update(options)
        return real(target, options=options)

    monkeypatch.setattr(grpc.aio, "insecure_channel", capture)
    channel = await rpc.open_channel(settings_from({"endpoints": "127.0.0.1:2379"}, {}))
    await channel.close()
    assert seen["grpc.initial_reconnect_backoff_ms"] == 100
    assert seen["grpc.max_reconnect_backoff_ms"] == 500 <= RECONNECT_CAP * 1000
    # gRPC's "min reconnect backoff" is the shortest a connection attempt may take before it fails:
    # long enough to wait for a restarted etcd's election (it accepts, then answers 1-2 s later)
    assert seen["grpc.min_reconnect_backoff_ms"] == 3_000
    assert RECONNECT_CAP == 0.5  # fleetop's own retry loops (watch, relist, election) pause at most this


async def test_a_client_finds_a_restarted_etcd_by_itself(own_etcd: EtcdServer, client: Etcd) -> None:
    await client.put("/before", "1")
    own_etcd.stop()
    with pytest.raises(EtcdUnavailable):
        await client.get("/before")
    back = asyncio.create_task(client.reconnected())
    await asyncio.sleep(1.0)  # several reconnect attempts fail meanwhile
    assert not back.done()
    await asyncio.to_thread(own_etcd.start)
    await asyncio.wait_for(back, 30)  # bounded only so that a broken client fails instead of hanging
    await client.put("/after", "2")  # the same client, never reopened
    stored = await client.get("/before")
    assert stored is not None and stored.value == b"1"


async def test_reconnected_does_not_return_while_connected(client: Etcd) -> None:
    await client.status()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reconnected(), 0.5)
    pause = asyncio.create_task(retry_pause(client, 30))  # connected all along: the whole delay
    await asyncio.sleep(0.5)
    assert not pause.done()
    pause.cancel()
