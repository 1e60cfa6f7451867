"""``fleetop up --demo``: deploy the README's hello service and nginx proxy, and narrate what happens.

It uses nothing a user could not do by hand: two etcd puts, then it watches status and sends HTTP
requests through the proxy, showing the ``X-Handler`` header of each answer.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections.abc import Awaitable, Callable, Mapping

from fleetop.config import settings_from
from fleetop.errors import FleetopError
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.models import ProxyStatus, ServiceStatus

HELLO = (
    '{"replicas": 3, "ports": {"base": 8001},'
    ' "unit": {"execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"},'
    ' "discovery": {"sidekick": true, "check": {"http": "/"}}}'
)
EDGE = (
    '{"kind": "nginx", "listen": "127.0.0.1:8080", "replicas": 1,'
    ' "routes": [{"service": "hello"}], "headers": {"handler": true}}'
)
PROXY_HOST, PROXY_PORT = "127.0.0.1", 8080
Say = Callable[..., None]


def request_through_proxy(timeout: float = 2.0) -> tuple[int, str]:
    """One GET through the proxy: (status, X-Handler header)."""
    conn = http.client.HTTPConnection(PROXY_HOST, PROXY_PORT, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Handler") or ""
    finally:
        conn.close()


async def _wait(
    check: Callable[[], Awaitable[bool | str]],
    what: str,
    say: Say,
    stopping: threading.Event,
    timeout: float = 120.0,
) -> None:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        if stopping.is_set():
            raise FleetopError("interrupted")
        state = await check()
        if state is True:
            say(f"  ✓ {what} ({time.monotonic() - started:.1f} s)", flush=True)
            return
        if isinstance(state, str) and state != last:
            say(f"  … {state}", flush=True)
            last = state
        await asyncio.sleep(0.3)
    raise FleetopError(f"timed out waiting for {what}")


async def _demo(env: Mapping[str, str], stopping: threading.Event, say: Say) -> None:
    keys = Keys()
    async with await Etcd.connect(settings_from({}, env)) as etcd:
        say("\nDemo: the same two writes you could make with etcdctl:")
        say(f"  etcdctl put /desired/services/hello '{HELLO}'")
        say(f"  etcdctl put /desired/proxies/edge '{EDGE}'\n", flush=True)
        await etcd.put(keys.desired("services", "hello"), HELLO)
        await etcd.put(keys.desired("proxies", "edge"), EDGE)

        async def hello_ready() -> bool | str:
            kv = await etcd.get(keys.status("services", "hello"))
            if kv is None:
                return "waiting for the operator to pick up the spec"
            st = ServiceStatus.model_validate_json(kv.value)
            r = st.replicas
            if r.ready >= 3:
                return True
            return f"hello: {r.launched} launched, {r.running} running, {r.ready}/3 ready (registered)"

        async def proxy_applied() -> bool | str:
            kv = await etcd.get(keys.status("proxies", "edge"))
            if kv is None:
                return "waiting for the proxy config to be published"
            st = ProxyStatus.model_validate_json(kv.value)
            if (
                st.agents.total
                and st.agents.on_newest == st.agents.total
                and st.backends.get("hello", 0) >= 3
            ):
                return True
            return (
                f"edge: {st.agents.on_newest}/{st.agents.total} agents on the newest config, "
                f"{st.backends.get('hello', 0)} backends"
            )

        await _wait(hello_ready, "3 instances of hello ready", say, stopping)
        await _wait(proxy_applied, "nginx serving the newest config", say, stopping)
    handlers = []
    for _ in range(6):
        status, handler = await asyncio.to_thread(request_through_proxy)
        handlers.append(handler)
        say(f"  curl -i {PROXY_HOST}:{PROXY_PORT}  →  {status}, X-Handler: {handler}", flush=True)
    say(f"\n{len(set(handlers))} different instances answered through nginx.")
    say(
        'Try: etcdctl put /desired/services/hello with "replicas": 1, or etcdctl del /desired/services/hello,'
    )
    say("and watch `fleetop status --watch` in another shell.\n", flush=True)


def run_demo(env: Mapping[str, str], stopping: threading.Event, say: Say) -> None:
    asyncio.run(_demo(env, stopping, say))
