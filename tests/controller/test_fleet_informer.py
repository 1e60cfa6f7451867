"""The fleet informer against a real ``fleetop node``: expectations instead of waiting for a poll."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import pytest

from fleetop.clock import FakeClock
from fleetop.controller.runtime.informers import (
    QUIET_POLL_MAX,
    QUIET_POLL_SHARE,
    STALL_AFTER,
    UNITS_AT_LEAST,
    FleetInformer,
)
from fleetop.fleet.client import FleetClient
from fleetop.fleet.model import Machine, Unit, UnitState
from fleetop.fleet.ownership import owner_options
from fleetop.fleet.units import UnitOption
from waiting import eventually

KEY = "services/web"


class GatedClient:
    """The real client, with ``list_states`` (a poll's first request) held at a gate the test opens."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def list_states(self) -> list[UnitState]:
        self.entered.set()
        await self.gate.wait()
        return await self.client.list_states()

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
        return []

    async def list_states(self) -> list[UnitState]:
        began = self.clock.now()
        await self.clock.sleep(self.seconds)
        self.polls.append((began, self.clock.now()))
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
    """A quiet poll that costs 50 ms of CPU may run at most every 10 s (0.5 % of a core), never less
    often than every QUIET_POLL_MAX seconds, and while converging every ``fast`` seconds. The first
    poll (every page parsed) does not set the pace."""
    informer = FleetInformer(gated, lambda keys, _: None, fast=0.1, slow=0.2)  # type: ignore[arg-type]
    real = gated.list_states

    async def costly_list() -> list[UnitState]:
        began = time.thread_time()
        while time.thread_time() - began < 0.05:  # 50 ms of CPU on the operator's thread
            pass
        return await real()

    gated.list_states = costly_list  # type: ignore[method-assign]
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert informer.interval == 0.2, "paced by quiet polls only"
        await eventually(lambda: informer.interval > 0.2, 30, "a quiet poll to set the pace")
        assert 0.05 / QUIET_POLL_SHARE <= informer.interval <= QUIET_POLL_MAX
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
    real = fleet.list_states

    async def held() -> list[UnitState]:
        await hang.wait()
        return await real()

    fleet.list_states = held  # type: ignore[method-assign]
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


class ListedFleet:
    """fleet's listings as the client returns them: the very same objects while a page is unchanged."""

    def __init__(self) -> None:
        self.units = [Unit(NAME, OPTIONS, "launched", "launched", "m1")]
        self.states = [UnitState(NAME, "h", "m1", "loaded", "active", "running")]
        self.machines = [Machine("m1"), Machine("m2")]
        self.listed: Counter[str] = Counter()
        self.endpoints = ("unix:///var/run/fleet.sock",)
        self.unreachable: dict[str, str] = {}

    async def list_units(self) -> list[Unit]:
        self.listed["units"] += 1
        return list(self.units)

    async def list_states(self) -> list[UnitState]:
        self.listed["states"] += 1
        return list(self.states)

    async def list_machines(self) -> list[Machine]:
        self.listed["machines"] += 1
        return list(self.machines)


NAME = "web@1.service"
OPTIONS = (UnitOption("Service", "ExecStart", "/bin/sleep 1000"), *owner_options("web", "main", "t1"))


async def test_an_unchanged_poll_costs_no_work_and_a_change_is_still_seen() -> None:
    clock = FakeClock()
    fleet = ListedFleet()
    reported: list[tuple[set[str], bool]] = []
    informer = FleetInformer(fleet, lambda k, m: reported.append((k, m)), timer=clock)  # type: ignore[arg-type]
    await informer.poll_once()
    assert reported == [({KEY}, True)] and fleet.listed["units"] == 1
    first = informer.snapshot
    index = first.index

    reported.clear()
    await clock.step(5.0)
    await informer.poll_once()
    again = informer.snapshot
    assert reported == [], "nothing changed: nobody is woken"
    assert fleet.listed == {"units": 1, "states": 2, "machines": 2}, "units are not listed again"
    assert again.started == first.started + 5.0, "the poll still counts as a fresh one"
    assert again.units is first.units and again.index is index, "nothing indexed again"

    # a unit fails: its owner is reported at once, and units are listed with the changed states
    fleet.states = [UnitState(NAME, "h", "m1", "loaded", "failed", "failed")]
    await informer.poll_once()
    assert reported == [({KEY}, False)] and fleet.listed["units"] == 2
    assert informer.snapshot.states[NAME][0].active_state == "failed"

    # a machine is lost: reported at once
    reported.clear()
    fleet.machines = fleet.machines[:1]
    await informer.poll_once()
    assert reported == [(set(), True)] and set(informer.snapshot.machines) == {"m1"}

    # a change to a unit alone (by hand, fleet has not acted on it yet) is seen within UNITS_AT_LEAST
    reported.clear()
    fleet.units = [Unit(NAME, OPTIONS, "loaded", "launched", "m1")]
    await informer.poll_once()
    assert informer.snapshot.units[NAME].desired_state == "launched" and reported == []
    await clock.step(UNITS_AT_LEAST)
    await informer.poll_once()
    assert informer.snapshot.units[NAME].desired_state == "loaded" and reported == [({KEY}, False)]

    # a key expecting its own writes has units listed by the next poll
    listed = fleet.listed["units"]
    informer.expect(KEY)
    await informer.poll_once()
    assert fleet.listed["units"] == listed + 1 and informer.fresh_for(KEY)
