"""Processes for the end-to-end tests: a dedicated etcd, ``fleetop node --machines 3``, ``fleetop run``.

All real, all on loopback, each started here and stopped by its PID. The etcd is the module's own
and keys have no root prefix, because the units the operator writes (``fleetop register``,
``fleetop proxy-agent``) read their etcd endpoints from the machine's ``/etc/etcd.environment``,
which the node writes, and nothing there names a prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

from ophelpers import NODE_MAIN, stop_process

from fleetop.etcd.client import Etcd
from fleetop.local.etcdserver import EtcdServer
from waiting import eventually


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEETCTL_", "FLEETOP_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env()
        )


@dataclass
class Stack:
    """The running stack of one test module."""

    base: Path
    etcd: EtcdServer
    fleet_endpoint: str
    proxy_root: Path
    node: subprocess.Popen[bytes]
    operator: subprocess.Popen[bytes]

    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.endpoint

    def log_tail(self, name: str, chars: int = 4000) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.base / f"{name}.log").read_text(errors="replace")[-chars:]
        return ""


def start_node(base: Path, etcd_endpoint: str, machines: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    socket_path = base / "fleet.sock"
    args = [sys.executable, "-c", NODE_MAIN, "--machines", str(machines), "--state-dir", str(base / "node")]
    args += ["--listen", f"unix://{socket_path}", "--etcd-endpoints", etcd_endpoint]
    args += ["--pace", os.environ.get("FLEETOP_NODE_PACE", "0.1")]  # child_env() drops FLEETOP_*
    proc = spawn(args, base / "node.log")
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"fleetop node did not start: {(base / 'node.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, f"unix://{socket_path}"


def start_operator(
    base: Path, etcd_endpoint: str, fleet_endpoint: str, proxy_root: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "fleetop.controller.cli", "run", "--endpoints", etcd_endpoint]
    args += ["--fleet-endpoint", fleet_endpoint, "--identity", "e2e", "--proxy-root", str(proxy_root)]
    args += ["--lease-duration", "4", "--renew-deadline", "2", "--retry-period", "0.5"]
    args += ["--metrics-address", "off", "--resync-period", "20", "--log-level", "INFO", *extra]
    return spawn(args, base / "operator.log")


@contextlib.contextmanager
def running_stack(base: Path, operator_args: Sequence[str] = ()) -> Iterator[Stack]:
    """A stack under ``base`` for the body of a ``with`` (a module's life); each part stopped by PID."""
    etcd = EtcdServer(base / "etcd")
    etcd.start()
    node: subprocess.Popen[bytes] | None = None
    operator: subprocess.Popen[bytes] | None = None
    try:
        node, fleet_endpoint = start_node(base, etcd.endpoint)
        proxy_root = base / "proxies"
        operator = start_operator(base, etcd.endpoint, fleet_endpoint, proxy_root, operator_args)
        yield Stack(base, etcd, fleet_endpoint, proxy_root, node, operator)
    finally:
        if operator is not None:
            stop_process(operator)
        if node is not None:
            stop_process(node, timeout=60.0)
        etcd.stop()


async def put(etcd: Etcd, key: str, body: dict[str, Any]) -> None:
    """Write ``body`` as JSON at ``key``."""
    await etcd.put(key, json.dumps(body).encode())


__all__ = [
    "NODE_MAIN",
    "Stack",
    "eventually",
    "put",
    "running_stack",
    "start_node",
    "start_operator",
    "stop_process",
]
