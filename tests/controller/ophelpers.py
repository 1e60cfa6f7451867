"""Real processes for operator tests: ``fleetop node`` and ``fleetop run`` as children, stopped by PID.

No doubles: the operator talks to the embedded fleet engine over a unix socket and to the session's
real etcd; units are real ``/bin/sleep`` processes that the node supervises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fleetop.config import EtcdSettings
from fleetop.etcd.client import Etcd
from fleetop.etcd.model import KeyValue
from fleetop.fleet.client import FleetClient
from fleetop.fleet.model import Unit, UnitState
from fleetop.fleet.ownership import owned_by
from fleetop.http import HttpSession, Timeouts
from fleetop.keys import Keys, Kind
from fleetop.local.etcdserver import free_port
from fleetop.models import Event, ServiceStatus

T = TypeVar("T")
NODE_MAIN = "from fleetop.node.cli import node_app; node_app()"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEETCTL_", "FLEETOP_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal exactly this child (by its PID) and wait; SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Node:
    """``fleetop node --machines N`` on a unix socket in ``base``."""

    base: Path
    machines: int = 3
    proc: subprocess.Popen[bytes] | None = None
    etcd_endpoint: str | None = None
    """Published to units in ``/etc/etcd.environment`` (sidekicks need it); else the node's default."""
    extra_args: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"unix://{self.base / 'fleet.sock'}"

    def start(self, timeout: float = 30.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.base / "node.log", "ab")  # noqa: SIM115 - the child keeps it
        args = [sys.executable, "-c", NODE_MAIN, "--machines", str(self.machines)]
        args += ["--state-dir", str(self.base / "state"), "--listen", self.endpoint]
        if self.etcd_endpoint:
            args += ["--etcd-endpoints", self.etcd_endpoint]
        args += ["--pace", os.environ.get("FLEETOP_NODE_PACE", "0.1")]  # _env() drops FLEETOP_*
        args += self.extra_args
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not (self.base / "fleet.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"fleetop node did not start: {(self.base / 'node.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30.0)

    async def machine(self, machine: str, action: str) -> None:
        """``fleetop node machine stop|start`` through the node's own endpoint."""
        async with HttpSession(self.endpoint, timeouts=Timeouts.uniform(30.0)) as session:
            resp = await session.request("POST", f"/fleetop-node/v1/machines/{machine}/{action}")
        assert resp.status < 400, resp.text


@dataclass
class Operator:
    """``fleetop run`` as a child process with short leader-election timings."""

    base: Path
    name: str
    etcd_endpoint: str
    prefix: str
    fleet_endpoint: str
    timings: tuple[float, float, float] = (4.0, 2.0, 0.5)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()

    @property
    def log_path(self) -> Path:
        return self.base / f"operator-{self.name}.log"

    @property
    def identity(self) -> str:
        return f"test-{self.name}"

    def start(self) -> Operator:
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        lease, renew, retry = self.timings
        args = [sys.executable, "-m", "fleetop.controller.cli", "run", "--endpoints", self.etcd_endpoint]
        args += [
            "--prefix",
            self.prefix,
            "--fleet-endpoint",
            self.fleet_endpoint,
            "--identity",
            self.identity,
        ]
        args += ["--lease-duration", str(lease), "--renew-deadline", str(renew), "--retry-period", str(retry)]
        args += ["--metrics-address", f"127.0.0.1:{self.metrics_port}", "--log-level", "DEBUG"]
        args += self.extra_args
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
        )
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    async def metrics(self) -> str:
        async with HttpSession(f"http://127.0.0.1:{self.metrics_port}", timeouts=Timeouts.uniform(5.0)) as s:
            return (await s.request("GET", "/metrics")).text


class _Child(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...


C = TypeVar("C", bound=_Child)


@contextmanager
def running(child: C) -> Iterator[C]:
    """Start a ``Node`` or ``Operator`` for the body of a ``with`` (a fixture's life), then stop it by PID."""
    child.start()
    try:
        yield child
    finally:
        child.stop()


@asynccontextmanager
async def prefixed_etcd(endpoint: str, prefix: str) -> AsyncIterator[Etcd]:
    """An etcd client on ``endpoint`` that sees only the keys below ``prefix`` (a test module's own)."""
    async with await Etcd.connect(EtcdSettings(endpoints=(endpoint,), prefix=prefix)) as client:
        yield client


async def status_of(etcd: Etcd, name: str) -> ServiceStatus | None:
    """The status the operator wrote for service ``name``, if any."""
    kv = await etcd.get(Keys().status("services", name))
    return None if kv is None else ServiceStatus.model_validate_json(kv.value)


async def events_of(etcd: Etcd, name: str, kind: Kind = "services") -> list[Event]:
    """The events the operator recorded for the service (or proxy) ``name``."""
    items, _ = await etcd.list(Keys().events(kind, name))
    return [Event.model_validate_json(kv.value) for kv in items]


def owned_mains(units: list[Unit], service: str) -> list[Unit]:
    """The main units fleetop owns for ``service``."""
    found = []
    for unit in units:
        owner = owned_by(unit.options)
        if owner is not None and owner.service == service and owner.role == "main":
            found.append(unit)
    return found


async def running_mains(fleet: FleetClient, service: str) -> dict[str, UnitState]:
    """Owned main units of ``service`` that run their current file: name -> state."""
    units = {u.name: u for u in owned_mains(await fleet.list_units(), service)}
    running: dict[str, UnitState] = {}
    for state in await fleet.list_states():
        unit = units.get(state.name)
        current = unit is not None and state.hash == unit.hash and state.machine_id == unit.machine_id
        if current and state.active_state == "active" and state.sub_state == "running":
            running[state.name] = state
    return running


def http_service(replicas: int, base: int) -> bytes:
    """A service of ``python3 -m http.server`` instances on ``base`` + instance, each with a sidekick
    that checks ``/`` every half second and registers for 5 s."""
    body: dict[str, Any] = {
        "replicas": replicas,
        "ports": {"base": base},
        "unit": {"execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"},
        "discovery": {
            "sidekick": True,
            "check": {"http": "/", "interval": "0.5s", "timeout": "1s"},
            "ttl": "5s",
        },
    }
    return json.dumps(body).encode()


def spec(replicas: int, exec_start: str = "/bin/sleep 1000", **extra: Any) -> bytes:
    body: dict[str, Any] = {"replicas": replicas, "unit": {"execStart": exec_start}, **extra}
    return json.dumps(body).encode()


class FakeCache:
    """A registration cache: its keys and a revision that moves with every write; counts reads."""

    def __init__(self, values: dict[str, bytes] | None = None) -> None:
        self.values = dict(values or {})
        self.revision = 1
        self.reads = 0

    def write(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        self.revision += 1

    def under(self, prefix: str) -> list[KeyValue]:
        self.reads += 1
        return [KeyValue(k, v, 1, 1, 1, 0) for k, v in sorted(self.values.items()) if k.startswith(prefix)]
