"""The lean ``fleetop register`` (the sidekick the operator's units run), as real processes against real etcd.

Each test starts ``fleetop register`` through the CLI's entry point, exactly as a unit's ``ExecStart``
does, and reads etcd with etcdctl's own view (the gateway client and ``etcdctl``), never through the
sidekick's internals: a check that fails and an instance that stops take the key away at once (not at
the end of the TTL), SIGTERM deletes it before exit, a killed sidekick leaves it to its lease, an etcd
that lost everything gets the key back, and TLS with a client certificate and a user works with the
password only in the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.discovery.test_register import Backend, backend_fixture  # noqa: F401

from etcd_tls import SecureEtcd, secure_etcd_fixture  # noqa: F401
from fleetop.config import settings_from
from fleetop.discovery.sidekick import Config, build_config, parser
from fleetop.errors import InputError
from fleetop.etcd.gateway import Gateway
from fleetop.local.etcdserver import EtcdServer
from waiting import eventually

KEY = "/services/web/8001"
LONG_TTL = "120s"
"""Longer than any wait below: a key that goes away did not expire, it was deleted."""


class Sidekick:
    """``fleetop register`` as its own process, its output in ``log``."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / "register.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetop.cli.main", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def register_args(port: int, *, ttl: str = LONG_TTL, check: tuple[str, ...] = ("--http", "/")) -> list[str]:
    return ["register", "--service", "web", "--instance", "8001", "--address", f"127.0.0.1:{port}",
            *check, "--interval", "1s", "--ttl", ttl]  # fmt: skip


@pytest.fixture
def gateway(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[Gateway]:
    with Gateway(settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})) as client:
        yield client


def value(gateway: Gateway, key: str = KEY) -> bytes | None:
    try:
        kv = gateway.get(key)
    except Exception:  # etcd restarting: not yet
        return None
    return None if kv is None else kv.value


async def test_check_fails_then_passes_sigterm_deletes(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, gateway: Gateway, backend: Backend
) -> None:
    address = f"127.0.0.1:{backend.port}".encode()
    side = Sidekick(tmp_path, ["--endpoints", etcd_server.endpoint, "--prefix", etcd_prefix,
                               *register_args(backend.port)])  # fmt: skip
    try:
        await eventually(lambda: value(gateway) == address, what="registered")
        kv = gateway.get(KEY)
        assert kv is not None and kv.lease != 0  # on a lease
        backend.stop()  # the instance stops: the check fails, the key goes at once (TTL is 120 s)
        await eventually(lambda: value(gateway) is None, timeout=30, what="deleted after the check failed")
        backend.start()
        await eventually(lambda: value(gateway) == address, what="registered again")
        assert side.stop() == 0
        assert value(gateway) is None  # deleted before exit, not left to the TTL
    finally:
        side.close()
    log = side.log.read_text()
    assert "unhealthy" in log and "deregistered" in log


async def test_tcp_and_exec_checks(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, gateway: Gateway, backend: Backend
) -> None:
    flag = tmp_path / "healthy"
    flag.touch()
    env = {"ETCDCTL_ENDPOINTS": etcd_server.endpoint, "FLEETOP_PREFIX": etcd_prefix}
    check = ("--exec", f"test -e {flag}")
    side = Sidekick(tmp_path, register_args(backend.port, check=check), env)
    try:
        await eventually(lambda: value(gateway) is not None, what="registered by the exec check")
        flag.unlink()
        await eventually(lambda: value(gateway) is None, timeout=30, what="deleted when the command fails")
        assert side.stop() == 0
    finally:
        side.close()
    tcp = Sidekick(tmp_path, register_args(backend.port, check=("--tcp",)), env)
    try:
        await eventually(lambda: value(gateway) is not None, what="registered by the tcp check")
        backend.stop()
        await eventually(lambda: value(gateway) is None, timeout=30, what="deleted when the port closes")
    finally:
        tcp.close()


async def test_sigkill_leaves_the_key_to_its_lease(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, gateway: Gateway, backend: Backend
) -> None:
    env = {"ETCDCTL_ENDPOINTS": etcd_server.endpoint, "FLEETOP_PREFIX": etcd_prefix}
    side = Sidekick(tmp_path, register_args(backend.port, ttl="2s"), env)
    try:
        await eventually(lambda: value(gateway) is not None, what="registered")
        side.proc.kill()
        side.proc.wait(10)
        assert value(gateway) is not None  # nobody deleted it ...
        await eventually(lambda: value(gateway) is None, what="expired with its lease")  # ... its lease did
    finally:
        side.close()


async def test_etcd_that_lost_everything_gets_the_key_back(tmp_path: Path, backend: Backend) -> None:
    server = EtcdServer(tmp_path / "etcd-a")
    server.start()
    client = Gateway(settings_from({"endpoints": server.endpoint}, {}))
    args = ["--endpoints", server.endpoint, *register_args(backend.port, ttl="3s")]
    side = Sidekick(tmp_path, args)
    try:
        await eventually(lambda: value(client) is not None, what="registered")
        server.kill()
        server = EtcdServer(tmp_path / "etcd-b", client_port=server.client_port, peer_port=server.peer_port)
        server.start()  # same address, empty data: the lease and the key are gone
        await eventually(
            lambda: value(client) is not None, timeout=60, what="registered again on a new lease"
        )
        assert side.stop() == 0
        assert value(client) is None
    finally:
        side.close()
        client.close()
        server.stop()


def anonymous(secure_etcd: SecureEtcd, user: str) -> dict[str, str]:
    """etcdctl's variables with the client certificate that has no CommonName (the gateway's kind)."""
    env = secure_etcd.environ(user)  # the password travels in ETCDCTL_USER, never in argv
    env["ETCDCTL_CERT"] = str(secure_etcd.files.anonymous_cert)
    env["ETCDCTL_KEY"] = str(secure_etcd.files.anonymous_key)
    return env


async def registers_then_withdraws(side: Sidekick, client: Gateway, what: str) -> str:
    """Wait for ``side``'s key, stop it (exit 0): the key is gone. Its log."""
    try:
        await eventually(lambda: value(client) is not None, what=what)
        assert side.stop() == 0
        assert value(client) is None
    finally:
        side.close()
        client.close()
    return side.log.read_text()


async def test_tls_client_certificate_and_user(
    tmp_path: Path, secure_etcd: SecureEtcd, backend: Backend
) -> None:
    side = Sidekick(tmp_path, register_args(backend.port), anonymous(secure_etcd, "root"))
    client = Gateway(settings_from({}, anonymous(secure_etcd, "root")))
    log = await registers_then_withdraws(side, client, "registered over TLS as root")
    assert secure_etcd.root_password not in log
    assert "gRPC" not in log  # the lean path all along


async def test_a_certificate_with_a_common_name_registers_through_grpc(
    tmp_path: Path, secure_etcd: SecureEtcd, backend: Backend
) -> None:
    side = Sidekick(tmp_path, register_args(backend.port), secure_etcd.environ("root"))
    client = Gateway(settings_from({}, anonymous(secure_etcd, "root")))
    log = await registers_then_withdraws(side, client, "registered through the gRPC client")
    assert "CommonName" in log and "gRPC client instead" in log
    assert secure_etcd.root_password not in log


async def test_a_user_without_the_permission_exits_1(
    tmp_path: Path, secure_etcd: SecureEtcd, backend: Backend
) -> None:
    side = Sidekick(tmp_path, register_args(backend.port), anonymous(secure_etcd, "limited"))
    try:
        assert side.proc.wait(60) == 1
    finally:
        side.close()
    assert "permission denied" in side.log.read_text()


@pytest.mark.parametrize(
    ("flags", "where"),
    [
        (["--address", "127.0.0.1:80; }"], "--address"),
        (["--service", "Web"], "--service"),
        (["--instance", "../x"], "--instance"),
        (["--ttl", "0.5s"], "--ttl"),
        (["--interval", "soon"], "--interval"),
        (["--http", "no-slash"], "--http"),
        (["--tcp", "--http", "/"], "--http and --tcp"),
        (["--prefix", "/a/../b"], "--prefix"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(flags: list[str], where: str) -> None:
    base = {"--service": "web", "--instance": "8001", "--address": "127.0.0.1:8001"}
    args = [item for name, default in base.items() if name not in flags for item in (name, default)]
    with pytest.raises(InputError) as caught:
        build_config(parser().parse_args([*args, *flags]))
    assert all(part in str(caught.value) for part in where.split(" and "))


def test_config_matches_the_units_flags() -> None:
    args = ["--service", "web", "--instance", "8001", "--address", "[fd00::5]:8001", "--http", "/healthz",
            "--interval", "500ms", "--ttl", "2.5s", "--prefix", "/test"]  # fmt: skip
    config = build_config(parser().parse_args(args))
    assert config == Config("/test/8001", "fd00::5", 8001, config.check, 0.5, 3)
    assert config.value == "[fd00::5]:8001"
    assert config.check.describe() == "http GET /healthz"


def test_bad_address_exits_2_and_writes_nothing(
    etcd_server: EtcdServer, gateway: Gateway, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetop.cli.main",
            "--endpoints",
            etcd_server.endpoint,
            "register",
            "--service",
            "web",
            "--instance",
            "8001",
            "--address",
            "nohost",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--address" in done.stderr
    assert gateway.range("/services/", prefix=True) == []
