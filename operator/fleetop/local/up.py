"""``fleetop up``: the whole stack on one host — an embedded etcd, ``fleetop node`` and ``fleetop run``.

Each part is an ordinary child process in its own session, started in order (etcd, node, operator) and
stopped in reverse order, each by the PID it was started with. A small JSON file in the state dir
(``up.json``) records what runs where, so ``fleetop status`` can find the endpoints and ``fleetop down``
can stop a detached stack. State (etcd's data, the node's units) lives in the state dir and survives
``down``/``up``.

Once the stack is up, ``up`` supervises its parts as systemd's ``Restart=`` would, with a growing delay
(:func:`restart_backoff`: 1 s doubling to 30 s, back to 1 s after a part has run for a minute): a part
that exits is started again with the same arguments, and the event is printed. Nothing else stops with it. The
operator is a controller: while it is away nothing converges, but the units the node runs (services,
their sidekicks, managed proxies and their agents) keep serving, and a new operator takes over when
the old one's leader lease has expired. A restarted etcd comes back with its data, and everything
reconnects to it. A node that died left its units running without a supervisor; the new node kills
them (``cleanup_orphans``) and starts again every unit it had launched, from its persisted state. Any
exit counts: inside ``up`` a part never has a reason to stop on its own. Only ``fleetop down``,
SIGTERM or Ctrl-C stop the stack, and then every part is stopped and nothing is restarted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetop.backoff import Backoff
from fleetop.errors import ConfigError, FleetopError
from fleetop.filemodes import make_dir, open_log
from fleetop.local.etcdserver import EtcdServer, free_port, port_is_free
from fleetop.node import procgroups

DEFAULT_ETCD_PORT = 2379
NODE_STOP_TIMEOUT = 120.0  # the node stops every unit first (each within its TimeoutStopSec)
STOP_TIMEOUT = 30.0
START_TIMEOUT = 30.0
SUPERVISE_INTERVAL = 0.5
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


def restart_backoff() -> Backoff:
    """The delay before a part is started again: 1 s after the first exit, doubling with each exit
    that follows quickly, at most 30 s; a part that ran a minute before it exited starts over."""
    return Backoff(1.0, 30.0, reset_after=60.0)


def describe_exit(returncode: int) -> str:
    """``status 1`` or ``killed by SIGKILL`` (pure)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"status {returncode}"


@dataclass(eq=False)
class Child:
    """One part of the stack: how to start it, the process it runs as, and when to start it again."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    stop_timeout: float = STOP_TIMEOUT
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    backoff: Backoff = field(default_factory=restart_backoff)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_text(self) -> str:
        return describe_exit(self.process.returncode or 0) if self.process is not None else "not started"

    def spawn(self) -> None:
        """Start the process, in its own session, appending its output to its log."""
        with open_log(self.log_path) as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def stop(self) -> None:
        """SIGTERM the child (it stops what it runs in order), SIGKILL its group after its timeout."""
        self.restart_at = None
        if self.process is None or not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


class Stack:
    """The running stack: start in order, supervise, stop in reverse order, describe for humans and
    scripts. ``stopping`` is set by signal handlers; once set, nothing is started again."""

    def __init__(self, config: UpConfig, log: LOG) -> None:
        self.config = config
        self.log = log
        self.stopping = threading.Event()
        self.etcd: EtcdServer | None = None
        self.metrics_address = ""
        self.children: list[Child] = []
        self._lock = threading.Lock()

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None
        return self.etcd.endpoint

    def environment(self) -> dict[str, str]:
        env = {"ETCDCTL_ENDPOINTS": self.etcd_endpoint, "FLEETCTL_ENDPOINT": self.config.fleet_endpoint}
        if self.config.prefix:
            env["FLEETOP_PREFIX"] = self.config.prefix
        return env

    def child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    # ---- starting ------------------------------------------------------------------------------------

    def start(self) -> None:
        state = self.config.state_dir
        refuse_if_running(state)
        make_dir(state)
        make_dir(state / "logs")
        self._start_etcd()
        node_args = ["node", "--machines", str(self.config.machines), "--state-dir", str(state / "node")]
        self._start_child("node", *node_args, "--listen", self.config.fleet_endpoint)
        self._wait_for(lambda: unix_socket_accepts(self.config.fleet_socket), "fleetop node's API socket")
        self.metrics_address = f"127.0.0.1:{next_free_port(self.config.metrics_port)}"
        # Managed proxies keep their files under the state dir (the default, /var/lib/fleetop, needs root).
        proxies = str(state / "proxies")
        self._start_child(
            "operator", "run", "--metrics-address", self.metrics_address, "--proxy-root", proxies
        )
        self.write_record()

    def _start_etcd(self) -> None:
        state = self.config.state_dir
        record = read_record(state)
        port = record.get("etcdPort") if record else None
        if not isinstance(port, int) or not port_is_free(port):
            port = next_free_port(self.config.etcd_port)
        peer = next_free_port(port + 1, {port})
        self.etcd = EtcdServer(state / "etcd", client_port=port, peer_port=peer)
        make_dir(self.etcd.data_dir)
        self._add(Child("etcd", self.etcd.command(), state / "logs" / "etcd.log", stop_timeout=10.0))
        host, port = self.etcd.host, self.etcd.client_port
        self._wait_for(lambda: tcp_accepts(host, port), f"etcd on {self.etcd.endpoint}")
        time.sleep(0.2)  # the port answers before the member is ready to serve; give raft a moment
        if port != self.config.etcd_port:
            self.log(f"port {self.config.etcd_port} is taken; etcd listens on {port} instead")

    def _start_child(self, name: str, *args: str) -> None:
        env = {**os.environ, **self.environment(), "PYTHONUNBUFFERED": "1"}
        log_path = self.config.state_dir / "logs" / f"{name}.log"
        timeout = NODE_STOP_TIMEOUT if name == "node" else STOP_TIMEOUT
        child = self._add(Child(name, fleetop_command(self.config, *args), log_path, env, timeout))
        time.sleep(0.2)
        if not child.alive():
            raise FleetopError(f"{name} exited at start-up ({child.exit_text()}); see {log_path}")

    def _add(self, child: Child) -> Child:
        with self._lock:
            child.spawn()
            self.children.append(child)
        return child

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise FleetopError("interrupted")
            if ready():
                return
            for child in self.children:
                if not child.alive():
                    raise FleetopError(f"{child.name} exited ({child.exit_text()}); see {child.log_path}")
            time.sleep(0.1)
        raise FleetopError(f"{what} was not ready within {timeout:.0f} s")

    # ---- supervising ---------------------------------------------------------------------------------

    def supervise(self, interval: float = SUPERVISE_INTERVAL) -> None:
        """Until ``stopping`` is set: start again every part that exited, after its backoff."""
        while not self.stopping.wait(interval):
            try:
                self.tend(time.monotonic())
            except Exception as exc:  # never let one bad pass end supervision
                self.log(f"supervising the stack failed: {exc!r}")

    def tend(self, now: float) -> None:
        """One supervision pass: note parts that exited, start those whose delay is over."""
        with self._lock:
            if self.stopping.is_set():
                return
            changed = False
            for child in self.children:
                if child.restart_at is None and not child.alive():
                    ran_for = now - child.started_at
                    delay = child.backoff.next(ran_for)
                    child.restart_at = now + delay
                    self.log(
                        f"{child.name} (pid {child.pid}) exited ({child.exit_text()}) after "
                        f"{ran_for:.1f} s; starting it again in {delay:g} s"
                    )
                elif child.restart_at is not None and now >= child.restart_at:
                    changed |= self._restart(child, now)
            if changed:
                self.write_record()

    def _restart(self, child: Child, now: float) -> bool:
        child.restart_at = None
        child.restarts += 1
        try:
            if child.name == "operator":
                self._keep_metrics_port(child)
            child.spawn()
        except OSError as exc:
            child.restart_at = now + child.backoff.next(0.0)
            self.log(f"cannot start {child.name} again: {exc}")
            return False
        self.log(f"{child.name} started again (pid {child.pid}, restart {child.restarts})")
        return True

    def _keep_metrics_port(self, operator: Child) -> None:
        """The operator's metrics port may have been taken while it was away (it would not start):
        then it gets the next free one."""
        if port_is_free(int(self.metrics_address.rpartition(":")[2])):
            return
        taken, self.metrics_address = (
            self.metrics_address,
            f"127.0.0.1:{next_free_port(self.config.metrics_port)}",
        )
        operator.argv[operator.argv.index("--metrics-address") + 1] = self.metrics_address
        self.log(f"{taken} is taken; the operator serves its metrics on {self.metrics_address}")

    # ---- stopping ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Operator first (it resigns), then the node (it stops its units in order), then etcd.

        Units run in their own process groups, so a node that had to be killed (or that died and was
        not started again yet) would leave them behind: its records of them are then used to stop them."""
        self.stopping.set()
        with self._lock:
            for child in reversed(self.children):
                self.log(f"stopping {child.name} (pid {child.pid})")
                child.stop()
                if child.name == "node":
                    left = procgroups.cleanup_orphans(
                        self.config.state_dir / "node" / "supervisor" / "run", ()
                    )
                    if left:
                        self.log(f"stopped {left} unit process group(s) the node left behind")
        remove_record(self.config.state_dir)

    # ---- describing ----------------------------------------------------------------------------------

    def record(self) -> dict[str, object]:
        assert self.etcd is not None
        return {
            "pid": os.getpid(),
            "stateDir": str(self.config.state_dir),
            "etcdEndpoint": self.etcd_endpoint,
            "etcdPort": self.etcd.client_port,
            "fleetEndpoint": self.config.fleet_endpoint,
            "metricsAddress": self.metrics_address,
            "machines": self.config.machines,
            "prefix": self.config.prefix,
            "processes": {c.name: c.pid for c in self.children},
            "restarts": {c.name: c.restarts for c in self.children},
        }

    def write_record(self) -> None:
        path = self.config.state_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record(), indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_socket_accepts(path: Path) -> bool:
    """True when something listens on ``path`` (a socket file left by a killed node does not count)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def read_record(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((state_dir / STACK_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def remove_record(state_dir: Path) -> None:
    (state_dir / STACK_FILE).unlink(missing_ok=True)


def stop_detached(state_dir: Path, timeout: float = 300.0) -> bool:
    """``fleetop down``: SIGTERM the detached ``fleetop up`` (it stops everything in order) and wait.
    When ``up`` itself is gone (killed) but its parts still run, they are stopped here, in order."""
    record = read_record(state_dir)
    if record is None:
        return False
    pid = running_up(state_dir)
    if pid is None:
        stopped = stop_parts(state_dir, record)
        remove_record(state_dir)
        if stopped:
            return True
        raise ConfigError(
            f"the stack recorded in {state_dir / STACK_FILE} is not running (stale record removed)"
        )
    if not _terminate(pid, timeout, kill=False):
        raise FleetopError(f"fleetop up (pid {pid}) did not stop within {timeout:.0f} s")
    return True


def running_up(state_dir: Path) -> int | None:
    """The PID of the ``fleetop up`` recorded in ``state_dir``, while it runs (zombies do not)."""
    record = read_record(state_dir) or {}
    pid = record.get("pid")
    return pid if isinstance(pid, int) and _alive(pid) and _is_fleetop(pid) else None


def refuse_if_running(state_dir: Path) -> None:
    """A second etcd on the same data dir, or a second node on the same units, must never start:
    raise when a part recorded in ``state_dir`` still runs from it (``up`` itself may be gone)."""
    record = read_record(state_dir) or {}
    processes = record.get("processes")
    pids = processes if isinstance(processes, dict) else {}
    left = [name for name, pid in pids.items() if isinstance(pid, int) and _runs_from(pid, state_dir)]
    if left:
        raise FleetopError(
            f"{', '.join(left)} of an earlier stack still run from {state_dir}; `fleetop down` first"
        )


def stop_parts(state_dir: Path, record: dict[str, object]) -> int:
    """Stop the parts a killed ``fleetop up`` left running, operator first, each by its recorded PID
    and only while that PID still runs from this state dir; then what a killed node left. Returns how
    many processes were stopped."""
    processes = record.get("processes")
    pids = processes if isinstance(processes, dict) else {}
    stopped = 0
    for name in ("operator", "node", "etcd"):
        pid = pids.get(name)
        if isinstance(pid, int) and _runs_from(pid, state_dir):
            _terminate(pid, NODE_STOP_TIMEOUT if name == "node" else STOP_TIMEOUT)
            stopped += 1
    return stopped + procgroups.cleanup_orphans(state_dir / "node" / "supervisor" / "run", ())


def _runs_from(pid: int, state_dir: Path) -> bool:
    """A live (not zombie) process whose command line names a path inside ``state_dir`` (as every
    part's does): never a recycled PID, never another stack's part."""
    if not _alive(pid):
        return False
    try:
        return f"{state_dir}/".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _terminate(pid: int, timeout: float, *, kill: bool = True) -> bool:
    """SIGTERM ``pid`` (not our child) and wait up to ``timeout`` until it is gone; then SIGKILL it
    when ``kill``. True when it is gone."""
    steps = [(signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)] if kill else [(signal.SIGTERM, timeout)]
    for sig, wait in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.1)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    stat = procgroups.proc_stat(pid)
    return stat is not None and stat.state != "Z"


def _is_fleetop(pid: int) -> bool:
    """Never signal a PID that was recycled by an unrelated process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"fleetop" in cmdline
