"""fleetop installed outside the units' PATH: sidekicks register and a managed nginx serves.

The stack is real (etcd, ``fleetop node --machines 3``, ``fleetop run``, nginx, ``python3 -m
http.server`` backends) and fleetop lives where systemd's fixed PATH cannot find it: the operator is
told its path with ``--fleetop-path`` (a link such as an installation at ``/opt/fleetop`` would make),
and every unit that runs fleetop must name it there for requests to get through.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ehelpers import Stack, eventually, put, running_stack

from backends import answered_by
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import option_values
from fleetop.local.etcdserver import free_port
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
    with running_stack(base, ["--fleetop-path", str(installed)]) as started:
        yield started


async def registered(etcd: Etcd, service: str, count: int) -> set[str] | None:
    items, _ = await etcd.list(f"/services/{service}/")
    found = {kv.value.decode() for kv in items}
    return found if len(found) == count else None


async def all_answer(port: int, backends: set[str]) -> bool:
    """Requests through the proxy reach every backend, and none fails."""
    return await answered_by(port, 40, lambda seen: seen == backends) == backends


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
