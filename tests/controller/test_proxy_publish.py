"""The operator's publish path with a real ``fleetop run``, ``fleetop node`` and etcd: a config above the
compression threshold is published as format 2, and after a change to one service the published text
(rendered from cached blocks) is byte for byte a full render of the same registrations."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ophelpers import Node, Operator

from fleetop.config import settings_from
from fleetop.controller.proxies.status import published_hash
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ProxySpec, PublishedConfig
from fleetop.proxy.backends import collect_backends
from fleetop.proxy.published import FORMAT_COMPRESSED, decode_published
from fleetop.proxy.render import RenderPaths, default_runtime_dir, render
from waiting import eventually

SERVICES = 150
PROXY = "big"


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    settings = settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})
    async with await Etcd.connect(settings) as client:
        yield client


def spec_body() -> dict[str, object]:
    routes = [{"service": f"s{n:03d}", "host": f"s{n:03d}.example.com"} for n in range(SERVICES)]
    return {"kind": "nginx", "listen": "127.0.0.1:18080", "managed": False, "routes": routes}


async def registrations(etcd: Etcd) -> dict[str, tuple[str, list[tuple[str, bytes]]]]:
    items: dict[str, tuple[str, list[tuple[str, bytes]]]] = {}
    for n in range(SERVICES):
        prefix = f"/services/s{n:03d}/"
        kvs, _ = await etcd.list(prefix)
        items[f"s{n:03d}"] = (prefix, [(kv.key, kv.value) for kv in kvs])
    return items


async def published_after(etcd: Etcd, generation: int) -> PublishedConfig:
    async def newer() -> PublishedConfig | None:
        kv = await etcd.get(Keys().proxy_config(PROXY))
        if kv is None:
            return None
        assert json.loads(kv.value)["format"] == FORMAT_COMPRESSED
        config = decode_published(kv.value)
        return config if config.generation > generation else None

    return await eventually(newer, timeout=60, what=f"a generation after {generation}")


async def test_large_configs_are_published_compressed_and_equal_a_full_render(
    etcd: Etcd, etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    for n in range(SERVICES):
        for i in range(3):
            await etcd.put(f"/services/s{n:03d}/{i}", f"10.1.{n}.{i + 1}:8080")
    node = Node(tmp_path / "node", machines=1)
    node.start()
    operator = Operator(tmp_path, "a", etcd_server.endpoint, etcd_prefix, node.endpoint).start()
    try:
        await etcd.put(Keys().desired("proxies", PROXY), json.dumps(spec_body()))
        first = await published_after(etcd, 0)
        await expect_full_render(etcd, first)

        await etcd.put("/services/s042/9", "10.9.9.9:80")  # one service changes
        second = await published_after(etcd, first.generation)
        assert "server 10.9.9.9:80;" in second.body
        await expect_full_render(etcd, second)

        await etcd.delete_prefix("/services/s007/")  # one service loses every backend
        third = await published_after(etcd, second.generation)
        await expect_full_render(etcd, third)
    finally:
        operator.stop()
        node.stop()


async def expect_full_render(etcd: Etcd, config: PublishedConfig) -> None:
    spec = ProxySpec.model_validate(spec_body())
    backends = collect_backends(await registrations(etcd)).valid
    paths = RenderPaths(default_runtime_dir(PROXY))
    full = render(PROXY, spec, backends, paths=paths)
    assert config.body == full.text
    assert config.hash == published_hash(full.hash, spec)
