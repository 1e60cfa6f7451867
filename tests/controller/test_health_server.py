"""The operator's health server: serves, wakes seldom when idle, and stops at once when cancelled."""

from __future__ import annotations

import asyncio

from fleetop.controller.runtime.health import HealthApp, HealthServer
from fleetop.controller.runtime.metrics import OperatorMetrics
from fleetop.http import raw_request


async def ready() -> tuple[bool, dict[str, object]]:
    return True, {}


async def test_serves_and_stops_when_cancelled() -> None:
    server = HealthServer(HealthApp(OperatorMetrics(), ready), port=0)
    task = asyncio.create_task(server.run())
    for _ in range(100):
        try:
            resp = await raw_request(server.url, "GET", "/healthz")
            break
        except Exception:
            await asyncio.sleep(0.05)
    assert resp.status == 200 and resp.header("date")
    await asyncio.sleep(1.5)  # idle, its loop ticks once a second (uvicorn's own: ten times)
    assert (await raw_request(server.url, "GET", "/readyz")).status == 200
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done and task.cancelled(), "cancelled, the server stops (woken, not at its next tick)"
