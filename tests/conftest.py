"""Shared fixtures: a real etcd per test session on a free loopback port with a temporary data dir."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetop.config import settings_from
from fleetop.etcd.client import Etcd
from fleetop.local.etcdserver import EtcdServer, find_etcd_binary


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One plain etcd for the whole run. Tests isolate themselves with a key prefix (``etcd_prefix``)."""
    base = tmp_path_factory.mktemp("etcd")
    server = EtcdServer(base / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A key root unique to the test, so tests sharing one etcd never see each other's keys."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"/t/{name}-{os.getpid()}-{id(request)}"


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    """A client of the session's etcd under the test's own ``etcd_prefix`` (a module may define its own)."""
    settings = settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})
    async with await Etcd.connect(settings) as client:
        yield client


@pytest.fixture(scope="session")
def etcdctl_bin() -> str:
    return find_etcd_binary("etcdctl")


@pytest.fixture(autouse=True)
def _no_pending_tasks() -> Iterator[None]:
    """Fail a test that leaves asyncio tasks behind in a loop that is still running."""
    yield
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    pending = [t for t in asyncio.all_tasks(loop) if not t.done() and t is not asyncio.current_task()]
    assert not pending, f"tasks left pending: {pending}"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("FLEETOP_TEST", "1")
    # Nodes in tests notice changes after 0.1 s, not fleet's 1 s: the order of fleet's states is kept
    # and the operator's tests stay quick. tests/node/test_fleetctl_waits.py runs fleet's own pace.
    os.environ.setdefault("FLEETOP_NODE_PACE", "0.1")
    Path(config.rootpath, ".pytest_cache").mkdir(exist_ok=True)
