"""HAProxy without reloads, end to end: etcd, ``fleetop node``, ``fleetop run``, a managed HAProxy unit
with its agent unit, and HTTP backends registered and deregistered by writing their keys.

Under a steady stream of requests, backends come and go; every change must reach HAProxy at runtime
(no reload), ``show servers state`` must equal the servers of the published config after each one,
and no request may fail. Then HAProxy is killed: its unit restarts it from the installed file, which
holds the same servers, and the next changes again go through at runtime.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ehelpers import Stack, eventually

from backends import Load, fetch, handlers_seen, http_backends
from fleetop.discovery.addresses import Registration
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import free_port
from fleetop.models import AgentStatus, PublishedConfig
from fleetop.proxy.apply import pid_file_of
from fleetop.proxy.haproxy_runtime import RuntimeAPI, RuntimeAPIError, admin_socket_of
from fleetop.proxy.haproxy_servers import mismatch, parse_config

pytestmark = pytest.mark.slow
KEYS = Keys()
PROXY = "rt"
SERVICE = "rtweb"
CONVERGE = 90.0


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[list[Registration]]:
    with http_backends(("127.0.2.1", "127.0.2.2", "127.0.2.3"), tmp_path) as regs:
        yield regs


async def published(etcd: Etcd) -> PublishedConfig | None:
    kv = await etcd.get(KEYS.proxy_config(PROXY))
    return None if kv is None else PublishedConfig.model_validate_json(kv.value)


async def agent(etcd: Etcd) -> AgentStatus | None:
    items, _ = await etcd.list(KEYS.agent_status(PROXY, ""))
    return AgentStatus.model_validate_json(items[0].value) if items else None


async def register(etcd: Etcd, backends: list[Registration]) -> None:
    """Make the service's registrations exactly ``backends`` (puts and deletes, like sidekicks)."""
    items, _ = await etcd.list(f"/services/{SERVICE}/")
    want = {f"/services/{SERVICE}/{b.host}-{b.port}": b.address for b in backends}
    for kv in items:
        if kv.key not in want:
            await etcd.delete(kv.key)
    for key, address in want.items():
        await etcd.put(key, address)


async def settled(etcd: Etcd, backends: list[Registration]) -> tuple[PublishedConfig, AgentStatus]:
    """Wait until the published config names exactly ``backends`` and the agent applied it."""
    want = {b.address for b in backends}

    async def done() -> tuple[PublishedConfig, AgentStatus] | None:
        config, status = await published(etcd), await agent(etcd)
        if config is None or status is None or status.applied_hash != config.hash:
            return None
        servers = parse_config(config.body).servers().get(f"svc_{SERVICE}", {})
        return (config, status) if {s.address for s in servers.values()} == want else None

    found: tuple[PublishedConfig, AgentStatus] = await eventually(done, CONVERGE, f"{sorted(want)} applied")
    return found


async def holds(config: PublishedConfig) -> None:
    """``show servers state`` equals the config's servers (a removed one may take a moment to drain)."""
    socket_path = admin_socket_of(config.body)
    assert socket_path is not None
    want = parse_config(config.body).servers()

    async def same() -> str | bool:
        try:
            wrong = mismatch(want, await RuntimeAPI(socket_path).servers())
        except RuntimeAPIError as exc:
            return not str(exc)
        return wrong == ""

    await eventually(same, 30, "show servers state equal to the published servers", every=0.05)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rpartition(b")")[2].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = _parent(pid)
        if pid == ancestor:
            return True
    return False


async def change(etcd: Etcd, port: int, backends: list[Registration]) -> AgentStatus:
    await register(etcd, backends)
    config, status = await settled(etcd, backends)
    assert status.applied_via == "runtime", status
    await holds(config)
    want = {b.address for b in backends}
    assert await handlers_seen(port, want) == want
    return status


async def test_backends_come_and_go_without_reloads_and_survive_a_kill(
    stack: Stack, etcd: Etcd, pool: list[Registration]
) -> None:
    a, b, c = pool
    port = free_port()
    await register(etcd, [a])
    spec = {"kind": "haproxy", "listen": f"127.0.0.1:{port}", "routes": [{"service": SERVICE}]}
    await etcd.put(f"/desired/proxies/{PROXY}", json.dumps({**spec, "headers": {"handler": True}}).encode())
    try:
        config, status = await settled(etcd, [a])
        await eventually(lambda: _serves(port, {a.address}), CONVERGE, "the proxy serving")
        reloads = status.reloads

        with Load(port, interval=0.01) as load:
            for backends in ([a, b], [b], [a, b, c], [c], [a, c]):
                status = await change(etcd, port, backends)
                await load.more(30)
        print(f"\n{load.sent} requests during 5 changes, {len(load.failures)} failed")
        assert load.failures == [], load.failures[:10]
        assert status.reloads == reloads and status.runtime_fallbacks == 0

        config, _ = await settled(etcd, [a, c])
        pid_file = pid_file_of("haproxy", config.body)
        assert pid_file is not None
        master = int(pid_file.read_text().split()[0])
        assert descends_from(master, stack.node.pid), "HAProxy is not the one the node started for us"
        os.kill(master, signal.SIGKILL)

        async def restarted() -> bool:
            text = await asyncio.to_thread(_read, pid_file)
            return bool(text) and text != str(master)

        await eventually(restarted, CONVERGE, "the proxy unit restarting HAProxy")
        await holds(config)  # the installed file holds the servers HAProxy had at runtime
        await eventually(lambda: _serves(port, {a.address, c.address}), CONVERGE, "serving after restart")

        await settled(etcd, [a, c])  # the agent (restarted with its unit or not) is on the newest
        with Load(port, interval=0.01) as load:
            for backends in ([b, c], [a]):
                status = await change(etcd, port, backends)
                await load.more(30)
        assert load.failures == [], load.failures[:10]
    except AssertionError:
        print(stack.log_tail("operator"))
        raise
    finally:
        await etcd.delete(f"/desired/proxies/{PROXY}")
        await register(etcd, [])


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


async def _serves(port: int, want: set[str]) -> bool:
    try:
        return await handlers_seen(port, want, attempts=50) == want
    except OSError:
        return False


async def test_a_service_without_backends_gets_its_first_one_at_runtime(
    stack: Stack, etcd: Etcd, pool: list[Registration]
) -> None:
    """A routed service with no registration is rendered as an empty backend, which HAProxy answers
    with 503 (as nginx's route answers 503 without an upstream); its first backend is then an
    ``add server`` over the admin socket, and so is its last one leaving: no reload either way."""
    a, b, _ = pool
    port = free_port()
    await register(etcd, [])
    spec = {"kind": "haproxy", "listen": f"127.0.0.1:{port}", "routes": [{"service": SERVICE}]}
    await etcd.put(f"/desired/proxies/{PROXY}", json.dumps({**spec, "headers": {"handler": True}}).encode())
    try:
        config, status = await settled(etcd, [])
        assert f"backend svc_{SERVICE}" in config.body
        await eventually(lambda: _answers(port, 503), CONVERGE, "503 from the empty backend")
        reloads = status.reloads

        status = await change(etcd, port, [a])  # 0 → 1
        status = await change(etcd, port, [])  # 1 → 0
        await eventually(lambda: _answers(port, 503), CONVERGE, "503 once the backend is empty again")
        status = await change(etcd, port, [b])  # 0 → 1 again
        assert status.reloads == reloads and status.runtime_fallbacks == 0
    except AssertionError:
        print(stack.log_tail("operator"))
        raise
    finally:
        await etcd.delete(f"/desired/proxies/{PROXY}")
        await register(etcd, [])


async def _answers(port: int, status: int) -> bool:
    try:
        return (await asyncio.to_thread(fetch, port))[0] == status
    except OSError:
        return False
