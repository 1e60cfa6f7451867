"""The fleet informer losing and finding fleet again, against a real ``fleetop node``: a poll that fails
and a poll that hangs (held at a gate the test opens) both mark fleet lost since the poll began and
report every owner; the next answered poll clears it and reports every owner again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fleetop.controller.runtime.informers import FleetInformer
from fleetop.errors import FleetUnavailable
from fleetop.fleet.client import FleetClient
from fleetop.fleet.model import UnitState
from fleetop.fleet.units import UnitOption
from waiting import eventually

OWNED = [
    UnitOption("Service", "ExecStart", "/bin/sleep 1000"),
    UnitOption("X-Fleetop", "Service", "lossy"),
    UnitOption("X-Fleetop", "Role", "main"),
]


class FlakyClient:
    """The real client, with ``list_states`` (every poll's first request) failing or held at a gate,
    as the test says."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False

    async def list_states(self) -> list[UnitState]:
        if self.failing:
            raise FleetUnavailable("GET /fleet/v1/state: [Errno 111] Connection refused")
        await self.gate.wait()
        return await self.client.list_states()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def test_lost_and_found(fleet: FleetClient) -> None:
    await fleet.create_unit("lossy@1.service", OWNED, "inactive")
    flaky = FlakyClient(fleet)
    reported: list[tuple[set[str], bool]] = []
    informer = FleetInformer(
        flaky,  # type: ignore[arg-type]
        lambda keys, machines: reported.append((keys, machines)),
        fast=0.05,
        slow=0.1,
        stall_after=0.5,
    )
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert informer.loss is None and informer.seen_at is not None
        assert "services/lossy" in informer.snapshot.owners

        reported.clear()
        flaky.failing = True
        before = time.time()
        loss = await eventually(lambda: informer.loss, 30, "fleet to count as lost")
        assert before - 1 <= loss.since <= time.time()
        assert "Connection refused" in loss.error
        assert loss.endpoints == fleet.endpoints and loss.last_seen == informer.seen_at
        assert ({"services/lossy"}, True) in reported  # everyone is judged again
        first = loss
        await asyncio.sleep(0.3)
        assert informer.loss is first  # one outage, one loss: its time and message do not move

        reported.clear()
        flaky.failing = False
        await eventually(lambda: informer.loss is None, 30, "fleet to be found again")
        assert ({"services/lossy"}, True) in reported

        flaky.gate.clear()  # the next poll hangs
        before = time.time()
        loss = await eventually(lambda: informer.loss, 30, "a hanging poll to count as lost")
        assert loss.error == "no answer within 0.5s"
        assert before - 1 <= loss.since <= time.time()
        flaky.gate.set()
        await eventually(lambda: informer.loss is None, 30, "the hung poll to finish and clear the loss")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fleet.destroy_unit("lossy@1.service")
