"""The least-privilege roles of scripts/etcd-roles, on an etcd with TLS and authentication: each part can
do its job with its role, and nothing outside it."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcd_tls import SecureEtcd, start_secure_etcd
from fleetop.errors import EtcdDenied
from fleetop.etcd.client import Etcd

ROLES_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "etcd-roles"
USERS = {
    "op": "fleetop-operator",
    "side": "fleetop-sidekick",
    "agent": "fleetop-agent",
    "alice": "fleetop-user",
    "sideweb": "fleetop-sidekick-web",
}


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, etcdctl_bin: str
) -> Iterator[tuple[SecureEtcd, dict[str, str]]]:
    secure = start_secure_etcd(tmp_path_factory.mktemp("roles-etcd"), etcdctl_bin)
    try:
        env = {**os.environ, **secure.environ("root"), "ETCDCTL": etcdctl_bin}
        done = subprocess.run(
            [str(ROLES_SCRIPT), "--sidekick-service", "web"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        passwords = {}
        for user, role in USERS.items():
            passwords[user] = secrets.token_urlsafe(12)
            secure.etcdctl_run("user", "add", user, f"--new-user-password={passwords[user]}", user="root")
            secure.etcdctl_run("user", "grant-role", user, role, user="root")
        yield secure, passwords
    finally:
        secure.server.stop()


async def _can_write(secure: SecureEtcd, user: str, password: str, key: str, *, lease: bool = False) -> bool:
    async with await Etcd.connect(secure.settings(user, password)) as etcd:
        try:
            lease_id = await etcd.grant(10) if lease else 0
            await etcd.put(key, "x", lease=lease_id)
        except EtcdDenied:
            return False
        return True


async def _can_read(secure: SecureEtcd, user: str, password: str, prefix: str) -> bool:
    async with await Etcd.connect(secure.settings(user, password)) as etcd:
        try:
            await etcd.list(prefix)
        except EtcdDenied:
            return False
        return True


@pytest.mark.parametrize(
    ("user", "key", "allowed"),
    [
        ("alice", "/desired/services/web", True),
        ("alice", "/status/services/web", False),
        ("alice", "/services/web/8001", False),
        ("op", "/status/services/web", True),
        ("op", "/fleetop/leader", True),
        ("op", "/fleetop/proxies/edge/config", True),
        ("op", "/desired/services/web", False),
        ("op", "/services/web/8001", False),
        ("side", "/services/web/8001", True),
        ("side", "/desired/services/web", False),
        ("side", "/status/services/web", False),
        ("agent", "/status/agents/edge/m1", True),
        ("agent", "/status/proxies/edge", False),
        ("agent", "/status/proxies/edge/agents/m1", False),
        ("agent", "/fleetop/proxies/edge/config", False),
        ("agent", "/desired/proxies/edge", False),
        ("agent", "/services/web/8001", False),
        ("sideweb", "/services/web/8001", True),
        ("sideweb", "/services/webby/8001", False),
        ("sideweb", "/services/api/8001", False),
        ("sideweb", "/desired/services/web", False),
    ],
)
async def test_writes(secured: tuple[SecureEtcd, dict[str, str]], user: str, key: str, allowed: bool) -> None:
    secure, passwords = secured
    assert (
        await _can_write(secure, user, passwords[user], key, lease=user in ("side", "sideweb", "op"))
        is allowed
    )


@pytest.mark.parametrize(
    ("user", "prefix", "allowed"),
    [
        ("op", "/desired/", True),
        ("op", "/services/", True),
        ("agent", "/fleetop/proxies/", True),
        ("agent", "/services/", True),
        ("agent", "/desired/", False),
        ("side", "/desired/", False),
        ("sideweb", "/services/web/", True),
        ("sideweb", "/services/", False),
        ("alice", "/status/", True),
        ("alice", "/fleetop/", True),
    ],
)
async def test_reads(
    secured: tuple[SecureEtcd, dict[str, str]], user: str, prefix: str, allowed: bool
) -> None:
    secure, passwords = secured
    assert await _can_read(secure, user, passwords[user], prefix) is allowed


@pytest.mark.parametrize("bad", ["Web", "web_1", "-web", "web=/x/../y", "web=relative"])
def test_a_bad_sidekick_service_is_refused_before_anything_is_created(bad: str) -> None:
    env = {**os.environ, "ETCDCTL": "/bin/false"}  # never reached: the arguments are checked first
    done = subprocess.run(
        [str(ROLES_SCRIPT), "--sidekick-service", bad],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--sidekick-service" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def machine_agent(secured: tuple[SecureEtcd, dict[str, str]], etcdctl_bin: str) -> str:
    """User ``agent-m1`` with the role ``scripts/etcd-roles --agent-machine m1 edge api`` creates."""
    secure, _ = secured
    env = {**os.environ, **secure.environ("root"), "ETCDCTL": etcdctl_bin}
    argv = [str(ROLES_SCRIPT), "--agent-machine", "m1", "edge", "api"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    password = secrets.token_urlsafe(12)
    secure.etcdctl_run("user", "add", "agent-m1", f"--new-user-password={password}", user="root")
    secure.etcdctl_run("user", "grant-role", "agent-m1", "fleetop-agent-m1", user="root")
    return password


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("/status/agents/edge/m1", True),
        ("/status/agents/api/m1", True),
        ("/status/agents/edge/m2", False),
        ("/status/agents/edge/m10", False),
        ("/status/agents/other/m1", False),
        ("/status/proxies/edge", False),
        ("/fleetop/proxies/edge/config", False),
    ],
)
async def test_a_machine_agent_writes_only_its_own_machines_reports(
    secured: tuple[SecureEtcd, dict[str, str]], machine_agent: str, key: str, allowed: bool
) -> None:
    secure, _ = secured
    assert await _can_write(secure, "agent-m1", machine_agent, key, lease=True) is allowed


async def test_a_machine_agent_reads_only_its_proxies_configs(
    secured: tuple[SecureEtcd, dict[str, str]], machine_agent: str
) -> None:
    secure, _ = secured
    assert await _can_read(secure, "agent-m1", machine_agent, "/fleetop/proxies/edge/config")
    assert not await _can_read(secure, "agent-m1", machine_agent, "/fleetop/proxies/other/config")
    assert not await _can_read(secure, "agent-m1", machine_agent, "/status/proxies/")
    assert await _can_read(secure, "agent-m1", machine_agent, "/services/")  # the registrations it follows
    assert not await _can_write(secure, "agent-m1", machine_agent, "/services/web/8001", lease=True)


def test_the_machine_role_refuses_bad_names(
    secured: tuple[SecureEtcd, dict[str, str]], etcdctl_bin: str
) -> None:
    secure, _ = secured
    env = {**os.environ, **secure.environ("root"), "ETCDCTL": etcdctl_bin}
    for argv in (
        ["--agent-machine", "m/1", "edge"],
        ["--agent-machine", "m1", "Edge_X"],
        ["--agent-machine", "m1"],
    ):
        done = subprocess.run(
            [str(ROLES_SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, (argv, done.stderr)
