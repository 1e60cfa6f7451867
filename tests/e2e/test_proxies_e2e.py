"""Proxies end to end: etcd, ``fleetop node --machines 3``, ``fleetop run``, managed nginx and HAProxy
units with their agents, and HTTP backends (``python3 -m http.server``) registered by sidekicks.

Everything is a real process on loopback. Waits use generous deadlines, never timing assertions.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from e2ehelpers import Stack, eventually, put
from typer.testing import CliRunner

from backends import Load, answered_by
from fleetop.cli.main import app
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import free_port
from fleetop.models import AgentStatus, ProxyStatus, PublishedConfig

pytestmark = pytest.mark.slow
KEYS = Keys()
SERVER_RE = re.compile(r"^\s*server\s+(?:\S+\s+)?(\d+\.\d+\.\d+\.\d+:\d+)", re.MULTILINE)
CONVERGE = 60.0
SCALE_BUDGET = 60.0
"""Seconds of scale events in the zero-failure test (or 50 events, whichever comes first)."""


def web_spec(replicas: int, base_port: int) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "ports": {"base": base_port},
        "unit": {
            "execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i",
            "restartSec": "10s",
        },
        "discovery": {
            "sidekick": True,
            "check": {"http": "/", "interval": "0.5s", "timeout": "1s"},
            "ttl": "5s",
        },
    }


def proxy_spec(kind: str, port: int, service: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": kind,
        "listen": f"127.0.0.1:{port}",
        "routes": [{"service": service}],
        "headers": {"handler": True},
    }
    body.update(extra)
    return body


async def published(etcd: Etcd, proxy: str) -> PublishedConfig | None:
    kv = await etcd.get(KEYS.proxy_config(proxy))
    return None if kv is None else PublishedConfig.model_validate_json(kv.value)


async def servers(etcd: Etcd, proxy: str) -> set[str]:
    config = await published(etcd, proxy)
    return set(SERVER_RE.findall(config.body)) if config is not None else set()


async def registered(etcd: Etcd, service: str) -> set[str]:
    items, _ = await etcd.list(f"/services/{service}/")
    return {kv.value.decode() for kv in items}


async def proxy_status(etcd: Etcd, proxy: str) -> ProxyStatus | None:
    kv = await etcd.get(KEYS.status("proxies", proxy))
    return None if kv is None else ProxyStatus.model_validate_json(kv.value)


async def agents(etcd: Etcd, proxy: str) -> list[AgentStatus]:
    items, _ = await etcd.list(KEYS.agent_status(proxy, ""))
    return [AgentStatus.model_validate_json(kv.value) for kv in items]


async def handlers(port: int, requests: int = 30) -> set[str] | None:
    """The backends that answered ``requests`` requests, or None when one of them failed."""
    return await answered_by(port, requests)


# -- processes the node started for us ----------------------------------------------------------------


def _listen_inode(host: str, port: int) -> str | None:
    local = "".join(f"{int(p):02X}" for p in reversed(host.split("."))) + f":{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                return fields[9]
    return None


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rpartition(b")")[2].split()[1])


def listener_pid(address: str, ancestor: int) -> int:
    """The PID listening on ``address``, which must descend from ``ancestor`` (a process we started)."""
    host, _, port = address.rpartition(":")
    inode = _listen_inode(host, int(port))
    assert inode is not None, f"nothing listens on {address}"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            links = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in fds]
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            pid = current = int(entry)
            while current > 1:
                current = _parent(current)
                if current == ancestor:
                    return pid
            raise AssertionError(f"{address} is served by pid {pid}, which this test did not start")
    raise AssertionError(f"no process holds the socket of {address}")


def describe(stack: Stack, proxy: str) -> str:
    env = {"ETCDCTL_ENDPOINTS": stack.etcd_endpoint}
    result = CliRunner().invoke(app, ["describe", "proxy", proxy], env=env)
    return result.output


# -- the tests -------------------------------------------------------------------------------------------


async def test_requests_reach_every_backend_and_follow_scale_down_and_kill(stack: Stack, etcd: Etcd) -> None:
    port = free_port()
    await put(etcd, "/desired/services/web", web_spec(3, 8001))
    await put(etcd, "/desired/proxies/front", proxy_spec("nginx", port, "web"))
    try:
        regs = await eventually(
            lambda: _sized(registered(etcd, "web"), 3), CONVERGE, "3 registered web backends"
        )
        await eventually(lambda: _equal(handlers(port), regs), CONVERGE, "X-Handler showing every backend")
        assert {r.rpartition(":")[0] for r in regs} <= {f"127.0.1.{i}" for i in (1, 2, 3)}

        await put(etcd, "/desired/services/web", web_spec(2, 8001))
        left = await eventually(lambda: _sized(registered(etcd, "web"), 2), CONVERGE, "2 registrations")
        await eventually(lambda: _equal(servers(etcd, "front"), left), 30, "the scaled-down config")
        await eventually(lambda: _equal(handlers(port), left), 30, "requests served by the 2 left")

        victim = sorted(left)[0]
        os.kill(listener_pid(victim, stack.node.pid), signal.SIGKILL)
        await eventually(lambda: _lacks(servers(etcd, "front"), victim), 30, f"{victim} leaving the config")
        rest = left - {victim}
        await eventually(lambda: _equal(handlers(port, 10), rest), 30, "requests served by the survivor")
    except AssertionError:
        print(stack.log_tail("operator"))
        raise


async def _sized(values: Awaitable[set[str]], size: int) -> set[str] | None:
    found = await values
    return found if len(found) == size else None


async def _equal(values: Awaitable[set[str] | None], expected: set[str]) -> bool:
    return await values == expected


async def _lacks(values: Awaitable[set[str]], item: str) -> bool:
    return item not in await values


async def test_zero_failed_requests_while_scaling(stack: Stack, etcd: Etcd) -> None:
    nginx_port, haproxy_port = free_port(), free_port()
    await put(etcd, "/desired/services/scaler", web_spec(2, 8101))
    await put(etcd, "/desired/proxies/scale-nginx", proxy_spec("nginx", nginx_port, "scaler"))
    await put(etcd, "/desired/proxies/scale-haproxy", proxy_spec("haproxy", haproxy_port, "scaler"))
    for proxy, port in (("scale-nginx", nginx_port), ("scale-haproxy", haproxy_port)):
        await eventually(lambda p=proxy: _count(servers(etcd, p), 2), CONVERGE, f"{proxy} with 2 backends")
        await eventually(lambda p=port: _count_handlers(handlers(p), 2), CONVERGE, f"{proxy} serving both")
    steady = {"interval": 0.015, "limit": 180.0}  # one request every 15 ms, for 3 minutes at most
    loads = {"nginx": Load(nginx_port, **steady).start(), "haproxy": Load(haproxy_port, **steady).start()}
    events = 0
    started = time.monotonic()
    try:
        while events < 50 and time.monotonic() - started < SCALE_BUDGET:
            replicas = 3 if events % 2 == 0 else 2
            await put(etcd, "/desired/services/scaler", web_spec(replicas, 8101))
            for proxy in ("scale-nginx", "scale-haproxy"):
                await eventually(
                    lambda p=proxy, n=replicas: _count(servers(etcd, p), n), 30, f"{proxy} with {replicas}"
                )
            events += 1
    finally:
        for load in loads.values():
            load.stop()
    elapsed = time.monotonic() - started
    print(
        f"\n{events} scale events in {elapsed:.0f} s; requests nginx {loads['nginx'].sent} "
        f"(failed {len(loads['nginx'].failures)}), haproxy {loads['haproxy'].sent} "
        f"(failed {len(loads['haproxy'].failures)})"
    )
    assert events >= 10
    assert loads["nginx"].failures == [], loads["nginx"].failures[:10]
    assert loads["haproxy"].failures == [], loads["haproxy"].failures[:10]


async def _count(values: Awaitable[set[str]], size: int) -> bool:
    return len(await values) == size


async def _count_handlers(values: Awaitable[set[str] | None], size: int) -> bool:
    found = await values
    return found is not None and len(found) == size


async def test_burst_of_500_registrations_makes_few_reloads(stack: Stack, etcd: Etcd) -> None:
    port = free_port()
    await put(etcd, "/desired/proxies/bulk", proxy_spec("nginx", port, "bulk"))  # the default wait
    await eventually(lambda: _agent_on_newest(etcd, "bulk"), CONVERGE, "the bulk proxy's agent applying")
    before = (await agents(etcd, "bulk"))[0].reloads
    first = await published(etcd, "bulk")
    assert first is not None
    burst = time.monotonic()
    for chunk in range(0, 500, 50):
        await asyncio.gather(
            *(etcd.put(f"/services/bulk/{i}", f"127.0.0.1:{20000 + i}") for i in range(chunk, chunk + 50))
        )
    burst = time.monotonic() - burst
    await eventually(lambda: _count(servers(etcd, "bulk"), 500), 30, "500 servers in the published config")
    await eventually(lambda: _agent_on_newest(etcd, "bulk"), 30, "the agent applying the final config")
    reloads = (await agents(etcd, "bulk"))[0].reloads - before
    config = await published(etcd, "bulk")
    assert config is not None
    publishes = config.generation - first.generation
    print(f"\n500 registrations in {burst:.1f} s: {reloads} reload(s), {publishes} publish(es)")
    assert 1 <= reloads <= 5
    assert publishes <= 5
    assert len(set(SERVER_RE.findall(config.body))) == 500


async def _agent_on_newest(etcd: Etcd, proxy: str) -> bool:
    config = await published(etcd, proxy)
    reports = await agents(etcd, proxy)
    return config is not None and any(r.applied_hash == config.hash and r.error is None for r in reports)


async def test_template_and_check_failures_keep_the_previous_config(stack: Stack, etcd: Etcd) -> None:
    port = free_port()
    await put(etcd, "/desired/services/guarded", web_spec(1, 8201))
    good = proxy_spec("nginx", port, "guarded")
    await put(etcd, "/desired/proxies/guard", good)
    await eventually(lambda: _count_handlers(handlers(port, 3), 1), CONVERGE, "the guard proxy serving")
    await eventually(lambda: _agent_on_newest(etcd, "guard"), CONVERGE, "the guard agent applying")
    first = await published(etcd, "guard")
    assert first is not None

    await put(etcd, "/desired/proxies/guard", {**good, "template": "{{ broken( }}"})
    status = await eventually(lambda: _status_error(etcd, "guard", "render failed"), 30, "the render error")
    degraded = status.condition("Degraded")
    assert degraded is not None and degraded.status == "True"
    assert (await published(etcd, "guard")) == first
    assert await _count_handlers(handlers(port, 5), 1)
    assert "render failed" in await asyncio.to_thread(describe, stack, "guard")

    # a command this machine's agent policy does not list is refused before it runs
    refuse = ["/bin/sh", "-c", "echo 'nginx: [emerg] refused by the test' >&2; exit 1"]
    await put(etcd, "/desired/proxies/guard", {**good, "checkCmd": refuse})
    await eventually(
        lambda: _status_error(etcd, "guard", "is not an allowed command"), 30, "the agent's refusal"
    )
    newest = await published(etcd, "guard")
    assert newest is not None and newest.hash != first.hash
    assert [r.applied_hash for r in await agents(etcd, "guard")] == [first.hash]
    assert await _count_handlers(handlers(port, 5), 1)
    shown = await asyncio.to_thread(describe, stack, "guard")
    assert "agent " in shown and "agent policy" in shown


async def _status_error(etcd: Etcd, proxy: str, text: str) -> ProxyStatus | None:
    status = await proxy_status(etcd, proxy)
    return status if status is not None and text in (status.last_error or "") else None
