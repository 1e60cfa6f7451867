"""The executor's creates: every existence check of a pass is read before the first write (several in
flight), the writes stay one at a time in the planner's order, and a unit someone else holds under a
name still stops the pass there, with nothing after it written. fleet is a recording fake here; the
events go to a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import cast

import pytest

from fleetop.config import EtcdSettings
from fleetop.controller.runtime import executor as executor_module
from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.world import CreateUnit, DestroyUnit
from fleetop.errors import FleetAPIError, FleetUnavailable
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.fleet.model import Unit
from fleetop.fleet.units import UnitOption
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer

KEYS = Keys()
FENCE = (KEYS.leader(), b"me")
WEB = ObjectRef("services", "web")
OPTIONS = (UnitOption("Service", "ExecStart", "/bin/sleep 1"),)


class RecordingFleet:
    """get_unit answers after a pause (so reads can overlap); writes are recorded in order."""

    def __init__(self, held: dict[str, Unit] | None = None, failing: Sequence[str] = ()) -> None:
        self.held = held or {}
        self.failing = set(failing)
        self.calls: list[str] = []
        self.reading = 0
        self.most_reading = 0

    async def get_unit(self, name: str) -> Unit | None:
        self.reading += 1
        self.most_reading = max(self.most_reading, self.reading)
        try:
            await asyncio.sleep(0.01)
            if name in self.failing:
                raise FleetUnavailable(f"GET {name}: fleet is away")
            return self.held.get(name)
        finally:
            self.reading -= 1
            self.calls.append(f"get {name}")

    async def create_unit(
        self, name: str, options: Sequence[UnitOption], desired_state: str | None = None
    ) -> str:
        self.calls.append(f"put {name}")
        return "created"

    async def destroy_unit(self, name: str) -> bool:
        self.calls.append(f"delete {name}")
        return True


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(
        EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    ) as client:
        await client.put(*FENCE)
        yield client


def executor_for(fleet: RecordingFleet, etcd: Etcd) -> Executor:
    return Executor(cast(FleetClient, fleet), etcd, KEYS, lambda: FENCE)


async def test_checks_are_read_ahead_and_writes_stay_in_order(etcd: Etcd) -> None:
    fleet = RecordingFleet()
    names = [f"web@{n}.service" for n in range(1, 13)]
    actions = [DestroyUnit("old@1.service", "replaced"), *(CreateUnit(n, OPTIONS) for n in names)]
    outcome = await executor_for(fleet, etcd).apply(WEB, actions)
    assert outcome.error is None and len(outcome.applied) == 13
    writes = [c for c in fleet.calls if not c.startswith("get ")]
    assert writes == [f"put {n}" for n in names] + ["delete old@1.service"]
    first_write = fleet.calls.index(writes[0])
    assert sorted(fleet.calls[:first_write]) == sorted(f"get {n}" for n in names)
    assert 1 < fleet.most_reading <= executor_module.READS_IN_FLIGHT


async def test_a_unit_held_by_someone_else_stops_the_pass_there(etcd: Etcd) -> None:
    foreign = Unit("web@2.service", OPTIONS, "launched")
    fleet = RecordingFleet(held={"web@2.service": foreign})
    actions = [CreateUnit(f"web@{n}.service", OPTIONS) for n in (1, 2, 3)]
    actions.append(DestroyUnit("old@1.service", "replaced"))
    outcome = await executor_for(fleet, etcd).apply(WEB, actions)
    assert isinstance(outcome.error, FleetAPIError) and outcome.error.code == 409
    assert outcome.skipped == 2
    assert [c for c in fleet.calls if not c.startswith("get ")] == ["put web@1.service"]


async def test_a_check_that_failed_fails_its_own_create_in_turn(etcd: Etcd) -> None:
    fleet = RecordingFleet(failing=["web@2.service"])
    actions = [CreateUnit(f"web@{n}.service", OPTIONS) for n in (1, 2, 3)]
    outcome = await executor_for(fleet, etcd).apply(WEB, actions)
    assert isinstance(outcome.error, FleetUnavailable)
    assert outcome.applied == ["Created web@1.service"] and outcome.skipped == 1
    assert [c for c in fleet.calls if not c.startswith("get ")] == ["put web@1.service"]
