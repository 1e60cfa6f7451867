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
from fleetop.etcd import Etcd

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
        ("agent", "/status/proxies/edge/agents/m1", True),
        ("agent", "/fleetop/proxies/edge/config", False),
        ("agent", "/desired/proxies/edge", False),
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
