"""The fleet informer against a real ``fleetop node``: expectations instead of waiting for a poll."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from fleetop.clock import FakeClock
from fleetop.controller.runtime.informers import QUIET_POLL_SHARE, STALL_AFTER, FleetInformer
from fleetop.fleet.client import FleetClient
from fleetop.fleet.model import Machine, Unit, UnitState

KEY = "services/web"


class GatedClient:
    """The real client, with ``list_units`` held at a gate the test opens."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def list_units(self) -> list[Unit]:
        self.entered.set()
        await self.gate.wait()
        return await self.client.list_units()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def gated(fleet: FleetClient) -> GatedClient:
    return GatedClient(fleet)


async def test_an_expectation_is_met_only_by_a_poll_that_began_after_it(gated: GatedClient) -> None:
    reported: list[set[str]] = []
    informer = FleetInformer(gated, lambda keys, _: reported.append(keys), fast=0.05, slow=0.05)  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert informer.fresh_for(KEY)  # nothing expected yet

        gated.gate.clear()
        gated.entered.clear()
        await asyncio.wait_for(gated.entered.wait(), 30)  # a poll has begun and is held
        informer.expect(KEY)
        assert not informer.fresh_for(KEY)
        gated.entered.clear()
        gated.gate.set()
        await asyncio.wait_for(gated.entered.wait(), 30)  # that poll ended; the next one began
        assert not informer.fresh_for(KEY), "a poll that began before expect() cannot show its writes"
        assert not any(KEY in keys for keys in reported)

        for _ in range(600):
            if informer.fresh_for(KEY):
                break
            await asyncio.sleep(0.05)
        assert informer.fresh_for(KEY)
        assert any(KEY in keys for keys in reported), "the poll that met it queues the key again"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class SlowFleet:
    """A fleet whose every listing takes ``seconds`` on the test's clock (no I/O: the pacing alone)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.polls: list[tuple[float, float]] = []
        self.endpoints = ("unix:///var/run/fleet.sock",)
        self.unreachable: dict[str, str] = {}

    async def list_units(self) -> list[Unit]:
        began = self.clock.now()
        await self.clock.sleep(self.seconds)
        self.polls.append((began, self.clock.now()))
        return []

    async def list_states(self) -> list[UnitState]:
        return []

    async def list_machines(self) -> list[Machine]:
        return []


async def test_a_poll_leaves_at_least_its_own_duration_idle() -> None:
    """Woken on every action, the informer still polls at most half of the time."""
    clock = FakeClock()
    fleet = SlowFleet(clock, 0.2)
    informer = FleetInformer(fleet, lambda keys, _: None, fast=0.0, slow=0.0, timer=clock)  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(200):  # an action every 10 ms, for 2 s
            informer.expect(KEY)
            await clock.step(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(fleet.polls) >= 4
    for (began, ended), (following, _) in itertools.pairwise(fleet.polls):
        assert ended - began == pytest.approx(0.2)
        assert following - ended == pytest.approx(0.2), "idle as long as the poll took, not longer"


async def test_quiet_polls_are_spaced_by_their_cpu_cost(gated: GatedClient) -> None:
    """A poll that costs 50 ms of CPU may run at most every 5 s when quiet (1 % of a core), while
    converging every ``fast`` seconds."""
    informer = FleetInformer(gated, lambda keys, _: None, fast=0.1, slow=0.2)  # type: ignore[arg-type]
    real = gated.list_units

    async def costly_list() -> list[Unit]:
        began = time.thread_time()
        while time.thread_time() - began < 0.05:  # 50 ms of CPU on the operator's thread
            pass
        return await real()

    gated.list_units = costly_list  # type: ignore[method-assign]
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert informer.interval >= 0.05 / QUIET_POLL_SHARE
        informer.hurry(30)
        assert informer.interval == 0.1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_poll_hanging_for_stall_after_marks_fleet_lost_until_it_ends() -> None:
    clock = FakeClock()
    fleet = SlowFleet(clock, 0.0)
    reported: list[tuple[set[str], bool]] = []
    informer = FleetInformer(fleet, lambda k, m: reported.append((k, m)), fast=1.0, slow=5.0, timer=clock)  # type: ignore[arg-type]
    hang = asyncio.Event()
    hang.set()
    real = fleet.list_units

    async def held() -> list[Unit]:
        await hang.wait()
        return await real()

    fleet.list_units = held  # type: ignore[method-assign]
    task = asyncio.create_task(informer.run())
    try:
        await clock.step(0)
        assert informer.synced.is_set() and informer.loss is None
        hang.clear()
        await clock.step(5.0)  # the next (slow) poll begins, and hangs
        reported.clear()
        await clock.step(STALL_AFTER - 0.1)
        assert informer.loss is None, "a poll may take up to stall_after"
        await clock.step(0.1)
        assert informer.loss is not None and informer.loss.error == f"no answer within {STALL_AFTER:g}s"
        assert reported == [(set(), True)], "everyone is judged again"
        hang.set()
        await clock.step(0)
        assert informer.loss is None, "the hung poll finished: fleet answers again"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
