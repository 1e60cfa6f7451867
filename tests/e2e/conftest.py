"""The end-to-end stack as a module-scoped fixture: etcd, ``fleetop node --machines 3``, ``fleetop run``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from e2ehelpers import Stack, start_node, start_operator, stop_process

from fleetop.etcdserver import EtcdServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("e2e")
    etcd = EtcdServer(base / "etcd")
    etcd.start()
    node: subprocess.Popen[bytes] | None = None
    operator: subprocess.Popen[bytes] | None = None
    try:
        node, fleet_endpoint = start_node(base, etcd.endpoint)
        proxy_root = base / "proxies"
        operator = start_operator(base, etcd.endpoint, fleet_endpoint, proxy_root)
        yield Stack(base, etcd, fleet_endpoint, proxy_root, node, operator)
    finally:
        if operator is not None:
            stop_process(operator)
        if node is not None:
            stop_process(node, timeout=60.0)
        etcd.stop()
