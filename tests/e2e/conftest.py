"""The end-to-end stack as a module-scoped fixture: etcd, ``fleetop node --machines 3``, ``fleetop run``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from e2ehelpers import Stack, running_stack

from fleetop.config import EtcdSettings
from fleetop.etcd.client import Etcd


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("e2e")) as started:
        yield started


@pytest.fixture
async def etcd(stack: Stack) -> AsyncIterator[Etcd]:
    """A client of the stack's etcd, with no prefix (the keys the stack's units read and write)."""
    async with await Etcd.connect(EtcdSettings(endpoints=(stack.etcd_endpoint,))) as client:
        yield client
