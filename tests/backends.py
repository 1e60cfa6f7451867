"""Real HTTP backends for proxy tests: python's http.server processes on loopback, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from fleetop.discovery.addresses import Registration
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import free_port
from fleetop.models import ProxySpec, PublishedConfig
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.apply import Kind, ProxyProcess, initial_config, start_proxy
from fleetop.proxy.haproxy_runtime import RuntimeAPI
from fleetop.proxy.render import RenderPaths, render
from waiting import eventually


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on {host}:{port}")


@contextlib.contextmanager
def http_backends(hosts: Sequence[str], directory: Path) -> Iterator[list[Registration]]:
    """One ``http.server`` per host on a free port, as registrations ``/services/web/<i>``."""
    procs: list[subprocess.Popen[bytes]] = []
    regs: list[Registration] = []
    try:
        for i, host in enumerate(hosts):
            port = free_port(host)
            argv = [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                host,
                "--directory",
                str(directory),
                str(port),
            ]
            procs.append(
                subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
                )
            )
            wait_port(host, port)
            regs.append(Registration(f"/services/web/{i}", host, port))
        yield regs
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def fetch(port: int, path: str = "/", host: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """GET through a proxy on 127.0.0.1 on a fresh connection: (status, X-Handler header or '')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}", "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Handler") or ""
    finally:
        conn.close()


async def answered_by(
    port: int, requests: int, enough: Callable[[set[str]], bool] = lambda _: False
) -> set[str] | None:
    """The handlers that answered up to ``requests`` requests through the proxy on ``port``, stopping
    early once ``enough`` of them answered; None as soon as one request fails (not a 200, or no answer)."""
    seen: set[str] = set()
    for _ in range(requests):
        try:
            status, handler = await asyncio.to_thread(fetch, port)
        except OSError:
            return None
        if status != 200:
            return None
        seen.add(handler)
        if enough(seen):
            break
    return seen


async def handlers_seen(port: int, want: set[str], attempts: int = 200) -> set[str]:
    """Request through the proxy on ``port`` until every handler in ``want`` answered (a reload takes
    effect asynchronously); the handlers seen."""
    seen: set[str] = set()
    for _ in range(attempts):
        status, handler = await asyncio.to_thread(fetch, port)
        if status == 200:
            seen.add(handler)
        if want <= seen:
            break
        await asyncio.sleep(0.01)
    return seen


class ProxySite:
    """A running nginx or HAProxy (started here, its files under ``directory``) for proxy ``proxy``:
    its config path, runtime paths and port on 127.0.0.1."""

    def __init__(self, directory: Path, kind: Kind, proxy: str) -> None:
        self.kind, self.proxy = kind, proxy
        self.port = free_port("127.0.0.1")
        self.paths = RenderPaths(str(directory / "run"))
        self.target = directory / ("nginx.conf" if kind == "nginx" else "haproxy.cfg")
        self.target.write_text(initial_config(proxy, kind, f"127.0.0.1:{self.port}", self.paths))
        self.process: ProxyProcess = self.start()

    def start(self) -> ProxyProcess:
        return start_proxy(self.kind, self.target, self.paths, listen=("127.0.0.1", self.port))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.stop()

    def published(
        self, backends: list[Registration], generation: int = 1, *, handler: bool = True, extra: str = ""
    ) -> PublishedConfig:
        """The config the operator would publish for one route to service ``web`` on ``backends``."""
        spec = ProxySpec.model_validate(
            {
                "kind": self.kind,
                "listen": f"127.0.0.1:{self.port}",
                "headers": {"handler": handler},
                "routes": [{"service": "web"}],
            }
        )
        body = render(self.proxy, spec, {"web": backends}, paths=self.paths).text + extra
        digest = hashlib.sha256(body.encode()).hexdigest()
        return PublishedConfig(hash=digest, generation=generation, kind=self.kind, body=body)


@contextlib.asynccontextmanager
async def agent_running(
    etcd: Etcd, settings: AgentSettings, runtime_api: Callable[[Path, float], RuntimeAPI] = RuntimeAPI
) -> AsyncIterator[ProxyAgent]:
    """The proxy agent's loop as a task for the body of an ``async with``; cancelled at its end."""
    agent = ProxyAgent(etcd, Keys(), settings, runtime_api=runtime_api)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class Load:
    """Requests through a proxy on 127.0.0.1, back to back on fresh connections from a thread: one every
    ``interval`` s until stopped (or, with ``limit``, for at most that many seconds). Every answer but a
    200 is a failure, kept in ``failures``. ``with Load(port) as load:`` starts and stops it."""

    port: int
    interval: float = 0.02
    limit: float | None = None
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = None if self.limit is None else time.monotonic() + self.limit
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.sent += 1
            try:
                status, _ = fetch(self.port)
                if status != 200:
                    self.failures.append(f"HTTP {status}")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    async def more(self, count: int) -> None:
        """Wait until ``count`` more requests went through the proxy in its current state."""
        target = self.sent + count
        await eventually(lambda: self.sent >= target, 60, f"{count} more requests", every=0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
