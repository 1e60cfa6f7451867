"""Fixtures shared by the operator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ophelpers import Node

from fleetop.fleet.client import FleetClient


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """``fleetop node --machines 3`` for the whole module, stopped by PID at its end."""
    running = Node(tmp_path_factory.mktemp("node"), machines=3)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def fleet(node: Node) -> AsyncIterator[FleetClient]:
    """A fleet client on the module's node."""
    async with FleetClient(node.endpoint) as client:
        yield client
