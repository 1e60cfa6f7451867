"""A bad backend never blocks the others, end to end: real etcd, ``fleetop node`` with sidekicks in
front of ``python3 -m http.server``, the operator (in this process, so its resolver can be a stub),
a real nginx and the proxy agent, real HTTP through it.

The routed ``ext`` service has three hand-written registrations: a name that does not resolve (which
would fail ``nginx -t`` for the whole config if it reached it), a name that resolves to a loopback
backend, and an address outside the proxy's ``allowedNetworks``. The first and the last are left out
and reported; requests reach the named backend and the ``hello`` instances, and a later scale-up of
``hello`` still arrives in nginx. The resolver is a stub that fails for every name it does not know:
nothing here queries real DNS, and every backend is on 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from ophelpers import Node, http_service

from backends import agent_running, fetch, http_backends, wait_port
from fleetop.config import EtcdSettings
from fleetop.controller.operator import build_manager
from fleetop.controller.runtime.leader import LeaderTimings
from fleetop.controller.runtime.settings import (
    FleetSettings,
    MetricsSettings,
    OperatorSettings,
    ProxySettings,
)
from fleetop.discovery.addresses import Registration
from fleetop.discovery.resolve import LookupFailed, Resolver
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer, free_port
from fleetop.models import AgentStatus, ProxyStatus, PublishedConfig
from fleetop.proxy.agent import AgentSettings
from fleetop.proxy.apply import ProxyProcess, initial_config, start_proxy
from fleetop.proxy.render import RenderPaths
from waiting import eventually

PREFIX = f"/t/resolved-{random.randrange(1 << 30)}"
KEYS = Keys()
BASE = random.randrange(40000, 49000, 10)
PROXY = "dns-edge"


class StubDns:
    """``good.test`` → the named backend's loopback address; every other name fails."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, name: str) -> Sequence[str]:
        self.asked.append(name)
        if name not in self.table:
            raise LookupFailed("Name or service not known")
        return self.table[name]


def edge(port: int) -> bytes:
    body = {
        "kind": "nginx",
        "listen": f"127.0.0.1:{port}",
        "managed": False,
        "routes": [{"service": "hello"}, {"service": "ext", "host": "ext.test"}],
        "headers": {"handler": True},
        "wait": {"min": "0s", "max": "0s"},
        "allowedNetworks": ["127.0.0.0/24", "127.0.1.0/24", "::1/128"],
    }
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def node_etcd(etcd_server: EtcdServer) -> str:
    """The node's units find the session's etcd (the sidekicks register there)."""
    return etcd_server.endpoint


@pytest.fixture
def named_backend(tmp_path: Path) -> Iterator[Registration]:
    with http_backends(["127.0.0.6"], tmp_path) as regs:
        yield regs[0]


@pytest.fixture
def moved_backend(named_backend: Registration, tmp_path: Path) -> Iterator[str]:
    """Where ``good.test`` moves to later: 127.0.0.7 on the same port."""
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.7", "--directory", str(tmp_path)]
    proc = subprocess.Popen(
        [*argv, str(named_backend.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.7", named_backend.port)
        yield f"127.0.0.7:{named_backend.port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def operator(etcd_endpoint: str, fleet: str, root: Path, resolver: Resolver) -> AsyncIterator[None]:
    config = OperatorSettings(
        etcd=EtcdSettings(endpoints=(etcd_endpoint,), prefix=PREFIX),
        fleet=FleetSettings(endpoint=fleet),
        leader=LeaderTimings(lease_duration=4, renew_deadline=2, retry_period=0.5),
        metrics=MetricsSettings(None),
        identity="resolved-test",
        proxies=ProxySettings(root=str(root)),
    )
    manager = build_manager(config, resolver=resolver)
    task = asyncio.create_task(manager.run())
    try:
        yield
    finally:
        manager.request_stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


@contextlib.asynccontextmanager
async def nginx_with_agent(etcd: Etcd, root: Path, port: int) -> AsyncIterator[None]:
    paths = RenderPaths(str(root / PROXY))
    target = root / PROXY / "nginx.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(initial_config(PROXY, "nginx", f"127.0.0.1:{port}", paths))
    process: ProxyProcess = start_proxy("nginx", target, paths, listen=("127.0.0.1", port))
    settings = AgentSettings(
        proxy=PROXY, machine="m1", runtime_dir=target.parent, config_path=target, retry_min=0.05
    )
    try:
        async with agent_running(etcd, settings):
            yield
    finally:
        process.stop()


async def handlers(port: int, host: str | None = None, requests: int = 40) -> set[str]:
    seen = set()
    for _ in range(requests):
        with contextlib.suppress(OSError):
            status, handler = await asyncio.to_thread(fetch, port, "/", host)
            if status == 200:
                seen.add(handler)
    return seen


async def registered(etcd: Etcd) -> set[str]:
    kvs, _ = await etcd.list("/services/hello/")
    return {kv.value.decode() for kv in kvs}


async def test_an_unresolvable_backend_is_left_out_and_the_others_keep_flowing(
    etcd_server: EtcdServer, node: Node, named_backend: Registration, moved_backend: str, tmp_path: Path
) -> None:
    dns = StubDns({"good.test": [named_backend.host]})
    resolver = Resolver(dns, ttl=2, negative_ttl=1)
    port = free_port("127.0.0.1")
    named = f"{named_backend.host}:{named_backend.port}"
    root = tmp_path / "proxies"
    async with await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=PREFIX)) as etcd:
        try:
            await etcd.put("/services/ext/bad", b"no-such-host.invalid:80")
            await etcd.put("/services/ext/named", f"good.test:{named_backend.port}".encode())
            await etcd.put("/services/ext/far", f"127.0.2.1:{named_backend.port}".encode())
            await etcd.put(KEYS.desired("services", "hello"), http_service(2, BASE))
            await etcd.put(KEYS.desired("proxies", PROXY), edge(port))
            async with operator(etcd_server.endpoint, node.endpoint, root, resolver):
                try:
                    async with nginx_with_agent(etcd, root, port):
                        await scenario(etcd, port, named, dns)
                        await dns_moves(port, dns, moved_backend)
                finally:  # the operator destroys hello's units while it still runs
                    await etcd.delete(KEYS.desired("proxies", PROXY))
                    await etcd.delete(KEYS.desired("services", "hello"))
                    await cleanup(etcd)
        finally:
            await etcd.delete_prefix("/services/ext/")


async def scenario(etcd: Etcd, port: int, named: str, dns: StubDns) -> None:
    """Every good backend serves, the bad ones are reported, and a scale-up arrives."""

    async def two_instances_and_the_named_one() -> bool:
        instances = await registered(etcd)
        return (
            len(instances) == 2
            and await handlers(port) == instances
            and await handlers(port, "ext.test", 5) == {named}
        )

    await eventually(two_instances_and_the_named_one, 120, "requests to reach every good backend")
    status = await proxy_status(etcd)
    assert status is not None and status.skipped_registrations == 2, status
    body = await published_body(etcd)
    assert "no-such-host" not in body and "good.test" not in body and "127.0.2.1" not in body
    assert f"server {named};" in body
    events, _ = await etcd.list(KEYS.events("proxies", PROXY))
    messages = [json.loads(kv.value)["message"] for kv in events]
    assert any("no-such-host.invalid does not resolve" in m for m in messages), messages
    assert any("127.0.2.1" in m and "outside the allowed networks" in m for m in messages), messages

    await etcd.put(KEYS.desired("services", "hello"), http_service(3, BASE))

    async def three_instances() -> bool:
        instances = await registered(etcd)
        return len(instances) == 3 and await handlers(port, requests=60) == instances

    await eventually(three_instances, 120, "the scale-up's new instance to serve through nginx")
    agent = await agent_status(etcd)
    assert agent is not None and agent.error is None and agent.dropped_backends == []
    assert set(dns.asked) == {"good.test", "no-such-host.invalid"}


async def dns_moves(port: int, dns: StubDns, moved: str) -> None:
    """A changed answer is followed within the resolver's TTL (2 s here), without a registration change."""
    dns.table["good.test"] = [moved.partition(":")[0]]

    async def followed() -> bool:
        return await handlers(port, "ext.test", 10) == {moved}

    await eventually(followed, 60, "requests for ext.test to reach good.test's new address")


async def cleanup(etcd: Etcd) -> None:
    """Wait until the sidekicks deregistered (the operator destroyed the units before it stopped, or
    the leases expire): nothing of this test is left registered."""
    with contextlib.suppress(AssertionError):
        await eventually(lambda: _none_left(etcd), 30, "hello's registrations to go")


async def _none_left(etcd: Etcd) -> bool:
    return not await registered(etcd)


async def proxy_status(etcd: Etcd) -> ProxyStatus | None:
    kv = await etcd.get(KEYS.status("proxies", PROXY))
    return None if kv is None else ProxyStatus.model_validate_json(kv.value)


async def agent_status(etcd: Etcd) -> AgentStatus | None:
    kv = await etcd.get(KEYS.agent_status(PROXY, "m1"))
    return None if kv is None else AgentStatus.model_validate_json(kv.value)


async def published_body(etcd: Etcd) -> str:
    kv = await etcd.get(KEYS.proxy_config(PROXY))
    return "" if kv is None else PublishedConfig.model_validate_json(kv.value).body
