"""Starting and stopping ``fleetop node``: configuration, the modelled machines, the server lifecycle.

A node run is: load the registry, lay out N machines (stable ids, loopback addresses 127.0.1.N, a root
with ``etc/environment`` and ``etc/etcd.environment``), kill whatever a previous, killed node left running
(``Supervisor.cleanup_orphans``), start the reconcile loop (which relaunches launched units), and serve
fleet's API on a unix socket (mode 0660) or a loopback port. SIGTERM or SIGINT stops every unit and
exits with nothing left running; desired states are kept, so the next start brings the units back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import signal
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from fleetop.errors import ConfigError
from fleetop.node.api import create_app
from fleetop.node.engine import PACE, RESYNC_INTERVAL, Engine, NodeMachine
from fleetop.node.registry import Registry, atomic_write, ensure_private_dir
from fleetop.node.supervisor import Supervisor

log = logging.getLogger(__name__)
MAX_MACHINES = 254
DEFAULT_ETCD = "http://127.0.0.1:2379"
BACKLOG = 128
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]+")
PACE_ENV = "FLEETOP_NODE_PACE"
MAX_PACE = 60.0


def pace_from_environment() -> float:
    """``FLEETOP_NODE_PACE`` (seconds) if it is set, else the engine's default, fleet's own pace."""
    raw = os.environ.get(PACE_ENV, "").strip()
    if not raw:
        return PACE
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PACE_ENV}={raw!r}: not a number of seconds") from None
    if not 0 <= value <= MAX_PACE:
        raise ConfigError(f"{PACE_ENV}={raw!r}: must be between 0 and {MAX_PACE:g} seconds")
    return value


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How a node runs. ``metadata`` holds ``--metadata`` values (see ``parse_metadata``)."""

    state_dir: Path
    machines: int = 1
    listen: str | None = None
    metadata: tuple[str, ...] = ()
    etcd_endpoints: tuple[str, ...] = ()
    resync_interval: float = RESYNC_INTERVAL
    pace: float = field(default_factory=pace_from_environment)

    @property
    def listen_url(self) -> str:
        return self.listen or f"unix://{self.state_dir.absolute() / 'fleet.sock'}"


def parse_metadata(specs: Sequence[str], machines: int) -> list[dict[str, str]]:
    """Per-machine metadata from ``--metadata`` values.

    The i-th value applies to machine i: ``region=sfo1,disk=ssd``. An item may name its machine by
    1-based index, ``2:region=b``, and the items after it in the same value go to that machine too.
    """
    result: list[dict[str, str]] = [{} for _ in range(machines)]
    for position, spec in enumerate(specs, start=1):
        current = position
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            index, colon, rest = item.partition(":")
            if colon and index.isdigit():
                current, item = int(index), rest
            key, eq, value = item.partition("=")
            if not eq or not _METADATA_KEY.fullmatch(key) or not value:
                raise ConfigError(f"--metadata {spec!r}: expected key=value items, got {item!r}")
            if not 1 <= current <= machines:
                raise ConfigError(f"--metadata {spec!r}: there is no machine {current} (of {machines})")
            result[current - 1][key] = value
    return result


def node_identity(state_dir: Path) -> str:
    """A random id made on the first run and kept, so machine ids survive restarts."""
    path = state_dir / "node-id"
    try:
        value = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{32}", value):
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_hex(16)
    ensure_private_dir(state_dir)
    atomic_write(path, (value + "\n").encode())
    return value


def machine_id(identity: str, index: int) -> str:
    """Machine ``index``'s 32-hex id, like ``/etc/machine-id``; stable for a given node identity."""
    return hashlib.sha256(f"{identity}/machine/{index}".encode()).hexdigest()[:32]


def _etcd_environment(endpoints: Sequence[str]) -> str:
    first = urlsplit(endpoints[0] if endpoints else DEFAULT_ETCD)
    lines = [f"ETCD_ENDPOINT={first.netloc or first.path}"]
    if endpoints:
        lines.append(f"ETCDCTL_ENDPOINTS={','.join(endpoints)}")
    return "\n".join(lines) + "\n"


def build_machines(config: NodeConfig) -> list[NodeMachine]:
    """Lay out the machines and (re)write their environment files."""
    if not 1 <= config.machines <= MAX_MACHINES:
        raise ConfigError(f"--machines must be between 1 and {MAX_MACHINES}")
    metadata = parse_metadata(config.metadata, config.machines)
    identity = node_identity(config.state_dir)
    machines = []
    for index in range(1, config.machines + 1):
        ip = f"127.0.1.{index}"
        root = config.state_dir / "machines" / str(index)
        etc = root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        atomic_write(
            etc / "environment", f"COREOS_PRIVATE_IPV4={ip}\nCOREOS_PUBLIC_IPV4={ip}\n".encode(), 0o600
        )
        atomic_write(etc / "etcd.environment", _etcd_environment(config.etcd_endpoints).encode(), 0o600)
        machines.append(
            NodeMachine(index, machine_id(identity, index), ip, f"node-m{index}", root, metadata[index - 1])
        )
    return machines


def _unix_socket(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a node that is gone
        else:
            raise ConfigError(f"{path}: another node is already listening there")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    return sock


def open_listener(listen: str) -> tuple[socket.socket, str]:
    """Bind the listening socket; returns it and the endpoint clients should use."""
    parts = urlsplit(listen)
    if parts.scheme == "unix":
        path = Path(parts.netloc + parts.path)
        sock = _unix_socket(path)
        sock.listen(BACKLOG)
        return sock, f"unix://{path}"
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--listen {listen!r}: expected unix:///path or http://127.0.0.1:PORT")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"--listen {listen!r}: host must be a loopback address") from exc
    if not address.is_loopback:
        raise ConfigError(f"--listen {listen!r}: only loopback addresses are allowed")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, parts.port or 0))
    sock.listen(BACKLOG)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if address.version == 6 else host
    return sock, f"http://{shown}:{bound_port}"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``run_node`` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _signals(stop: asyncio.Event, install: bool) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    if install:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_node(
    config: NodeConfig,
    *,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
) -> None:
    """Run a node until ``stop`` is set (or SIGTERM/SIGINT); then stop all units and return."""
    stop = stop or asyncio.Event()
    ensure_private_dir(config.state_dir)
    registry = Registry(config.state_dir)
    registry.load()
    machines = build_machines(config)
    supervisor = Supervisor(config.state_dir / "supervisor")
    orphans = supervisor.cleanup_orphans()
    if orphans:
        log.warning("node: killed %d process(es) left by a previous run", orphans)
    engine = Engine(registry, supervisor, machines, resync_interval=config.resync_interval, pace=config.pace)
    sock, endpoint = open_listener(config.listen_url)
    server = _Server(
        uvicorn.Config(
            create_app(engine), lifespan="off", log_level="warning", access_log=False, server_header=False
        )
    )
    engine_task = asyncio.create_task(engine.run(), name="fleetop-node-engine")
    engine.notify()
    with _signals(stop, install_signal_handlers):
        serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="fleetop-node-api")
        atomic_write(config.state_dir / "endpoint", (endpoint + "\n").encode())
        log.info("node: %d machine(s), fleet API on %s", len(machines), endpoint)
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serve_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _shutdown(server, serve_task, stopper, engine_task, engine)
            sock.close()
            if endpoint.startswith("unix://"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(endpoint[len("unix://") :])


async def _shutdown(
    server: uvicorn.Server,
    serve_task: asyncio.Task[None],
    stopper: asyncio.Task[bool],
    engine_task: asyncio.Task[None],
    engine: Engine,
) -> None:
    server.should_exit = True
    stopper.cancel()
    engine_task.cancel()
    for task in (stopper, engine_task):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        await asyncio.wait_for(asyncio.shield(serve_task), 10)
    except TimeoutError:
        server.force_exit = True
        await serve_task
    await engine.shutdown()
