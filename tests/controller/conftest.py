"""Fixtures shared by the operator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ophelpers import Node, Operator, prefixed_etcd, running

from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.local.etcdserver import EtcdServer


@pytest.fixture(scope="module")
def node_etcd() -> str | None:
    """Where the node tells its units etcd is (``--etcd-endpoints``); ``None``: the node's default.

    A module whose units register themselves (sidekicks) overrides this with the session's etcd.
    """
    return None


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, node_etcd: str | None) -> Iterator[Node]:
    """``fleetop node --machines 3`` for the whole module, stopped by PID at its end."""
    with running(Node(tmp_path_factory.mktemp("node"), machines=3, etcd_endpoint=node_etcd)) as started:
        yield started


@pytest.fixture
async def fleet(node: Node) -> AsyncIterator[FleetClient]:
    """A fleet client on the module's node."""
    async with FleetClient(node.endpoint) as client:
        yield client


@pytest.fixture
async def etcd(etcd_server: EtcdServer, operator: Operator) -> AsyncIterator[Etcd]:
    """A client under the module's prefix, the one its operator (a module fixture) runs with."""
    async with prefixed_etcd(etcd_server.endpoint, operator.prefix) as client:
        yield client
