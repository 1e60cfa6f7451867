"""Processes and probes for the benchmarks: everything on loopback, everything stopped by its PID.

* :class:`Procs` starts children in their own sessions, remembers each ``Popen`` and stops exactly
  those (SIGTERM, then SIGKILL of the child's own process group) in reverse order, in ``finally``.
* :class:`Stack` is one installation: a dedicated etcd (:class:`~fleetop.local.etcdserver.EtcdServer`),
  ``fleetop node`` and one or more ``fleetop run`` operators with their metrics on loopback ports.
* :class:`ProxyRig` is one unmanaged proxy (``managed: false``): nginx (``worker_processes 1``, the
  built-in template) or HAProxy started here on a valid empty config, and ``fleetop proxy-agent``
  applying what the operator publishes into the same directory.
* :class:`Backends` runs ``bench/backend.py`` (one asyncio process, many loopback addresses).
* :class:`KeyLog` follows a prefix in etcd and stamps each change with the bench's monotonic clock,
  so stage times (published, applied) come from the same clock as the request that ends a sample.
* :func:`fetch` sends one request through a proxy with ``http.client`` and says which backend answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from fleetop.config import settings_from
from fleetop.etcd.client import Etcd, Snapshot
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer, find_etcd_binary, free_port
from fleetop.models import AgentStatus, PublishedConfig
from fleetop.node import procgroups
from fleetop.proxy.apply import ProxyProcess, initial_config, start_proxy
from fleetop.proxy.published import decode_published as decode_wire
from fleetop.proxy.render import RenderPaths

T = TypeVar("T")
Kind = Literal["nginx", "haproxy"]
KEYS = Keys()
BENCH_DIR = Path(__file__).resolve().parent
BACKEND_SCRIPT = BENCH_DIR / "backend.py"
SERVER_RE = re.compile(r"^\s*server\s+(?:\S+\s+)?(\d+\.\d+\.\d+\.\d+:\d+)", re.MULTILINE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now() -> float:
    return time.monotonic()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: no etcdctl/fleetctl/fleetop settings leak in from the caller.
    (Units need nothing on PATH: the operator names fleetop by its absolute path.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEETCTL_", "FLEETOP_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def fleetop_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetop.cli.main", *args]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float = 15.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


class Procs:
    """Every process a workload started; :meth:`stop_all` ends them by PID, newest first."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stop_timeout: float = 15.0,
        cwd: Path | None = None,
    ) -> Child:
        log = self.base / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or child_env(),
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, process, log, stop_timeout)
        self.children.append(child)
        return child

    def stop(self, child: Child, sig: int = signal.SIGTERM) -> None:
        """Signal exactly ``child`` (its PID); SIGKILL its own process group after its timeout."""
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)
            try:
                child.process.wait(child.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.process.wait(10)
        if child in self.children:
            self.children.remove(child)

    def kill(self, child: Child) -> None:
        """SIGKILL, as a crash would (the child's own children are left to their parent's fate)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.process.wait(10)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {child.name} (pid {child.pid}): {exc}", file=sys.stderr)

    def tail(self, name: str, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.base / f"{name}.log").read_text(errors="replace")[-chars:]
        return ""


def wait_until(ready: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = now() + timeout
    while not ready():
        if now() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(every)


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float, what: str, every: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` after ``timeout``."""
    deadline = now() + timeout
    while True:
        found = await check()
        if found:
            return found
        if now() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


# -- process statistics --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (its own, not its children's)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS now, peak RSS) of ``pid`` in MB."""
    rss = hwm = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(c) for c in (task / "children").read_text().split())
    return found


# -- HTTP -----------------------------------------------------------------------------------------------


def http_get(host: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def fetch(port: int, host_header: str | None = None, timeout: float = 2.0) -> tuple[int, str]:
    """One request through the proxy on 127.0.0.1:``port``: (status, the backend that answered, from
    its own ``X-Backend`` header; "" when no backend answered)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    try:
        headers = {"Connection": "close"}
        if host_header:
            headers["Host"] = host_header
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Backend") or ""
    finally:
        conn.close()


def fetch_raw(port: int, timeout: float = 2.0) -> tuple[int, str]:
    """:func:`fetch` on a bare socket: one request on a new connection (``Connection: close``), read
    to the end; (status, ``X-Backend``; "" when absent, status 0 when the answer is not HTTP). About
    a third of :func:`fetch`'s CPU: what :class:`Prober` sends."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head = b"".join(chunks).partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    status_line = head[0].split()
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        return 0, ""
    who = ""
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-backend":
            who = value.strip()
    return int(status_line[1]), who


Decide = Callable[[int, str, float], float | None]
"""Given a response's status, backend and completion time: the measured end time, or None (go on)."""


def first_answer_by(address: str) -> Decide:
    """The first 200 from the backend at ``address``."""
    return lambda status, who, at: at if status == 200 and who == address else None


def first_of_run(address: str, run: int) -> Decide:
    """The first of ``run`` responses in a row answered (200) by ``address``."""
    first: float | None = None
    streak = 0

    def decide(status: int, who: str, at: float) -> float | None:
        nonlocal first, streak
        if status == 200 and who == address:
            streak += 1
            first = at if streak == 1 else first
            return first if streak >= run else None
        streak, first = 0, None
        return None

    return decide


class Prober:
    """Requests through the proxy on 127.0.0.1:``port`` from one thread of its own, one at a time
    (:func:`fetch_raw`, a new connection each), ``gap`` s apart, until ``decide`` gives the end time.

    Started before the write it times, so the requests run while the bench's own client waits for
    etcd's answer: the first request after the change is not held up by that answer or by the bench's
    event loop, and no request waits for a thread hop or a loop turn (what :func:`probe_until` pays,
    1-2 ms a request on a shared machine)."""

    def __init__(self, port: int, decide: Decide, timeout: float, gap: float = 0.001) -> None:
        self.port = port
        self.decide = decide
        self.timeout = timeout
        self.gap = gap
        self.requests = 0
        self._stopped = threading.Event()

    def _loop(self) -> float:
        deadline = now() + self.timeout
        while True:
            try:
                status, who = fetch_raw(self.port)
            except OSError:
                status, who = 0, ""
            at = now()
            self.requests += 1
            end = self.decide(status, who, at)
            if end is not None:
                return end
            if at > deadline or self._stopped.is_set():
                raise TimeoutError(
                    f"no deciding response through 127.0.0.1:{self.port} within {self.timeout:g} s"
                )
            time.sleep(self.gap)

    def stop(self) -> None:
        """End the requests (the future then raises TimeoutError): the write they time failed."""
        self._stopped.set()

    def start(self) -> asyncio.Future[float]:
        """Run the requests in a thread now; the future of the end time (TimeoutError past ``timeout``)."""
        return asyncio.get_running_loop().run_in_executor(None, self._loop)


def scrape(url_host: str, port: int) -> dict[str, float]:
    """A Prometheus text page as ``{'name{labels}': value}`` (comments skipped)."""
    status, body = http_get(url_host, port, "/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics on {url_host}:{port}: HTTP {status}")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str, label_filter: str = "") -> float:
    """Sum of every series of ``name`` whose labels contain ``label_filter``."""
    total = 0.0
    for key, value in metrics.items():
        base = key.partition("{")[0]
        if base == name and label_filter in key:
            total += value
    return total


# -- etcd -----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def etcd_client(endpoint: str) -> AsyncIterator[Etcd]:
    settings = settings_from({"endpoints": endpoint}, {})
    async with await Etcd.connect(settings) as client:
        yield client


def etcdctl(endpoint: str, *args: str, timeout: float = 30.0) -> str:
    argv = [find_etcd_binary("etcdctl"), f"--endpoints={endpoint}", *args]
    result = subprocess.run(
        argv, capture_output=True, timeout=timeout, env=child_env({"ETCDCTL_API": "3"}), check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args[:2])}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


async def put_many(etcd: Etcd, items: list[tuple[str, str]], batch: int = 100) -> None:
    """Write many keys quickly: transactions of ``batch`` puts (etcd allows 128 ops per txn)."""
    from fleetop.etcd.client import Op

    for start in range(0, len(items), batch):
        ops = [Op.put(k, v.encode()) for k, v in items[start : start + batch]]
        await etcd.txn([], ops)


@dataclass
class Stamp:
    at: float
    key: str
    value: bytes | None


class KeyLog:
    """Follows ``prefix`` and stamps every change with the monotonic clock (list-watch, so it
    survives etcd restarts). ``changed`` is set on every batch."""

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.items: dict[str, bytes] = {}
        self.stamps: list[Stamp] = []
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeyLog:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.synced.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        stream = self.etcd.list_watch(self.prefix)
        async with contextlib.aclosing(stream):
            async for update in stream:
                at = now()
                if isinstance(update, Snapshot):
                    fresh = {kv.key: kv.value for kv in update.items}
                    for key in self.items.keys() | fresh.keys():
                        if self.items.get(key) != fresh.get(key):
                            self.stamps.append(Stamp(at, key, fresh.get(key)))
                    self.items = fresh
                    self.synced.set()
                else:
                    for event in update.events:
                        value = None if event.type == "delete" else event.value
                        if value is None:
                            self.items.pop(event.key, None)
                        else:
                            self.items[event.key] = value
                        self.stamps.append(Stamp(at, event.key, value))
                self.changed.set()

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait until ``predicate()`` (evaluated on every change) returns something truthy."""
        deadline = now() + timeout
        while True:
            found = predicate()
            if found:
                return found
            left = deadline - now()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))

    async def wait_stamp(
        self, since: float, match: Callable[[Stamp], bool], timeout: float, what: str
    ) -> float:
        """The time of the first change at or after ``since`` that ``match``es, waiting for it."""
        return await self.wait_for(lambda: self.first_after(since, match), timeout, what)

    def first_after(self, since: float, match: Callable[[Stamp], bool]) -> float | None:
        for stamp in self.stamps:
            if stamp.at >= since and match(stamp):
                return stamp.at
        return None


def decode_published(raw: bytes | None) -> PublishedConfig | None:
    """Either wire format (a large config is published compressed)."""
    return None if raw is None else decode_wire(raw)


def decode_agent(raw: bytes | None) -> AgentStatus | None:
    return None if raw is None else AgentStatus.model_validate_json(raw)


def agent_reloads(agents: KeyLog) -> int:
    """The agents' ``reloads`` counters, summed."""
    return sum(status.reloads for status in _agents(agents))


def agent_followed(agents: KeyLog) -> int:
    """The agents' ``followedApplies`` counters (configs applied ahead of the operator), summed."""
    return sum(status.followed_applies for status in _agents(agents))


def _agents(agents: KeyLog) -> list[AgentStatus]:
    return [status for raw in agents.items.values() if (status := decode_agent(raw)) is not None]


# -- the stack ------------------------------------------------------------------------------------------


@dataclass
class Operator:
    child: Child
    identity: str
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.child.pid

    def metrics(self) -> dict[str, float]:
        return scrape("127.0.0.1", self.metrics_port)


@dataclass
class Stack:
    """etcd + ``fleetop node`` + ``fleetop run`` (one or more candidates) in ``base``."""

    base: Path
    procs: Procs
    machines: int = 1
    lease: tuple[float, float, float] | None = None
    etcd: EtcdServer | None = None
    node: Child | None = None
    operators: list[Operator] = field(default_factory=list)
    proxy_root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.proxy_root = self.base / "proxies"

    @property
    def endpoint(self) -> str:
        assert self.etcd is not None
        return self.etcd.endpoint

    @property
    def fleet_endpoint(self) -> str:
        return f"unix://{self.base / 'fleet.sock'}"

    def start(self, operators: int = 1) -> Stack:
        self.base.mkdir(parents=True, exist_ok=True)
        self.proxy_root.mkdir(exist_ok=True)
        self.etcd = EtcdServer(self.base / "etcd", log_file=self.base / "etcd.log")
        self.etcd.start()
        argv = fleetop_argv("node", "--machines", str(self.machines), "--state-dir", str(self.base / "node"))
        argv += ["--listen", self.fleet_endpoint, "--etcd-endpoints", self.endpoint]
        # The operator is measured here, not fleet's 1 s reaction time: the node notices in 0.1 s
        # (FLEETOP_NODE_PACE overrides it, e.g. 1 to measure against fleet's own pace).
        argv += ["--pace", os.environ.get("FLEETOP_NODE_PACE", "0.1")]
        self.node = self.procs.spawn("node", argv, stop_timeout=120.0)
        sock = self.base / "fleet.sock"
        wait_until(lambda: sock.exists() or not self._node_alive(), 30, "fleetop node's socket")
        if not sock.exists():
            raise RuntimeError(f"fleetop node exited: {self.procs.tail('node')}")
        for n in range(operators):
            self.start_operator(f"bench-{n + 1}")
        return self

    def _node_alive(self) -> bool:
        return self.node is not None and self.node.alive()

    def start_operator(self, identity: str) -> Operator:
        port = free_port()
        argv = [sys.executable, "-m", "fleetop.controller.cli", "run", "--endpoints", self.endpoint]
        argv += ["--fleet-endpoint", self.fleet_endpoint, "--identity", identity]
        argv += ["--proxy-root", str(self.proxy_root), "--metrics-address", f"127.0.0.1:{port}"]
        argv += ["--log-level", "INFO"]
        if self.lease is not None:
            lease, renew, retry = self.lease
            argv += ["--lease-duration", str(lease), "--renew-deadline", str(renew)]
            argv += ["--retry-period", str(retry)]
        child = self.procs.spawn(f"operator-{identity}", argv, stop_timeout=20.0)
        op = Operator(child, identity, port)
        self.operators.append(op)
        wait_until(lambda: self._metrics_up(op) or not child.alive(), 30, f"operator {identity}'s metrics")
        if not child.alive():
            raise RuntimeError(f"operator {identity} exited: {self.procs.tail(child.name)}")
        return op

    @staticmethod
    def _metrics_up(op: Operator) -> bool:
        try:
            op.metrics()
        except OSError:
            return False
        return True

    def leader(self) -> Operator | None:
        for op in self.operators:
            if op.child.alive():
                with contextlib.suppress(OSError, RuntimeError):
                    if metric_sum(op.metrics(), "fleetop_leader") >= 1:
                        return op
        return None

    def wait_leader(self, timeout: float = 60.0) -> Operator:
        found: list[Operator] = []

        def ready() -> bool:
            leader = self.leader()
            if leader is not None:
                found.append(leader)
            return leader is not None

        wait_until(ready, timeout, "an elected operator", every=0.1)
        return found[-1]

    def etcd_metrics(self) -> dict[str, float]:
        assert self.etcd is not None
        return scrape(self.etcd.host, self.etcd.client_port)

    def stop(self) -> None:
        """Operators, then the node (it stops its units), then etcd: each by its PID."""
        for op in reversed(self.operators):
            self.procs.stop(op.child)
        if self.node is not None:
            self.procs.stop(self.node)
            # a node that had to be killed leaves its units (own process groups) behind: its records
            # of them say which to stop
            left = procgroups.cleanup_orphans(self.base / "node" / "supervisor" / "run", ())
            if left:
                print(f"bench: stopped {left} unit process group(s) the node left behind", file=sys.stderr)
        if self.etcd is not None:
            self.etcd.stop()


# -- proxies and backends -------------------------------------------------------------------------------


@dataclass
class Backends:
    """``bench/backend.py`` listening on ``addresses`` (one process)."""

    child: Child
    addresses: list[str]

    @classmethod
    def start(cls, procs: Procs, name: str, addresses: list[str]) -> Backends:
        child = procs.spawn(name, [sys.executable, str(BACKEND_SCRIPT), *addresses])
        wait_until(lambda: "ready" in procs.tail(name, 100) or not child.alive(), 30, f"backends {name}")
        if not child.alive():
            raise RuntimeError(f"backends {name} exited: {procs.tail(name)}")
        return cls(child, addresses)


def proxy_spec(
    kind: Kind, port: int, routes: list[dict[str, Any]], wait: dict[str, str] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "listen": f"127.0.0.1:{port}", "routes": routes, "managed": False}
    if wait is not None:
        body["wait"] = wait
    return body


@dataclass
class ProxyRig:
    """An unmanaged proxy: nginx or HAProxy started here, ``fleetop proxy-agent`` next to it."""

    name: str
    kind: Kind
    port: int
    proxy: ProxyProcess
    agent: Child
    runtime_dir: Path

    @classmethod
    def start(cls, stack: Stack, name: str, kind: Kind, port: int | None = None) -> ProxyRig:
        port = port or free_port()
        runtime = stack.proxy_root / name
        runtime.mkdir(parents=True, exist_ok=True)
        paths = RenderPaths(str(runtime))
        config = runtime / f"{kind}.conf"
        config.write_text(initial_config(name, kind, f"127.0.0.1:{port}", paths))
        proxy = start_proxy(
            kind, config, paths, listen=("127.0.0.1", port), log_file=stack.base / f"{name}.log"
        )
        # tracked like every other child, so stop_all() ends it by its PID even if the caller forgets
        stack.procs.children.append(Child(f"{kind}-{name}", proxy.process, stack.base / f"{name}.log"))
        argv = fleetop_argv("proxy-agent", "--proxy", name, "--machine", "bench")
        argv += ["--runtime-dir", str(runtime), "--config-path", str(config), "--endpoints", stack.endpoint]
        try:
            agent = stack.procs.spawn(f"agent-{name}", argv)
        except BaseException:
            proxy.stop()
            raise
        return cls(name, kind, port, proxy, agent, runtime)

    @property
    def master_pid(self) -> int:
        return self.proxy.pid

    def stop(self, procs: Procs) -> None:
        procs.stop(self.agent)
        for child in [c for c in procs.children if c.process is self.proxy.process]:
            procs.stop(child)
        self.proxy.stop()


async def agent_applied(etcd: Etcd, proxy: str, generation: int) -> AgentStatus | None:
    """The agent status once it applied ``generation`` (or newer) without error."""
    items, _ = await etcd.list(KEYS.agent_status(proxy, ""))
    for kv in items:
        status = AgentStatus.model_validate_json(kv.value)
        if status.applied_generation >= generation and status.error is None:
            return status
    return None


async def published(etcd: Etcd, proxy: str) -> PublishedConfig | None:
    kv = await etcd.get(KEYS.proxy_config(proxy))
    return decode_published(None if kv is None else kv.value)


async def put_json(etcd: Etcd, key: str, body: dict[str, Any]) -> int:
    return await etcd.put(key, json.dumps(body, separators=(",", ":")).encode())


async def probe_until(
    port: int,
    done: Callable[[int, str], bool],
    timeout: float,
    *,
    host_header: str | None = None,
    gap: float = 0.001,
) -> float:
    """Send requests (one at a time, ``gap`` s apart) until ``done(status, backend)``; the monotonic
    time the deciding response completed. Connection errors count as not done."""
    deadline = now() + timeout
    while True:
        try:
            status, who = await asyncio.to_thread(fetch, port, host_header)
        except OSError:
            status, who = 0, ""
        at = now()
        if done(status, who):
            return at
        if at > deadline:
            raise TimeoutError(f"no matching response through 127.0.0.1:{port} within {timeout:g} s")
        await asyncio.sleep(gap)


def machine_info() -> dict[str, Any]:
    """What the results are comparable against: CPUs, memory, kernel, versions."""
    info: dict[str, Any] = {"cpus": os.cpu_count() or 0, "python": sys.version.split()[0]}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memoryMB"] = int(line.split()[1]) // 1024
    with contextlib.suppress(OSError):
        model = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        if model:
            info["cpuModel"] = model[0].partition(":")[2].strip()
    info["kernel"] = os.uname().release

    def version(argv: list[str], pattern: str) -> str:
        with contextlib.suppress(Exception):
            result = subprocess.run(argv, capture_output=True, timeout=10, check=False)
            match = re.search(pattern, (result.stdout + result.stderr).decode(errors="replace"))
            if match:
                return match.group(1)
        return "?"

    from fleetop.proxy.apply import find_binary

    info["etcd"] = version([find_etcd_binary(), "--version"], r"etcd Version: (\S+)")
    with contextlib.suppress(Exception):
        info["nginx"] = version([find_binary("nginx"), "-v"], r"nginx/(\S+)")
        info["haproxy"] = version([find_binary("haproxy"), "-v"], r"version (\S+)")
    return info


@dataclass(frozen=True)
class Options:
    """How much to run: ``quick`` shrinks repetitions and sizes (smoke test, trying things out)."""

    base: Path
    quick: bool = False
    reps: int | None = None
    """Override the repetition count of the workloads that take one (registration cycles...)."""

    def count(self, full: int, quick: int) -> int:
        if self.reps is not None:
            return self.reps
        return quick if self.quick else full


def generation_of(raw: bytes | None) -> int:
    """The generation of a published config value (0 when absent)."""
    config = decode_published(raw)
    return config.generation if config is not None else 0


def applied_of(raw: bytes | None) -> int:
    """The generation an agent status value reports applied without error (0 otherwise)."""
    status = decode_agent(raw)
    return status.applied_generation if status is not None and status.error is None else 0


def answered_by(address: str) -> Callable[[int, str], bool]:
    """A :func:`probe_until` condition: a 200 from the backend at ``address``."""
    return lambda status, who: status == 200 and who == address


def status_is(code: int) -> Callable[[int, str], bool]:
    return lambda status, _who: status == code


def config_newer(key: str, generation: int) -> Callable[[Stamp], bool]:
    """A stamp of ``key`` holding a config newer than ``generation``."""
    return lambda stamp: stamp.key == key and generation_of(stamp.value) > generation


def applied_newer(generation: int, at_least: bool = False) -> Callable[[Stamp], bool]:
    """A stamp of an agent status that applied a generation newer than (or ``at_least``) ``generation``."""
    if at_least:
        return lambda stamp: applied_of(stamp.value) >= generation
    return lambda stamp: applied_of(stamp.value) > generation
