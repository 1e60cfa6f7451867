"""The sidekick's health checks against real servers and real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetop.discovery.checks import CheckResult, HealthCheck, host_port_text
from fleetop.errors import InputError
from fleetop.local.etcdserver import free_port


def wait_listening(port: int, deadline: float = 10.0) -> None:
    import socket

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def http_backend(tmp_path: Path) -> Iterator[int]:
    """``python3 -m http.server`` on a free loopback port, serving a directory with ``/ok.txt``."""
    (tmp_path / "ok.txt").write_text("ok\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        yield port
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback server answering each request with the next canned reply (none queued: hang)."""
    replies: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if replies:
                writer.write(replies.pop(0))
                await writer.drain()
            else:
                await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, replies
    server.close()
    for task in list(handlers):
        task.cancel()
    await server.wait_closed()
    while handlers:
        await asyncio.sleep(0.01)


def status_reply(code: int, reason: str, extra: str = "") -> bytes:
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n".encode()


# -- configuration ----------------------------------------------------------------------------------


def test_from_flags_picks_one_kind() -> None:
    assert HealthCheck.from_flags().kind == "none"
    assert HealthCheck.from_flags(http="/healthz").path == "/healthz"
    assert HealthCheck.from_flags(tcp=True).kind == "tcp"
    check = HealthCheck.from_flags(exec_="pg_isready -h 'my host'", timeout=3)
    assert check.command == ("pg_isready", "-h", "my host")
    assert check.timeout == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"http": "/", "tcp": True}, "--http and --tcp"),
        ({"tcp": True, "exec_": "true"}, "--tcp and --exec"),
        ({"http": "healthz"}, "starting with '/'"),
        ({"http": "/a b"}, "without spaces"),
        ({"http": "/a\nb"}, "without spaces"),
        ({"exec_": "echo 'unbalanced"}, "cannot split"),
        ({"exec_": "   "}, "empty"),
        ({"timeout": 0}, "positive"),
    ],
)
def test_from_flags_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        HealthCheck.from_flags(**kwargs)  # type: ignore[arg-type]


def test_describe_leaves_command_arguments_out() -> None:
    described = HealthCheck.from_flags(exec_="mysqladmin --password=hunter2 ping").describe()
    assert described == "exec mysqladmin (+2 args)"
    assert HealthCheck.from_flags(http="/healthz").describe() == "http GET /healthz"


def test_host_port_text_brackets_ipv6() -> None:
    assert host_port_text("10.0.0.1", 80) == "10.0.0.1:80"
    assert host_port_text("::1", 80) == "[::1]:80"
    assert host_port_text("web.internal", 8080) == "web.internal:8080"


# -- none, tcp ----------------------------------------------------------------------------------------


async def test_no_check_is_healthy() -> None:
    result = await HealthCheck.from_flags().run("127.0.0.1", free_port())
    assert result.healthy


async def test_tcp_check(raw_server: tuple[int, list[bytes]]) -> None:
    port, _ = raw_server
    check = HealthCheck.from_flags(tcp=True, timeout=2)
    assert (await check.run("127.0.0.1", port)).healthy
    closed = await check.run("127.0.0.1", free_port())
    assert not closed.healthy
    assert "connect failed" in closed.detail


# -- http ---------------------------------------------------------------------------------------------


async def test_http_check_against_http_server(http_backend: int) -> None:
    ok = await HealthCheck.from_flags(http="/ok.txt").run("127.0.0.1", http_backend)
    assert ok == CheckResult(True, "HTTP 200")
    missing = await HealthCheck.from_flags(http="/missing").run("127.0.0.1", http_backend)
    assert missing == CheckResult(False, "HTTP 404")


async def test_http_check_statuses_and_timeout(raw_server: tuple[int, list[bytes]]) -> None:
    port, replies = raw_server
    check = HealthCheck.from_flags(http="/", timeout=0.5)
    replies.append(status_reply(302, "Found", "Location: /elsewhere\r\n"))
    assert (await check.run("127.0.0.1", port)).healthy
    replies.append(status_reply(503, "Service Unavailable"))
    assert await check.run("127.0.0.1", port) == CheckResult(False, "HTTP 503")
    hung = await check.run("127.0.0.1", port)  # no reply queued: the server never answers
    assert not hung.healthy
    assert "timed out" in hung.detail


async def test_http_check_connection_refused() -> None:
    result = await HealthCheck.from_flags(http="/").run("127.0.0.1", free_port())
    assert not result.healthy


# -- exec ---------------------------------------------------------------------------------------------


async def test_exec_exit_status() -> None:
    assert (await HealthCheck.from_flags(exec_="true").run("127.0.0.1", 80)).healthy
    failed = await HealthCheck.from_flags(exec_="sh -c 'echo broken >&2; exit 3'").run("127.0.0.1", 80)
    assert failed == CheckResult(False, "exit 3: broken")


async def test_exec_gets_the_address_in_its_environment() -> None:
    script = 'test "$FLEETOP_ADDRESS|$FLEETOP_HOST|$FLEETOP_PORT" = "[::1]:8001|::1|8001"'
    check = HealthCheck.from_flags(exec_=f"sh -c '{script}'")
    assert (await check.run("::1", 8001)).healthy
    assert not (await check.run("127.0.0.1", 8001)).healthy


async def test_exec_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    check = HealthCheck.from_flags(exec_=f"echo ok; touch {marker}")
    assert (await check.run("127.0.0.1", 80)).healthy  # echo prints "ok; touch ..." and exits 0
    assert not marker.exists()


async def test_exec_missing_command() -> None:
    result = await HealthCheck.from_flags(exec_="/nonexistent/check-me").run("127.0.0.1", 80)
    assert not result.healthy
    assert "cannot run" in result.detail


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent was killed and init reaps it shortly).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def wait_dead(pid: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while pid_alive(pid) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    assert not pid_alive(pid), f"process {pid} survived"


async def test_exec_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    result = await HealthCheck.from_flags(exec_=f"sh -c '{script}'", timeout=0.5).run("127.0.0.1", 80)
    assert not result.healthy
    assert "timed out" in result.detail
    await wait_dead(int(pidfile.read_text()))


async def test_cancelled_exec_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    task = asyncio.create_task(
        HealthCheck.from_flags(exec_=f"sh -c '{script}'", timeout=30).run("127.0.0.1", 80)
    )
    end = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < end
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_dead(int(pidfile.read_text()))
