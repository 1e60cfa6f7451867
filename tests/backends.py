"""Real HTTP backends for proxy tests: python's http.server processes on loopback, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from fleetop.discovery.addresses import Registration
from fleetop.etcdserver import free_port


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
