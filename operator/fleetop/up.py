"""``fleetop up``: the whole stack on one host — an embedded etcd, ``fleetop node`` and ``fleetop run``.

Each part is an ordinary child process in its own session, started in order (etcd, node, operator) and
stopped in reverse order, each by the PID it was started with. A small JSON file in the state dir
(``up.json``) records what runs where, so ``fleetop status`` can find the endpoints and ``fleetop down``
can stop a detached stack. State (etcd's data, the node's units) lives in the state dir and survives
``down``/``up``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetop.errors import ConfigError, FleetopError
from fleetop.etcdserver import EtcdServer, free_port, pid_alive, port_is_free
from fleetop.node import procgroups

DEFAULT_ETCD_PORT = 2379
NODE_STOP_TIMEOUT = 120.0  # the node stops every unit first (each within its TimeoutStopSec)
STACK_FILE = "up.json"
LOG = Callable[[str], None]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetop"


def next_free_port(start: int, avoid: set[int] | None = None) -> int:
    """``start`` if free, else the next free one above it (etcdctl users expect 2379 when possible)."""
    avoid = avoid or set()
    for port in range(start, start + 200):
        if port not in avoid and port_is_free(port):
            return port
    return free_port()


@dataclass
class UpConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    machines: int = 3
    etcd_port: int = DEFAULT_ETCD_PORT
    metrics_port: int = 9464
    prefix: str = ""
    python: str = sys.executable

    @property
    def fleet_socket(self) -> Path:
        return self.state_dir / "node" / "fleet.sock"

    @property
    def fleet_endpoint(self) -> str:
        return f"unix://{self.fleet_socket}"


def fleetop_command(config: UpConfig, *args: str) -> list[str]:
    return [config.python, "-m", "fleetop.cli.main", *args]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float) -> None:
        """SIGTERM the child (it stops what it runs in order), SIGKILL its group after ``timeout``."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


class Stack:
    """The running stack: start in order, stop in reverse order, describe for humans and scripts."""

    def __init__(self, config: UpConfig, log: LOG) -> None:
        self.config = config
        self.log = log
        self.etcd: EtcdServer | None = None
        self.children: list[Child] = []

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None
        return self.etcd.endpoint

    def environment(self) -> dict[str, str]:
        env = {"ETCDCTL_ENDPOINTS": self.etcd_endpoint, "FLEETCTL_ENDPOINT": self.config.fleet_endpoint}
        if self.config.prefix:
            env["FLEETOP_PREFIX"] = self.config.prefix
        return env

    def start(self) -> None:
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        (state / "logs").mkdir(exist_ok=True)
        self._start_etcd()
        self._start_child(
            "node",
            "node",
            "--machines",
            str(self.config.machines),
            "--state-dir",
            str(state / "node"),
            "--listen",
            self.config.fleet_endpoint,
        )
        self._wait_for(self.config.fleet_socket.exists, "fleetop node's API socket", 30)
        metrics = f"127.0.0.1:{next_free_port(self.config.metrics_port)}"
        self.metrics_address = metrics
        # Managed proxies keep their files under the state dir (the default, /var/lib/fleetop, needs root).
        proxies = str(state / "proxies")
        self._start_child("operator", "run", "--metrics-address", metrics, "--proxy-root", proxies)
        self.write_record()

    def _start_etcd(self) -> None:
        state = self.config.state_dir
        record = read_record(state)
        port = record.get("etcdPort") if record else None
        if not isinstance(port, int) or not port_is_free(port):
            port = next_free_port(self.config.etcd_port)
        peer = next_free_port(port + 1, {port})
        self.etcd = EtcdServer(
            state / "etcd", client_port=port, peer_port=peer, log_file=state / "logs" / "etcd.log"
        )
        self.etcd.start()
        if port != self.config.etcd_port:
            self.log(f"port {self.config.etcd_port} is taken; etcd listens on {port} instead")

    def _start_child(self, name: str, *args: str) -> None:
        log_path = self.config.state_dir / "logs" / f"{name}.log"
        env = {**os.environ, **self.environment(), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                fleetop_command(self.config, *args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        time.sleep(0.2)
        if not child.alive():
            raise FleetopError(f"{name} exited at start-up (status {process.returncode}); see {log_path}")

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for child in self.children:
                if not child.alive():
                    raise FleetopError(
                        f"{child.name} exited (status {child.process.returncode}); see {child.log_path}"
                    )
            time.sleep(0.1)
        raise FleetopError(f"{what} was not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Operator first (it resigns), then the node (it stops its units in order), then etcd.

        Units run in their own process groups, so a node that had to be killed would leave them behind:
        its records of them are then used to stop them too."""
        for child in reversed(self.children):
            self.log(f"stopping {child.name} (pid {child.pid})")
            child.stop(NODE_STOP_TIMEOUT if child.name == "node" else timeout)
            if child.name == "node":
                left = procgroups.cleanup_orphans(self.config.state_dir / "node" / "supervisor" / "run", ())
                if left:
                    self.log(f"stopped {left} unit process group(s) the node left behind")
        if self.etcd is not None:
            self.log(f"stopping etcd (pid {self.etcd.process.pid if self.etcd.process else '-'})")
            self.etcd.stop()
        remove_record(self.config.state_dir)

    def failed_child(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)

    def record(self) -> dict[str, object]:
        assert self.etcd is not None and self.etcd.process is not None
        return {
            "pid": os.getpid(),
            "stateDir": str(self.config.state_dir),
            "etcdEndpoint": self.etcd_endpoint,
            "etcdPort": self.etcd.client_port,
            "fleetEndpoint": self.config.fleet_endpoint,
            "metricsAddress": getattr(self, "metrics_address", ""),
            "machines": self.config.machines,
            "prefix": self.config.prefix,
            "processes": {"etcd": self.etcd.process.pid, **{c.name: c.pid for c in self.children}},
        }

    def write_record(self) -> None:
        path = self.config.state_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record(), indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def read_record(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((state_dir / STACK_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def remove_record(state_dir: Path) -> None:
    (state_dir / STACK_FILE).unlink(missing_ok=True)


def stop_detached(state_dir: Path, timeout: float = 300.0) -> bool:
    """``fleetop down``: SIGTERM the detached ``fleetop up`` (it stops everything in order) and wait."""
    record = read_record(state_dir)
    if record is None:
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid) or not _is_fleetop(pid):
        remove_record(state_dir)
        raise ConfigError(
            f"the stack recorded in {state_dir / STACK_FILE} is not running (stale record removed)"
        )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        raise FleetopError(f"fleetop up (pid {pid}) did not stop within {timeout:.0f} s")
    return True


def _is_fleetop(pid: int) -> bool:
    """Never signal a PID that was recycled by an unrelated process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"fleetop" in cmdline
