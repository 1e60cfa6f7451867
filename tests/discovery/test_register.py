"""``fleetop register`` end to end: a real etcd, real HTTP backends, real signals.

Nothing here asserts on timing: every wait has a generous deadline, and "within the TTL" is shown by
the lease itself (its granted TTL), not by a stopwatch.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from fleetop.config import etcd_flags, settings_from
from fleetop.discovery import sidekick
from fleetop.discovery.checks import HealthCheck
from fleetop.discovery.register import RegisterConfig, run_register
from fleetop.errors import InputError
from fleetop.etcd.client import Etcd
from fleetop.local.etcdserver import EtcdServer, free_port

DEADLINE = 20.0


class Backend:
    """``python3 -m http.server`` on a fixed loopback port, started and stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the backend did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(name="backend")
def backend_fixture(tmp_path: Path) -> Iterator[Backend]:
    """A static HTTP server (also test_sidekick's)."""
    web = tmp_path / "www"
    web.mkdir()
    (web / "index.html").write_text("<h1>up</h1>\n")
    server = Backend(web)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def eventually(predicate: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if await predicate():
                return
        except Exception:  # etcd restarting: try again
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


async def value_of(etcd: Etcd, key: str) -> bytes | None:
    kv = await etcd.get(key)
    return None if kv is None else kv.value


def granted_ttl(etcdctl: str, endpoint: str, lease: int) -> int:
    """The lease's granted TTL, as etcdctl reports it (independent of fleetop's client)."""
    out = subprocess.run(
        [etcdctl, "--endpoints", endpoint, "lease", "timetolive", f"{lease:x}"],
        capture_output=True, text=True, check=True, timeout=10,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout  # fmt: skip
    match = re.search(r"granted with TTL\((\d+)s\)", out)
    assert match, out
    return int(match.group(1))


class Registering:
    """run_register as a task, stopped (and awaited) by the test."""

    def __init__(self, etcd: Etcd, config: RegisterConfig) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run_register(etcd, config, stop=self.stop))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, DEADLINE)


def http_config(
    port: int, *, ttl: float = 5, interval: float = 0.5, instance: str = "8001"
) -> RegisterConfig:
    return RegisterConfig.build(
        service="web",
        instance=instance,
        address=f"127.0.0.1:{port}",
        check=HealthCheck.from_flags(http="/", timeout=1),
        interval=interval,
        ttl=ttl,
    )


# -- the state machine, in process -------------------------------------------------------------------


async def test_registers_follows_health_and_deregisters_on_stop(
    etcd: Etcd, backend: Backend, etcd_server: EtcdServer, etcdctl_bin: str
) -> None:
    key, value = "/services/web/8001", f"127.0.0.1:{backend.port}".encode()
    running = Registering(etcd, http_config(backend.port, ttl=5))
    try:
        await eventually(lambda: _equals(etcd, key, value), "registered")
        kv = await etcd.get(key)
        assert kv is not None and kv.lease != 0
        assert granted_ttl(etcdctl_bin, etcd_server.endpoint, kv.lease) <= 5

        backend.stop()
        await eventually(lambda: _equals(etcd, key, None), "deregistered after the backend stopped")
        backend.start()
        await eventually(lambda: _equals(etcd, key, value), "registered again after the backend came back")

        await etcd.delete(key)  # someone removes it by hand
        await eventually(lambda: _equals(etcd, key, value), "written again after a manual delete")
    finally:
        await running.finish()
    assert await etcd.get(key) is None  # gone at once, not after the TTL


async def _equals(etcd: Etcd, key: str, expected: bytes | None) -> bool:
    return await value_of(etcd, key) == expected


async def test_waits_for_a_late_backend_and_uses_a_custom_prefix(etcd: Etcd, tmp_path: Path) -> None:
    late = Backend(tmp_path)
    config = RegisterConfig.build(
        service="web", instance="a1", address=f"127.0.0.1:{late.port}", prefix="/lb/web/",
        check=HealthCheck.from_flags(http="/", timeout=1), interval=30, ttl=10,
    )  # fmt: skip
    running = Registering(etcd, config)
    try:
        await asyncio.sleep(0.5)
        assert await etcd.get("/lb/web/a1") is None  # not healthy yet: nothing written
        late.start()
        # interval is 30 s: only the fast retries before the first success can register it this soon
        await eventually(
            lambda: _equals(etcd, "/lb/web/a1", f"127.0.0.1:{late.port}".encode()), "registered", 10
        )
    finally:
        await running.finish()
        late.stop()
    assert await etcd.get("/lb/web/a1") is None


async def test_lease_revoked_behind_its_back_is_replaced(
    etcd: Etcd, backend: Backend, etcd_server: EtcdServer, etcdctl_bin: str
) -> None:
    key = "/services/web/8001"
    running = Registering(etcd, http_config(backend.port, ttl=3))
    try:
        await eventually(lambda: _equals(etcd, key, f"127.0.0.1:{backend.port}".encode()), "registered")
        kv = await etcd.get(key)
        assert kv is not None
        await etcd.revoke(kv.lease)

        async def new_lease() -> bool:
            now = await etcd.get(key)
            return now is not None and now.lease not in (0, kv.lease)

        await eventually(new_lease, "registered again on a new lease")
    finally:
        await running.finish()


async def test_tcp_check(etcd: Etcd, backend: Backend) -> None:
    config = RegisterConfig.build(
        service="db", instance="1", address=f"127.0.0.1:{backend.port}",
        check=HealthCheck.from_flags(tcp=True, timeout=1), interval=0.5, ttl=5,
    )  # fmt: skip
    running = Registering(etcd, config)
    try:
        await eventually(lambda: _equals(etcd, "/services/db/1", f"127.0.0.1:{backend.port}".encode()), "up")
        backend.stop()
        await eventually(lambda: _equals(etcd, "/services/db/1", None), "deregistered")
    finally:
        await running.finish()


async def test_exec_check(etcd: Etcd, tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    config = RegisterConfig.build(
        service="job", instance="7", address="[::1]:9000",
        check=HealthCheck.from_flags(exec_=f"test -e {flag}", timeout=2), interval=0.5, ttl=5,
    )  # fmt: skip
    running = Registering(etcd, config)
    try:
        await asyncio.sleep(0.5)
        assert await etcd.get("/services/job/7") is None
        flag.touch()
        await eventually(lambda: _equals(etcd, "/services/job/7", b"[::1]:9000"), "registered")
        flag.unlink()
        await eventually(lambda: _equals(etcd, "/services/job/7", None), "deregistered")
    finally:
        await running.finish()


async def test_rides_out_an_etcd_restart(tmp_path: Path, backend: Backend) -> None:
    server = EtcdServer(tmp_path / "etcd-data")
    server.start()
    try:
        settings = settings_from({"endpoints": server.endpoint}, {})
        client = await Etcd.connect(settings)
        key, value = "/services/web/8001", f"127.0.0.1:{backend.port}".encode()
        running = Registering(client, http_config(backend.port, ttl=2, interval=0.5))
        try:
            await eventually(lambda: _equals(client, key, value), "registered")
            first = await client.get(key)
            assert first is not None
            server.kill()
            await asyncio.sleep(3)  # longer than the TTL: the keeper cannot prove the lease alive
            server.start()

            async def on_a_new_lease() -> bool:
                kv = await client.get(key)
                return kv is not None and kv.value == value and kv.lease not in (0, first.lease)

            await eventually(on_a_new_lease, "registered again on a new lease after the restart", 30)
            backend.stop()  # and it still follows health afterwards
            await eventually(lambda: _equals(client, key, None), "deregistered after the restart")
        finally:
            await running.finish()
            await client.close()
    finally:
        server.stop()


def test_config_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="--instance"):
        RegisterConfig.build(service="web", instance="a/b", address="127.0.0.1:80")
    with pytest.raises(InputError, match="--service"):
        RegisterConfig.build(service="Web", instance="1", address="127.0.0.1:80")
    with pytest.raises(InputError, match="--prefix"):
        RegisterConfig.build(service="web", instance="1", address="127.0.0.1:80", prefix="/a/../b")
    with pytest.raises(InputError, match="--ttl"):
        RegisterConfig.build(service="web", instance="1", address="127.0.0.1:80", ttl=0.5)
    config = RegisterConfig.build(service="web", instance="1", address="[0:0::1]:80", ttl=2.5)
    assert (config.key, config.value, config.ttl) == ("/services/web/1", "[::1]:80", 3)


# -- the command -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("127.0.0.1:80; } server {", id="config-injection"),
        pytest.param("1.2.3.4:0", id="port-zero"),
        pytest.param("::1:80", id="bare-ipv6"),
        pytest.param("127.0.0.1", id="no-port"),
        pytest.param("1.2.3.256:80", id="bad-ipv4"),
        pytest.param("host name:80", id="space"),
        pytest.param("[::1]80", id="no-colon"),
        pytest.param("web.internal:65536", id="port-too-big"),
    ],
)
async def test_bad_address_exits_2_and_writes_nothing(
    address: str, etcd_server: EtcdServer, etcd_prefix: str, etcd: Etcd, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--service", "web", "--instance", "8001", "--address", address,
            "--endpoints", etcd_server.endpoint, "--root", etcd_prefix]  # fmt: skip
    code = await asyncio.to_thread(sidekick.main, args, over_grpc=True)
    assert code == 2
    assert "--address" in capsys.readouterr().err
    items, _ = await etcd.list("/")
    assert items == []


def test_command_flags_override_the_global_etcd_flags() -> None:
    inherited = {"endpoints": "10.0.0.1:2379", "prefix": "/team-a", "user": "bob"}
    assert etcd_flags(inherited, None, None) == inherited
    assert etcd_flags(inherited, "127.0.0.1:2379", "/team-b") == {
        "endpoints": "127.0.0.1:2379",
        "prefix": "/team-b",
        "user": "bob",
    }
    assert etcd_flags({}, None, None) == {}


def spawn(tmp_path: Path, endpoint: str, root: str, port: int, ttl: str) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "register.log", "ab")  # noqa: SIM115 - the child keeps it
    args = ["--service", "web", "--instance", "8001", "--address", f"127.0.0.1:{port}", "--http", "/",
            "--interval", "1s", "--ttl", ttl, "--endpoints", endpoint, "--root", root]  # fmt: skip
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetop.discovery.cli", *args], stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        log.close()


async def test_sigterm_deletes_the_key_at_once(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, etcd: Etcd, backend: Backend
) -> None:
    proc = spawn(tmp_path, etcd_server.endpoint, etcd_prefix, backend.port, "30s")
    try:
        await eventually(
            lambda: _equals(etcd, "/services/web/8001", f"127.0.0.1:{backend.port}".encode()), "up"
        )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, DEADLINE) == 0
        assert await etcd.get("/services/web/8001") is None  # deleted before exit, not left to a 30 s TTL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "deregistered" in (tmp_path / "register.log").read_text()


async def test_sigkill_leaves_the_key_to_its_lease(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, etcd: Etcd, backend: Backend, etcdctl_bin: str
) -> None:
    proc = spawn(tmp_path, etcd_server.endpoint, etcd_prefix, backend.port, "2s")
    try:
        await eventually(
            lambda: _equals(etcd, "/services/web/8001", f"127.0.0.1:{backend.port}".encode()), "up"
        )
        kv = await etcd.get("/services/web/8001")
        assert kv is not None
        assert granted_ttl(etcdctl_bin, etcd_server.endpoint, kv.lease) <= 2
        proc.kill()
        proc.wait(10)
        await eventually(lambda: _equals(etcd, "/services/web/8001", None), "expired with its lease")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
