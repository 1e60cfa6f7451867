"""The tour on an etcd with TLS, client certificates and user authentication, every part with its own
user and only the role of ``scripts/etcd-roles``: the operator as ``fleetop-operator``, the sidekicks
the operator writes as ``fleetop-sidekick`` and the managed proxy's agent and instance as
``fleetop-agent``, each from its own credentials file (``fleetop run --sidekick-credentials`` /
``--agent-credentials``), and a person as ``fleetop-user``. Every part works, and each user is
refused outside its keys. Real etcd, ``fleetop node``, operator, nginx and HTTP backends on loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2ehelpers import start_node, stop_process
from test_proxies_e2e import handlers, proxy_spec, web_spec

from etcd_tls import SecureEtcd, start_secure_etcd
from fleetop.config import EtcdSettings
from fleetop.errors import EtcdDenied
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import free_port
from fleetop.models import AgentStatus
from waiting import eventually

pytestmark = pytest.mark.slow
ROLES_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "etcd-roles"
USERS = {
    "op": "fleetop-operator",
    "side": "fleetop-sidekick",
    "agent": "fleetop-agent",
    "alice": "fleetop-user",
}
CONVERGE = 90.0


@dataclass
class SecureStack:
    base: Path
    secure: SecureEtcd
    passwords: dict[str, str]
    proxy_root: Path

    def credentials(self, user: str) -> dict[str, str]:
        env = self.secure.environ(None)
        env["ETCDCTL_USER"] = user
        env["ETCDCTL_PASSWORD"] = self.passwords[user]
        return env

    def settings(self, user: str) -> EtcdSettings:
        return self.secure.settings(user, self.passwords[user])


def _write_credentials(path: Path, env: dict[str, str]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{key}={value}\n" for key, value in env.items() if key.startswith("ETCDCTL_"))
    return path


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEETCTL_", "FLEETOP_"))}
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**base, **env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, etcdctl_bin: str) -> Iterator[SecureStack]:
    base = tmp_path_factory.mktemp("least-privilege")
    secure = start_secure_etcd(base / "etcd", etcdctl_bin)
    node = operator = None
    try:
        env = {**os.environ, **secure.environ("root"), "ETCDCTL": etcdctl_bin}
        done = subprocess.run(
            [str(ROLES_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        for user, role in USERS.items():
            secure.etcdctl_run("user", "add", user, f"--new-user-password={passwords[user]}", user="root")
            secure.etcdctl_run("user", "grant-role", user, role, user="root")
        stack = SecureStack(base, secure, passwords, base / "proxies")
        side = _write_credentials(base / "sidekick.env", stack.credentials("side"))
        agent = _write_credentials(base / "agent.env", stack.credentials("agent"))
        node, fleet = start_node(base, f"https://{secure.server.endpoint}")
        args = [sys.executable, "-m", "fleetop.controller.cli", "run", "--fleet-endpoint", fleet]
        args += ["--identity", "least", "--proxy-root", str(stack.proxy_root), "--metrics-address", "off"]
        args += ["--lease-duration", "4", "--renew-deadline", "2", "--retry-period", "0.5"]
        args += ["--sidekick-credentials", str(side), "--agent-credentials", str(agent)]
        operator = _spawn(args, base / "operator.log", stack.credentials("op"))
        yield stack
    finally:
        if operator is not None:
            stop_process(operator)
        if node is not None:
            stop_process(node, timeout=60.0)
        secure.server.stop()


async def _put(stack: SecureStack, user: str, key: str, body: dict[str, object] | str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    async with await Etcd.connect(stack.settings(user)) as etcd:
        await etcd.put(key, text)


async def _denied(stack: SecureStack, user: str, key: str) -> bool:
    try:
        await _put(stack, user, key, "x")
    except EtcdDenied:
        return True
    return False


async def _list(stack: SecureStack, prefix: str) -> dict[str, bytes]:
    async with await Etcd.connect(stack.secure.settings("root")) as etcd:
        items, _ = await etcd.list(prefix)
    return {kv.key: kv.value for kv in items}


async def test_the_tour_with_each_role_its_own_user(stack: SecureStack) -> None:
    port = free_port()
    await _put(stack, "alice", "/desired/services/hello", web_spec(2, 8301))
    await _put(stack, "alice", "/desired/proxies/edge", proxy_spec("nginx", port, "hello"))

    async def registered() -> dict[str, bytes] | None:
        found = await _list(stack, "/services/hello/")
        return found if len(found) == 2 else None

    await eventually(registered, CONVERGE, "two registrations written by the sidekick user")

    async def both_served() -> set[str] | None:
        seen = await handlers(port, 20)
        return seen if seen is not None and len(seen) == 2 else None

    await eventually(
        both_served, CONVERGE, "nginx serving both instances (agent and proxy as the agent user)"
    )
    reports = await _list(stack, Keys().agent_status("edge", ""))
    assert reports and all(AgentStatus.model_validate_json(v).error is None for v in reports.values())
    assert await _list(stack, "/status/proxies/edge/agents/") == {}  # nothing in the operator's keys

    await _put(stack, "alice", "/desired/services/hello", web_spec(1, 8301))

    async def one_served() -> set[str] | None:
        seen = await handlers(port, 20)
        return seen if seen is not None and len(seen) == 1 else None

    await eventually(one_served, CONVERGE, "nginx following the scale-down")

    runtime = stack.proxy_root / "edge"
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o750
    for log in ("error.log", "access.log"):
        assert stat.S_IMODE((runtime / log).stat().st_mode) == 0o640
    env_files = list((stack.base / "node").rglob("*environment"))
    assert len(env_files) >= 6  # environment and etcd.environment of each machine
    for env_file in env_files:
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, env_file


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("side", "/desired/services/hello"),
        ("side", "/status/services/hello"),
        ("side", "/fleetop/proxies/edge/config"),
        ("agent", "/status/proxies/edge"),
        ("agent", "/desired/proxies/edge"),
        ("agent", "/services/hello/8301"),
        ("op", "/desired/services/hello"),
        ("op", "/services/hello/8301"),
        ("alice", "/status/services/hello"),
        ("alice", "/fleetop/proxies/edge/config"),
    ],
)
async def test_each_role_is_refused_outside_its_keys(stack: SecureStack, user: str, key: str) -> None:
    assert await _denied(stack, user, key)
