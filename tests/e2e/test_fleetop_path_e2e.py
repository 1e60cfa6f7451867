"""fleetop installed outside the units' PATH: sidekicks register and a managed nginx serves.

The stack is real (etcd, ``fleetop node --machines 3``, ``fleetop run``, nginx, ``python3 -m
http.server`` backends) and fleetop lives where systemd's fixed PATH cannot find it: the operator is
told its path with ``--fleetop-path`` (a link such as an installation at ``/opt/fleetop`` would make),
and every unit that runs fleetop must name it there for requests to get through.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ehelpers import Stack, eventually, start_node, start_operator, stop_process

from backends import fetch
from fleetop.config import EtcdSettings
from fleetop.controller.unitrender import owned_by
from fleetop.etcd import Etcd
from fleetop.etcdserver import EtcdServer, free_port
from fleetop.fleet.client import FleetClient
from fleetop.fleet.units import option_values
from fleetop.node.execenv import DEFAULT_PATH

pytestmark = pytest.mark.slow
CONVERGE = 90.0


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fleetop "installed" under a directory of its own, outside systemd's PATH."""
    if shutil.which("fleetop", path=DEFAULT_PATH) is not None:
        pytest.skip("a fleetop is installed in systemd's own PATH on this machine")
    path = tmp_path_factory.mktemp("opt") / "fleetop" / "bin" / "fleetop"
    path.parent.mkdir(parents=True)
    path.symlink_to(Path(sys.executable).parent / "fleetop")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, installed: Path) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("e2e-path")
    etcd = EtcdServer(base / "etcd")
    etcd.start()
    node: subprocess.Popen[bytes] | None = None
    operator: subprocess.Popen[bytes] | None = None
    try:
        node, fleet_endpoint = start_node(base, etcd.endpoint)
        proxy_root = base / "proxies"
        extra = ["--fleetop-path", str(installed)]
        operator = start_operator(base, etcd.endpoint, fleet_endpoint, proxy_root, extra)
        yield Stack(base, etcd, fleet_endpoint, proxy_root, node, operator)
    finally:
        if operator is not None:
            stop_process(operator)
        if node is not None:
            stop_process(node, timeout=60.0)
        etcd.stop()


@pytest.fixture
async def etcd(stack: Stack) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(EtcdSettings(endpoints=(stack.etcd_endpoint,))) as client:
        yield client


async def put(etcd: Etcd, key: str, body: dict[str, Any]) -> None:
    await etcd.put(key, json.dumps(body).encode())


async def registered(etcd: Etcd, service: str, count: int) -> set[str] | None:
    items, _ = await etcd.list(f"/services/{service}/")
    found = {kv.value.decode() for kv in items}
    return found if len(found) == count else None


async def all_answer(port: int, backends: set[str]) -> bool:
    """Requests through the proxy reach every backend, and none fails."""
    seen: set[str] = set()
    for _ in range(40):
        try:
            status, handler = await asyncio.to_thread(fetch, port)
        except OSError:
            return False
        if status != 200:
            return False
        seen.add(handler)
        if seen == backends:
            return True
    return False


async def test_sidekicks_register_and_a_managed_nginx_serves(
    stack: Stack, etcd: Etcd, installed: Path
) -> None:
    base, listen = free_port("127.0.1.1"), free_port()
    service = {
        "replicas": 2,
        "ports": {"base": base},
        "unit": {"execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"},
        "discovery": {"sidekick": True, "check": {"http": "/", "interval": "0.5s"}, "ttl": "5s"},
    }
    proxy = {
        "kind": "nginx",
        "listen": f"127.0.0.1:{listen}",
        "routes": [{"service": "hello"}],
        "headers": {"handler": True},
    }
    await put(etcd, "/desired/services/hello", service)
    await put(etcd, "/desired/proxies/edge", proxy)
    try:
        backends = await eventually(lambda: registered(etcd, "hello", 2), CONVERGE, "2 registrations")
        await eventually(lambda: all_answer(listen, backends), CONVERGE, "nginx answering from both backends")
        async with FleetClient(stack.fleet_endpoint) as fleet:
            units = await fleet.list_units()
        commands = {}
        for unit in units:
            owner = owned_by(unit.options)
            if owner is not None and owner.role in ("discovery", "proxy", "agent"):
                [commands[unit.name]] = option_values(unit.options, "Service", "ExecStart")
        assert len(commands) == 4, commands  # two sidekicks, the proxy and its agent
        for name, command in commands.items():
            assert command.split()[0] == str(installed), (name, command)
    except AssertionError:
        print(stack.log_tail("operator"))
        print(stack.log_tail("node"))
        raise
