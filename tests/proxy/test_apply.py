"""Applying configs to REAL nginx and HAProxy on loopback, with real HTTP backends.

Every process is started by a fixture here and stopped by its PID in a finally block.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from backends import ProxySite, fetch, handlers_seen, http_backends
from fleetop.discovery.addresses import Registration
from fleetop.errors import ProxyError
from fleetop.models import ProxySpec, PublishedConfig
from fleetop.proxy.apply import (
    CHECK_NICE,
    ApplyError,
    apply_config,
    command_argv,
    initial_config,
    pid_file_of,
    uses_shell,
    wait_pid,
)
from fleetop.proxy.render import RenderPaths, render

Kind = Literal["nginx", "haproxy"]


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[Registration]]:
    """Two HTTP servers on 127.0.0.2, 127.0.0.3 (python's http.server, separate processes)."""
    with http_backends(("127.0.0.2", "127.0.0.3"), tmp_path) as regs:
        yield regs


@pytest.fixture(params=["nginx", "haproxy"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxySite]:
    running = ProxySite(tmp_path, request.param, "edge")
    try:
        yield running
    finally:
        running.process.stop()


async def test_the_initial_config_serves_404(proxy: ProxySite) -> None:
    status, _ = await asyncio.to_thread(fetch, proxy.port)
    assert status == 404


async def test_apply_reaches_both_backends(proxy: ProxySite, backends: list[Registration]) -> None:
    cfg = proxy.published(backends)
    result = await apply_config(cfg, proxy.target, check=None, reload=None, timeout=30)
    assert result.reloaded and result.hash == cfg.hash
    assert proxy.target.read_text() == cfg.body
    assert proxy.target.stat().st_mode & 0o777 == 0o640
    assert not list(proxy.target.parent.glob(".fleetop-staged-*"))
    want = {b.address for b in backends}
    assert await handlers_seen(proxy.port, want) == want


async def test_a_config_failing_its_check_is_never_installed(
    proxy: ProxySite, backends: list[Registration]
) -> None:
    good = proxy.published(backends)
    await apply_config(good, proxy.target, check=None, reload=None, timeout=30)
    want = {b.address for b in backends}
    assert await handlers_seen(proxy.port, want) == want
    before = proxy.target.read_bytes()

    broken = proxy.published(backends[:1], generation=2, extra="\nthis_is_not_a_directive on;\n")
    with pytest.raises(ApplyError) as info:
        await apply_config(broken, proxy.target, check=None, reload=None, timeout=30)
    error = info.value
    assert error.stage == "check" and not error.installed and error.config_hash == broken.hash
    assert "this_is_not_a_directive" in error.output, error.output
    assert proxy.target.read_bytes() == before
    assert not list(proxy.target.parent.glob(".fleetop-staged-*"))
    assert await handlers_seen(proxy.port, want) == want  # the old config still serves


async def test_haproxy_reloads_without_failing_requests(tmp_path: Path, backends: list[Registration]) -> None:
    """Seamless reload (master-worker, expose-fd listeners): 10 reloads under a request loop, 0 errors."""
    proxy = ProxySite(tmp_path, "haproxy", "edge")
    try:
        configs = [
            proxy.published(backends, generation=1),
            proxy.published(backends, generation=2, handler=False),
        ]
        await apply_config(configs[0], proxy.target, check=None, reload=None, timeout=30)
        assert await handlers_seen(proxy.port, {b.address for b in backends})
        failures: list[str] = []
        reloading = threading.Event()
        reloading.set()
        count = 0

        def load() -> None:
            nonlocal count
            while count < 300 or reloading.is_set():
                try:
                    status, _ = fetch(proxy.port)
                    if status != 200:
                        failures.append(f"status {status}")
                except OSError as exc:
                    failures.append(repr(exc))
                count += 1

        loader = asyncio.create_task(asyncio.to_thread(load))
        try:
            for reload in range(10):
                await apply_config(configs[reload % 2], proxy.target, check=None, reload=None, timeout=30)
                await asyncio.sleep(0.05)
        finally:
            reloading.clear()
            await loader
        print(f"\n{count} requests during 10 reloads, {len(failures)} failed")
        assert failures == []
        assert count >= 300
        # the last config (no X-Handler header) is the one serving once old workers have finished
        streak = 0
        for _ in range(1000):
            streak = streak + 1 if await asyncio.to_thread(fetch, proxy.port) == (200, "") else 0
            if streak == 20:
                break
            await asyncio.sleep(0.005)
        assert streak == 20
    finally:
        proxy.process.stop()


def test_pid_file_is_read_from_the_config() -> None:
    paths = RenderPaths("/run/p")
    assert pid_file_of("nginx", initial_config("e", "nginx", 80, paths)) == Path("/run/p/proxy.pid")
    assert pid_file_of("haproxy", initial_config("e", "haproxy", 80, paths)) == Path("/run/p/proxy.pid")
    assert pid_file_of("nginx", "events {}\n") is None


async def test_a_reload_waits_for_a_starting_proxy_to_write_its_pid(tmp_path: Path) -> None:
    """nginx creates its pid file, then writes the pid: a reload that comes in between reads an empty
    file, and waits for the pid instead of failing (the agent's status said "holds no pid")."""
    pid_file = tmp_path / "proxy.pid"
    pid_file.write_text("")
    later = threading.Timer(0.1, lambda: pid_file.write_text(f"{os.getpid()}\n"))
    later.start()
    try:
        assert await wait_pid(pid_file, 5.0) == os.getpid()
    finally:
        later.cancel()
    pid_file.write_text("")
    with pytest.raises(ApplyError, match="holds no pid"):  # one that never comes: the error, in time
        await wait_pid(pid_file, 0.05)
    pid_file.unlink()
    with pytest.raises(ApplyError, match="no pid file"):
        await wait_pid(pid_file, 0.05)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        (["nginx", "-t", "-c", "{config}"], ["nginx", "-t", "-c", "/d/staged"]),
        (["check", "--file={config}"], ["check", "--file=/d/staged"]),
        ("haproxy -c -f {config}", ["haproxy", "-c", "-f", "/d/staged"]),
        ("tool 'two words' {config}", ["tool", "two words", "/d/staged"]),
        (
            "nginx -t -c {config} && echo ok",
            ["/bin/sh", "-c", 'nginx -t -c "$1" && echo ok', "fleetop", "/d/staged"],
        ),
        ("cat {config} | grep -q x", ["/bin/sh", "-c", 'cat "$1" | grep -q x', "fleetop", "/d/staged"]),
        (
            "kill -HUP $(cat /run/p.pid)",
            ["/bin/sh", "-c", "kill -HUP $(cat /run/p.pid)", "fleetop", "/d/staged"],
        ),
    ],
)
def test_command_argv(command: list[str] | str, argv: list[str]) -> None:
    assert command_argv(command, Path("/d/staged")) == argv


def test_shell_detection() -> None:
    assert not uses_shell("nginx -t -c {config}")
    assert uses_shell("a; b") and uses_shell("a | b") and uses_shell("echo $HOME") and uses_shell("a `b`")


def plain_config(body: str) -> PublishedConfig:
    return PublishedConfig(
        hash=hashlib.sha256(body.encode()).hexdigest(), generation=1, kind="nginx", body=body
    )


async def test_shell_check_gets_the_path_as_an_argument(tmp_path: Path) -> None:
    target = tmp_path / "weird dir" / "app.conf"
    target.parent.mkdir()
    target.write_text("old\n")
    marker = tmp_path / "marker"
    check = f"grep -q good {{config}} && echo checked > {marker}"
    result = await apply_config(plain_config("good\n"), target, check=check, reload=[], timeout=10)
    assert not result.reloaded
    assert target.read_text() == "good\n" and marker.read_text() == "checked\n"
    with pytest.raises(ApplyError) as info:
        await apply_config(
            plain_config("bad; rm -rf /\n"),
            target,
            check="grep -q good {config} || { echo 'no good line' >&2; exit 3; }",
            reload=[],
            timeout=10,
        )
    assert info.value.stage == "check" and "no good line" in str(info.value)
    assert target.read_text() == "good\n"


async def test_a_hung_check_times_out_and_installs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "app.conf"
    target.write_text("old\n")
    started = time.monotonic()
    with pytest.raises(ApplyError) as info:
        await apply_config(plain_config("new\n"), target, check=["sleep", "30"], reload=[], timeout=0.3)
    assert "timed out" in str(info.value)
    assert time.monotonic() - started < 20
    assert target.read_text() == "old\n"
    assert not list(tmp_path.glob(".fleetop-staged-*"))


async def test_reload_without_a_running_proxy_reports_an_installed_config(tmp_path: Path) -> None:
    paths = RenderPaths(str(tmp_path / "run"))
    body = initial_config("edge", "nginx", 80, paths)
    with pytest.raises(ApplyError) as info:
        await apply_config(plain_config(body), tmp_path / "nginx.conf", check=[], reload=None, timeout=10)
    assert info.value.stage == "reload" and info.value.installed
    assert "is the proxy running" in str(info.value)
    assert (tmp_path / "nginx.conf").read_text() == body


async def test_a_failing_reload_command_carries_its_output(tmp_path: Path) -> None:
    with pytest.raises(ApplyError) as info:
        await apply_config(
            plain_config("x\n"),
            tmp_path / "a.conf",
            check=[],
            reload=["sh", "-c", "echo reload broke >&2; exit 4"],
            timeout=10,
        )
    assert info.value.stage == "reload" and "reload broke" in str(info.value) and "4" in str(info.value)


async def test_a_superseded_config_is_not_installed(tmp_path: Path) -> None:
    target = tmp_path / "app.conf"
    target.write_text("old\n")
    result = await apply_config(
        plain_config("new\n"), target, check=["true"], reload=["false"], timeout=10, superseded=lambda: True
    )
    assert result.superseded and not result.reloaded
    assert target.read_text() == "old\n"
    assert not list(tmp_path.glob(".fleetop-staged-*"))


async def test_a_reload_that_nginx_cannot_load_is_reported(tmp_path: Path) -> None:
    """The check passes (nginx -t does not bind), but the reload cannot bind the new port: nginx keeps
    the old config and forks no new worker, which the apply notices."""
    proxy = ProxySite(tmp_path, "nginx", "edge")
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            spec = ProxySpec.model_validate({"kind": "nginx", "listen": f"127.0.0.1:{busy}"})
            body = render("edge", spec, {}, paths=proxy.paths).text
            cfg = PublishedConfig(
                hash=hashlib.sha256(body.encode()).hexdigest(), generation=2, kind="nginx", body=body
            )
            workers = worker_pids(proxy)
            with pytest.raises(ApplyError) as info:
                await apply_config(cfg, proxy.target, check=None, reload=None, timeout=1.5)
            # The port stays taken until here: nginx tries bind() five times, 500 ms apart, so a port
            # freed within that window would still let the reload through.
            assert info.value.stage == "reload" and info.value.installed
            assert "no new worker" in str(info.value)
            assert worker_pids(proxy) == workers  # no new worker, so the old one is not told to quit
            assert (await asyncio.to_thread(fetch, proxy.port))[0] == 404  # the old config still serves
    finally:
        proxy.process.stop()


def worker_pids(proxy: ProxySite) -> set[int]:
    children = Path(f"/proc/{proxy.process.pid}/task/{proxy.process.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def process_state(pid: int) -> str:
    """The state letter in /proc/<pid>/stat (``Z``: exited, not yet reaped); ``gone`` when reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    return stat.rpartition(")")[2].split()[0]


async def test_an_nginx_reload_retires_the_old_worker_itself(
    tmp_path: Path, backends: list[Registration]
) -> None:
    """nginx's master lets its old worker accept connections for 100 ms after forking the new one.
    The apply tells the old worker to quit as soon as the new one is there, so once it returns only
    the new config answers, even with the master frozen (it would never signal the old worker)."""
    proxy = ProxySite(tmp_path, "nginx", "edge")
    master = proxy.process.pid
    frozen = False
    try:
        for generation in range(1, 6):  # back to back: old workers go before the master signals them
            cfg = proxy.published(backends, generation=generation, handler=generation % 2 == 1)
            await apply_config(cfg, proxy.target, check=None, reload=None, timeout=30)
        want = {b.address for b in backends}
        assert await handlers_seen(proxy.port, want) == want
        await one_worker_left(proxy)  # and the master did not start another in its place
        old = worker_pids(proxy)

        narrowed = proxy.published(backends[1:], generation=6)
        await apply_config(narrowed, proxy.target, check=None, reload=None, timeout=30)
        os.kill(master, signal.SIGSTOP)
        frozen = True
        deadline = time.monotonic() + 10
        while any(process_state(pid) not in ("Z", "gone") for pid in old):
            assert time.monotonic() < deadline, f"the old worker {old} still runs"
            await asyncio.sleep(0.01)
        answers = [await asyncio.to_thread(fetch, proxy.port) for _ in range(20)]
        assert answers == [(200, backends[1].address)] * 20
    finally:
        if frozen:
            os.kill(master, signal.SIGCONT)
        proxy.process.stop()


@contextlib.contextmanager
def hang_up_backend(host: str, received: list[bytes]) -> Iterator[Registration]:
    """A backend that reads each request (the request line goes to ``received``) and closes the
    connection without answering, like a server stopped mid-request."""
    listener = socket.create_server((host, 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(65536).split(b"\r\n", 1)[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Registration("/services/web/hang-up", host, listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def one_worker_left(proxy: ProxySite, timeout: float = 30.0) -> None:
    """Wait until the master has only its new worker: nginx signals the old one 100 ms after starting
    the new one, HAProxy's old worker finishes its connections first."""
    children = Path(f"/proc/{proxy.process.pid}/task/{proxy.process.pid}/children")
    deadline = time.monotonic() + timeout
    while len(children.read_text().split()) != 1:
        assert time.monotonic() < deadline, f"{proxy.kind} still has old workers"
        await asyncio.sleep(0.02)


def request(port: int, method: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/", body=b"x" if method == "POST" else None, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


async def test_a_backend_hanging_up_is_retried_for_safe_methods_only(
    proxy: ProxySite, backends: list[Registration]
) -> None:
    """A backend that dies with a request in flight: GETs go to another server (nginx's default
    proxy_next_upstream, HAProxy's retry-on), a POST is never sent twice."""
    received: list[bytes] = []
    with hang_up_backend("127.0.0.4", received) as hang_up:
        cfg = proxy.published([backends[0], hang_up], handler=False)
        await apply_config(cfg, proxy.target, check=None, reload=None, timeout=30)
        assert await handlers_seen(proxy.port, {""})
        await one_worker_left(proxy)  # the old one still answers 404 (no route) for a while
        gets = [await asyncio.to_thread(request, proxy.port, "GET") for _ in range(20)]
        assert gets == [200] * 20
        assert any(line.startswith(b"GET ") for line in received)  # so some GETs were retried
        # http.server answers POST with 501; the hang-up backend with nothing, so the proxy says 502.
        # (nginx may have marked the hang-up backend failed already: max_fails=1 by default.)
        posts = [await asyncio.to_thread(request, proxy.port, "POST") for _ in range(20)]
        assert set(posts) <= {501, 502}, posts
        assert posts.count(502) == sum(line.startswith(b"POST ") for line in received)
        if proxy.kind == "haproxy":
            assert 502 in posts


# The check records its own niceness once it differs from 0 (or after a second, when it stays 0).
NICENESS_CHECK = (
    "for i in $(seq 100); do n=$(cut -d' ' -f19 /proc/$$/stat); [ \"$n\" != 0 ] && break; sleep 0.01; "
    'done; echo "$n" > "$NICENESS_FILE"'
)


@pytest.mark.parametrize("runtime_works", [True, False])
async def test_a_check_after_a_runtime_step_runs_at_a_lower_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_works: bool
) -> None:
    """Nothing waits for the check once the runtime step changed the servers: it yields the CPU to
    the proxy. A check that decides whether the proxy reloads keeps the agent's priority."""
    recorded = tmp_path / "niceness"
    monkeypatch.setenv("NICENESS_FILE", str(recorded))
    body = "servers\n"
    cfg = PublishedConfig(
        hash=hashlib.sha256(body.encode()).hexdigest(), generation=1, kind="haproxy", body=body
    )

    async def runtime() -> None:
        if not runtime_works:
            raise ProxyError("refused by the test")

    result = await apply_config(
        cfg,
        tmp_path / "haproxy.cfg",
        check=["/bin/sh", "-c", NICENESS_CHECK],
        reload=[],
        timeout=30,
        runtime=runtime,
    )
    assert (result.via, result.fallback) == (
        ("runtime", "") if runtime_works else ("", "refused by the test")
    )
    assert (tmp_path / "haproxy.cfg").read_text() == body
    niceness = int(recorded.read_text())
    assert niceness == (CHECK_NICE + os.nice(0) if runtime_works else os.nice(0))
