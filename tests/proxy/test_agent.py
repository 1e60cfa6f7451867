"""The proxy agent against a REAL etcd and a REAL nginx with real HTTP backends on loopback.

Publish a config → the agent applies it and reports the applied hash; publish a broken one → the
status carries the error and the failed hash while the old config keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import ProxySite, agent_running, fetch, handlers_seen, http_backends
from fleetop.discovery.addresses import Registration
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import AgentStatus, PublishedConfig
from fleetop.proxy import apply as apply_module
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.apply import start_proxy
from fleetop.proxy.published import FORMAT_COMPRESSED, encode_published

PROXY = "edge"
MACHINE = "m1"


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[Registration]]:
    """Two HTTP servers on 127.0.0.4, 127.0.0.5 (python's http.server, separate processes)."""
    with http_backends(("127.0.0.4", "127.0.0.5"), tmp_path) as regs:
        yield regs


class Site(ProxySite):
    """A running nginx with its config path, runtime paths and port."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, "nginx", PROXY)

    def config(self, backends: list[Registration], generation: int, extra: str = "") -> PublishedConfig:
        return self.published(backends, generation, extra=extra)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with Site(tmp_path) as running:
        yield running


async def publish(etcd: Etcd, cfg: PublishedConfig | str) -> None:
    body = cfg if isinstance(cfg, str) else cfg.model_dump_json(by_alias=True)
    await etcd.put(Keys().proxy_config(PROXY), body)


async def wait_status(etcd: Etcd, done: Callable[[AgentStatus], bool], timeout: float = 30.0) -> AgentStatus:
    """Poll the agent's status key until ``done(status)`` holds."""
    key = Keys().agent_status(PROXY, MACHINE)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        kv = await etcd.get(key)
        if kv is not None:
            status = AgentStatus.model_validate_json(kv.value)
            if done(status):
                return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"status never got there; last: {status}")


async def settled(port: int, only: set[str], run: int = 20) -> bool:
    """True once ``run`` requests in a row were answered by ``only`` (old workers finish after a
    reload, so the first answers may still come from the previous config)."""
    streak = 0
    for _ in range(500):
        status, handler = await asyncio.to_thread(fetch, port)
        streak = streak + 1 if status == 200 and handler in only else 0
        if streak >= run:
            return True
        await asyncio.sleep(0.005)
    return False


@contextlib.asynccontextmanager
async def running_agent(etcd: Etcd, site: Site) -> AsyncIterator[ProxyAgent]:
    settings = AgentSettings(
        proxy=PROXY, machine=MACHINE, runtime_dir=site.target.parent, config_path=site.target, retry_min=0.05
    )
    async with agent_running(etcd, settings) as agent:
        yield agent


async def test_agent_applies_published_configs_and_reports(
    etcd: Etcd, site: Site, backends: list[Registration]
) -> None:
    async with running_agent(etcd, site):
        first = await wait_status(etcd, lambda s: s.machine == MACHINE)
        assert first.applied_hash == "" and first.error is None

        good = site.config(backends, generation=1)
        await publish(etcd, good)
        status = await wait_status(etcd, lambda s: s.applied_hash == good.hash)
        assert status.applied_generation == 1 and status.reloads == 1 and status.applied_at
        want = {b.address for b in backends}
        assert await handlers_seen(site.port, want) == want
        assert site.target.read_text() == good.body

        broken = site.config(backends[:1], generation=2, extra="\nnot_a_directive on;\n")
        await publish(etcd, broken)
        status = await wait_status(etcd, lambda s: s.failed_hash == broken.hash)
        assert status.applied_hash == good.hash and status.applied_generation == 1
        assert status.error is not None and "not_a_directive" in status.error
        assert site.target.read_text() == good.body
        assert await handlers_seen(site.port, want) == want  # the old config still serves

        await publish(etcd, "{not json")
        status = await wait_status(etcd, lambda s: s.error is not None and "not valid" in s.error)
        assert status.applied_hash == good.hash

        fixed = site.config(backends[:1], generation=3)
        await publish(etcd, fixed)
        status = await wait_status(etcd, lambda s: s.applied_hash == fixed.hash)
        assert status.error is None and status.failed_hash == "" and status.reloads == 2
        assert await settled(site.port, {backends[0].address})

    # a stopped agent revokes its lease: its status disappears
    assert await etcd.get(Keys().agent_status(PROXY, MACHINE)) is None


async def test_the_newest_config_wins_a_burst(etcd: Etcd, site: Site, backends: list[Registration]) -> None:
    configs = [site.config(backends[: 1 + i % 2], generation=i) for i in range(1, 9)]
    async with running_agent(etcd, site) as agent:
        await wait_status(etcd, lambda s: s.machine == MACHINE)
        for cfg in configs:
            await publish(etcd, cfg)
        last = configs[-1]
        # generations 2, 4, 6 and 8 are the same config: the agent may have applied an earlier one of them
        await wait_status(etcd, lambda s: s.applied_hash == last.hash and s.applied_generation == 8)
        assert agent.status.reloads <= len(configs)
        await asyncio.sleep(0.3)  # nothing older is applied afterwards
        assert agent.status.applied_hash == last.hash
        assert site.target.read_text() == last.body


async def test_the_applied_config_published_again_is_reported_without_a_reload(
    etcd: Etcd, site: Site, backends: list[Registration]
) -> None:
    """A, then B superseded before the agent got to it, then A again under a newer generation: the agent
    runs A already, so it reloads nothing and says it has applied the newest generation."""
    first = site.config(backends, generation=1)
    again = first.model_copy(update={"generation": 3})
    async with running_agent(etcd, site) as agent:
        await publish(etcd, first)
        await wait_status(etcd, lambda s: s.applied_generation == 1)
        reloads, applied_at = agent.status.reloads, agent.status.applied_at
        await publish(etcd, again)
        status = await wait_status(etcd, lambda s: s.applied_generation == 3)
        assert status.applied_hash == first.hash and status.error is None
        assert (status.reloads, status.applied_at) == (reloads, applied_at)  # nothing was applied again


async def test_a_config_published_before_the_proxy_runs_is_retried(
    etcd: Etcd, tmp_path: Path, backends: list[Registration]
) -> None:
    site = Site(tmp_path)
    site.process.stop()  # the proxy is down: the reload cannot happen yet
    try:
        cfg = site.config(backends, generation=1)
        async with running_agent(etcd, site):
            await publish(etcd, cfg)
            status = await wait_status(etcd, lambda s: s.failed_hash == cfg.hash)
            assert status.error is not None and "reload" in status.error
            site.process = start_proxy("nginx", site.target, site.paths, listen=("127.0.0.1", site.port))
            status = await wait_status(etcd, lambda s: s.applied_hash == cfg.hash)
            assert status.error is None
    finally:
        site.process.stop()


async def test_the_command_runs_the_agent_and_stops_on_sigterm(
    etcd: Etcd, etcd_server: EtcdServer, etcd_prefix: str, site: Site, backends: list[Registration]
) -> None:
    argv = [
        sys.executable, "-m", "fleetop.proxy.cli",
        "--proxy", PROXY, "--machine", MACHINE, "--config-path", str(site.target),
        "--allow-config-dir", str(site.target.parent),  # this machine's choice: the test's directory
        "--endpoints", etcd_server.endpoint, "--prefix", etcd_prefix,
    ]  # fmt: skip
    log_path = site.target.parent / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cfg = site.config(backends, generation=7)
        await publish(etcd, cfg)
        status = await wait_status(etcd, lambda s: s.applied_hash == cfg.hash)
        assert status.applied_generation == 7
        want = {b.address for b in backends}
        assert await handlers_seen(site.port, want) == want
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0, log_path.read_text()
        assert await etcd.get(Keys().agent_status(PROXY, MACHINE)) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_command_refuses_bad_flags() -> None:
    argv = [sys.executable, "-m", "fleetop.proxy.cli", "--proxy", "Bad_Name", "--endpoints", "127.0.0.1:1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--proxy" in result.stderr


async def test_a_compressed_config_is_applied_and_an_undecodable_one_refused(
    etcd: Etcd, site: Site, backends: list[Registration]
) -> None:
    """A config above the compression threshold travels as format 2 and is applied like any other;
    a document the agent cannot decode is reported and changes nothing."""
    padding = "".join(f"# padding line {i:06d} to make the config large\n" for i in range(3000))
    large = site.config(backends, generation=1, extra=padding)
    raw = encode_published(large)
    assert json.loads(raw)["format"] == FORMAT_COMPRESSED
    async with running_agent(etcd, site):
        await etcd.put(Keys().proxy_config(PROXY), raw)
        status = await wait_status(etcd, lambda s: s.applied_hash == large.hash)
        assert status.error is None and site.target.read_text() == large.body
        want = {b.address for b in backends}
        assert await handlers_seen(site.port, want) == want

        newer = site.config(backends[:1], generation=2, extra=padding)
        document = json.loads(encode_published(newer))
        await publish(etcd, json.dumps({**document, "format": 9}))
        status = await wait_status(etcd, lambda s: s.error is not None and "format 9" in s.error)
        assert status.applied_hash == large.hash and status.reloads == 1
        document["bodyZ"] = document["bodyZ"][:-40] + "A" * 40  # corrupt data, valid base64
        await publish(etcd, json.dumps(document))
        status = await wait_status(etcd, lambda s: s.error is not None and "body" in s.error)
        assert status.applied_hash == large.hash and status.reloads == 1
        assert site.target.read_text() == large.body
        assert await handlers_seen(site.port, want) == want  # the old config still serves


async def test_a_server_only_change_is_installed_without_starting_the_checker(
    etcd: Etcd, site: Site, backends: list[Registration], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After nginx accepted a config, one that only changes upstream server addresses is proven and
    installed without ``nginx -t``; a structural change runs the check again, and a broken one is
    still refused."""
    checks: list[list[str]] = []
    real = apply_module.run_command

    async def counted(argv: list[str], **kwargs: Any) -> tuple[int, str]:
        checks.append(list(argv))
        return await real(argv, **kwargs)

    monkeypatch.setattr(apply_module, "run_command", counted)
    async with running_agent(etcd, site) as agent:
        first = site.config(backends, generation=1)
        await publish(etcd, first)
        await wait_status(etcd, lambda s: s.applied_hash == first.hash)
        assert len(checks) == 1

        fewer = site.config(backends[:1], generation=2)
        await publish(etcd, fewer)
        status = await wait_status(etcd, lambda s: s.applied_hash == fewer.hash)
        assert len(checks) == 1 and agent.checks_skipped == 1 and status.reloads == 2
        assert site.target.read_text() == fewer.body
        assert await settled(site.port, {backends[0].address})

        structural = site.config(backends, generation=3, extra="\n# a comment is a change too\n")
        await publish(etcd, structural)
        await wait_status(etcd, lambda s: s.applied_hash == structural.hash)
        assert len(checks) == 2

        broken = site.config(backends[:1], generation=4, extra="\nnot_a_directive on;\n")
        await publish(etcd, broken)
        status = await wait_status(etcd, lambda s: s.failed_hash == broken.hash)
        assert len(checks) == 3 and status.applied_hash == structural.hash
        assert site.target.read_text() == structural.body
