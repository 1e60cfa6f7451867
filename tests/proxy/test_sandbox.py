"""Custom templates in a worker process: the same text as in-process rendering, and each limit (time,
size, memory) ends in RenderError while the event loop keeps running."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetop.discovery.addresses import Registration
from fleetop.errors import RenderError, TemporaryError
from fleetop.models import ProxySpec
from fleetop.proxy.render import RenderPaths, render
from fleetop.proxy.sandbox import RenderLimits, RenderPool, render_limited

PATHS = RenderPaths("/var/lib/fleetop/proxies/edge")
BACKENDS = {"web": [Registration("/services/web/1", "127.0.0.1", 8001)]}
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def custom(template: str, **extra: Any) -> ProxySpec:
    body = {"kind": "nginx", "listen": "8080", "routes": [{"service": "web"}], "template": template, **extra}
    return ProxySpec.model_validate(body)


@pytest.fixture
async def pool() -> AsyncIterator[RenderPool]:
    running = RenderPool(RenderLimits(timeout=1.5, max_bytes=4096))
    try:
        yield running
    finally:
        running.close()


async def test_renders_the_same_text_as_in_process(pool: RenderPool) -> None:
    spec = custom(
        "{% for s in services %}{% for b in s.backends %}server {{ b.address }};\n{% endfor %}{% endfor %}"
    )
    rendered = await pool.render("edge", spec, BACKENDS, paths=PATHS)
    assert rendered == render("edge", spec, BACKENDS, paths=PATHS)
    assert rendered.text == "server 127.0.0.1:8001;\n"
    again = await pool.render("edge", spec, {}, paths=PATHS)
    assert again.text == "" and pool.started == 1  # the worker is kept for the next render


async def test_a_slow_template_is_stopped_while_the_loop_runs(pool: RenderPool) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(RenderError, match=r"longer than 1.5s .*--render-timeout"):
            await pool.render("edge", custom(NESTED), BACKENDS, paths=PATHS)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    assert ticks > 10  # the event loop kept running during the render
    # The worker was killed; the next render gets a new one.
    rendered = await pool.render("edge", custom("ok\n"), BACKENDS, paths=PATHS)
    assert rendered.text == "ok\n" and pool.started == 2


async def test_output_over_the_size_limit_fails(pool: RenderPool) -> None:
    big = custom("{% for a in range(100000) %}0123456789{% endfor %}")
    with pytest.raises(RenderError, match=r"larger than 4096 bytes .*--render-max-bytes"):
        await pool.render("edge", big, BACKENDS, paths=PATHS)
    fits = custom("{% for a in range(400) %}0123456789{% endfor %}")
    assert len((await pool.render("edge", fits, BACKENDS, paths=PATHS)).text) == 4000


async def test_a_huge_value_fails_on_the_worker_memory_cap(pool: RenderPool) -> None:
    with pytest.raises(RenderError, match="memory"):
        await pool.render("edge", custom("{{ ('x' * 10**10) | length }}"), BACKENDS, paths=PATHS)


async def test_template_errors_are_reported_as_in_process(pool: RenderPool) -> None:
    with pytest.raises(RenderError, match="undefined"):
        await pool.render("edge", custom("{{ nothing }}"), BACKENDS, paths=PATHS)
    with pytest.raises(RenderError, match="ZeroDivisionError"):
        await pool.render("edge", custom("{{ 1 // 0 }}"), BACKENDS, paths=PATHS)
    with pytest.raises(RenderError, match=r"unsafe|refusing|not safely|access"):
        await pool.render("edge", custom("{{ spec.__class__.__mro__ }}"), BACKENDS, paths=PATHS)
    assert pool.started == 1


async def test_the_worker_gets_no_credentials(pool: RenderPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a template that escaped the sandbox would find no etcd password in its environment."""
    monkeypatch.setenv("ETCDCTL_PASSWORD", "secret")
    await pool.render("edge", custom("x\n"), BACKENDS, paths=PATHS)
    worker = pool._idle[0]
    with open(f"/proc/{worker.process.pid}/environ", "rb") as env:
        assert b"ETCDCTL_PASSWORD" not in env.read()


async def test_a_cancelled_render_kills_its_worker(pool: RenderPool) -> None:
    task = asyncio.create_task(pool.render("edge", custom(NESTED), BACKENDS, paths=PATHS))
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not pool._idle
    assert (await pool.render("edge", custom("y\n"), BACKENDS, paths=PATHS)).text == "y\n"


def test_render_limited_matches_render_for_builtin_templates() -> None:
    spec = ProxySpec.model_validate({"kind": "haproxy", "listen": "8080", "routes": [{"service": "web"}]})
    assert render_limited("edge", spec, BACKENDS, paths=PATHS, max_bytes=1 << 20) == render(
        "edge", spec, BACKENDS, paths=PATHS
    )
    with pytest.raises(RenderError, match="larger than 100 bytes"):
        render_limited("edge", spec, BACKENDS, paths=PATHS, max_bytes=100)


def test_close_stops_idle_workers() -> None:
    async def scenario() -> int:
        pool = RenderPool()
        await pool.render("edge", custom("z\n"), BACKENDS, paths=PATHS)
        pid = pool._idle[0].process.pid
        pool.close()
        return pid

    pid = asyncio.run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_any_text_comes_back_unchanged(pool: RenderPool) -> None:
    text = '# é ü \\u00e9 \t\x01 {}[]"\n'
    spec = custom("{% raw %}" + text + "{% endraw %}")
    assert (await pool.render("edge", spec, BACKENDS, paths=PATHS)).text == text


async def test_a_render_never_waits_for_a_busy_pool() -> None:
    """With every worker busy, a render asks to be retried rather than hold the caller."""
    pool = RenderPool(RenderLimits(timeout=30.0, workers=1))
    slow = asyncio.create_task(pool.render("edge", custom(NESTED), BACKENDS, paths=PATHS))
    try:
        await asyncio.sleep(0.5)
        with pytest.raises(TemporaryError, match="busy"):
            await pool.render("edge", custom("x\n"), BACKENDS, paths=PATHS)
    finally:
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        pool.close()
