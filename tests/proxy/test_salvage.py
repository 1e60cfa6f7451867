"""A config that fails its check because of one backend's line is applied without it, on REAL nginx
and HAProxy: requests reach the other backends, the dropped line is reported, and a config broken
anywhere else still fails as before.

The bad backend is an address the proxy refuses (port 99999), not a name, so nothing queries DNS;
the checker blames its line the same way it blames an unresolvable upstream name.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from backends import fetch, handlers_seen, http_backends
from fleetop.config import settings_from
from fleetop.discovery.addresses import Registration
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer, free_port
from fleetop.models import AgentStatus, ProxySpec, PublishedConfig
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.apply import ApplyError, ProxyProcess, initial_config, start_proxy
from fleetop.proxy.render import RenderPaths, render
from fleetop.proxy.salvage import apply_dropping_backends, blamed_lines, drop_blamed
from waiting import eventually

Kind = Literal["nginx", "haproxy"]
BAD = Registration("/services/web/bad", "127.0.0.9", 65000)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[Registration]]:
    with http_backends(("127.0.0.2", "127.0.0.3"), tmp_path) as regs:
        yield regs


@pytest.fixture(params=["nginx", "haproxy"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Kind, int, Path, RenderPaths]]:
    kind: Kind = request.param
    port = free_port("127.0.0.1")
    paths = RenderPaths(str(tmp_path / "run"))
    target = tmp_path / f"{kind}.conf"
    target.write_text(initial_config("edge", kind, f"127.0.0.1:{port}", paths))
    process: ProxyProcess = start_proxy(kind, target, paths, listen=("127.0.0.1", port))
    try:
        yield kind, port, target, paths
    finally:
        process.stop()


def published(
    kind: Kind, port: int, paths: RenderPaths, backends: list[Registration], extra: str = ""
) -> PublishedConfig:
    spec = ProxySpec.model_validate(
        {
            "kind": kind,
            "listen": f"127.0.0.1:{port}",
            "headers": {"handler": True},
            "routes": [{"service": "web"}],
        }
    )
    text = render("edge", spec, {"web": [*backends, BAD]}, paths=paths).text.replace(
        "127.0.0.9:65000", "127.0.0.9:99999"
    )
    text += extra
    return PublishedConfig(hash=hashlib.sha256(text.encode()).hexdigest(), generation=1, kind=kind, body=text)


async def test_the_bad_backend_is_dropped_and_the_others_serve(
    proxy: tuple[Kind, int, Path, RenderPaths], backends: list[Registration]
) -> None:
    kind, port, target, paths = proxy
    cfg = published(kind, port, paths, backends)
    result, dropped = await apply_dropping_backends(cfg, target, check=None, reload=None, timeout=30)
    assert result.hash == cfg.hash and result.reloaded
    assert [d.server for d in dropped] and all("127.0.0.9:99999" in d.server for d in dropped)
    assert all("port" in d.reason for d in dropped), dropped
    installed = target.read_text()
    live = [line for line in installed.splitlines() if line.strip().startswith("server")]
    assert not [line for line in live if "99999" in line]
    want = {b.address for b in backends}
    assert await handlers_seen(port, want) == want


async def test_a_config_broken_elsewhere_still_fails_its_check(
    proxy: tuple[Kind, int, Path, RenderPaths], backends: list[Registration]
) -> None:
    kind, port, target, paths = proxy
    before = target.read_bytes()
    cfg = published(kind, port, paths, backends, extra="\nthis_is_not_a_directive on;\n")
    with pytest.raises(ApplyError) as info:
        await apply_dropping_backends(cfg, target, check=None, reload=None, timeout=30)
    assert info.value.stage == "check"
    assert "this_is_not_a_directive" in info.value.output
    assert target.read_bytes() == before
    status, _ = await asyncio.to_thread(fetch, port)
    assert status == 404  # the initial config still serves


def test_only_server_lines_of_the_staged_file_are_blamed() -> None:
    body = "upstream a {\n    server 10.0.0.1:80;\n}\nserver {\n    listen 80;\n}\n"
    staged = "/x/.fleetop-staged-0123"
    blamed = f'nginx: [emerg] host not found in upstream "h:80" in {staged}:2'
    assert blamed_lines("nginx", blamed) == {2: 'host not found in upstream "h:80"'}
    salvaged = drop_blamed("nginx", body, blamed)
    assert salvaged is not None
    assert "server 127.0.0.1:1 down;" in salvaged[0] and "10.0.0.1" not in salvaged[0]
    assert drop_blamed("nginx", body, f"nginx: [emerg] bad listen in {staged}:5") is None
    assert drop_blamed("nginx", body, "nginx: [emerg] host not found in /etc/nginx/other.conf:2") is None
    assert drop_blamed("nginx", body, f"nginx: [emerg] x in {staged}:4") is None  # a server block
    assert drop_blamed("nginx", body, f"nginx: [emerg] x in {staged}:99") is None


async def test_the_agent_applies_without_the_bad_backend_and_reports_it(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path, backends: list[Registration]
) -> None:
    port = free_port("127.0.0.1")
    paths = RenderPaths(str(tmp_path / "run"))
    target = tmp_path / "nginx.conf"
    target.write_text(initial_config("edge", "nginx", f"127.0.0.1:{port}", paths))
    process = start_proxy("nginx", target, paths, listen=("127.0.0.1", port))
    settings = AgentSettings(proxy="edge", machine="m1", runtime_dir=target.parent, config_path=target)
    settings_etcd = settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})
    try:
        async with await Etcd.connect(settings_etcd) as etcd:
            task = asyncio.create_task(ProxyAgent(etcd, Keys(), settings).run())
            try:
                cfg = published("nginx", port, paths, backends)
                await etcd.put(Keys().proxy_config("edge"), cfg.model_dump_json(by_alias=True))

                async def reported() -> AgentStatus | None:
                    kv = await etcd.get(Keys().agent_status("edge", "m1"))
                    status = AgentStatus.model_validate_json(kv.value) if kv is not None else None
                    return status if status is not None and status.applied_hash == cfg.hash else None

                status = await eventually(reported, 30, "the agent to apply the config")
                assert status.error is None
                assert len(status.dropped_backends) == 1 and "127.0.0.9:99999" in status.dropped_backends[0]
                want = {b.address for b in backends}
                assert await handlers_seen(port, want) == want
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        process.stop()
