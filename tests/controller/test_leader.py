"""Leader election against a real etcd: one leader, takeover on lease loss and on resign, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from fleetop.config import EtcdSettings
from fleetop.controller.runtime.leader import LeaderElector, LeaderTimings, holder_of
from fleetop.errors import NotLeader
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer

TIMINGS = LeaderTimings(lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    settings = EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    async with await Etcd.connect(settings) as client:
        yield client


@contextlib.asynccontextmanager
async def candidates(
    etcd: Etcd, *names: str
) -> AsyncIterator[tuple[list[LeaderElector], list[asyncio.Task[None]]]]:
    electors = [LeaderElector(etcd, Keys(), name, TIMINGS) for name in names]
    tasks = [asyncio.create_task(e.run(), name=f"candidate {e.identity}") for e in electors]
    try:
        yield electors, tasks
    finally:
        for elector in electors:
            await elector.resign()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for_leader(
    electors: list[LeaderElector], timeout: float, exclude: LeaderElector | None = None
) -> LeaderElector:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [e for e in electors if e.is_leader and e is not exclude]
        if leaders:
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no leader within {timeout}s")


async def test_two_candidates_elect_exactly_one(etcd: Etcd) -> None:
    async with candidates(etcd, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors, 5)
        for _ in range(20):  # it stays that way across several renewals
            assert sum(e.is_leader for e in electors) == 1
            await asyncio.sleep(0.1)
        stored = await etcd.get(Keys().leader())
        assert stored is not None and stored.value == leader.value
        assert holder_of(stored.value) == leader.identity
        follower = next(e for e in electors if e is not leader)
        assert follower.observed_leader == leader.identity


async def test_lost_lease_makes_the_leader_step_down_and_the_other_take_over(etcd: Etcd) -> None:
    async with candidates(etcd, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors, 5)
        await etcd.revoke(leader._lease)  # the lease is gone, as after a partition longer than its TTL
        started = time.monotonic()
        successor = await wait_for_leader(electors, TIMINGS.lease_duration + 2, exclude=leader)
        assert time.monotonic() - started < TIMINGS.lease_duration + 2
        await asyncio.sleep(TIMINGS.retry_period * 2)
        assert sum(e.is_leader for e in electors) == 1
        assert successor.is_leader


async def test_a_leader_that_stops_renewing_is_replaced_within_the_lease(etcd: Etcd) -> None:
    async with candidates(etcd, "frozen", "standby") as (electors, tasks):
        leader = await wait_for_leader(electors, 5)
        index = electors.index(leader)
        tasks[index].cancel()  # stops renewing without resigning, like a hung or killed process
        await asyncio.gather(tasks[index], return_exceptions=True)
        started = time.monotonic()
        successor = await wait_for_leader(electors, TIMINGS.lease_duration + 3, exclude=leader)
        assert successor is not leader
        assert time.monotonic() - started <= TIMINGS.lease_duration + 3


async def test_resign_hands_over_within_about_a_second(etcd: Etcd) -> None:
    async with candidates(etcd, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors, 5)
        await asyncio.sleep(0.3)  # the follower is watching the key by now
        started = time.monotonic()
        await leader.resign()
        assert not leader.is_leader
        successor = await wait_for_leader(electors, 3, exclude=leader)
        took = time.monotonic() - started
        assert successor is not leader
        assert took < 1.5, f"takeover after resign took {took:.2f}s"


async def test_fenced_write_by_the_loser_is_refused(etcd: Etcd) -> None:
    async with candidates(etcd, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors, 5)
        loser = next(e for e in electors if e is not leader)
        key = "/status/services/fenced"
        await etcd.put(key, b"from the leader", fence=leader.fence)
        with pytest.raises(NotLeader):
            await etcd.put(key, b"from the loser", fence=loser.fence)
        with pytest.raises(NotLeader):
            await etcd.delete(key, fence=loser.fence)
        stored = await etcd.get(key)
        assert stored is not None and stored.value == b"from the leader"


def test_timings_must_leave_room_to_step_down() -> None:
    from fleetop.errors import ConfigError

    LeaderTimings(15, 10, 2).check()
    with pytest.raises(ConfigError):
        LeaderTimings(10, 10, 2).check()
    with pytest.raises(ConfigError):
        LeaderTimings(15, 10, 10).check()


async def test_a_leader_cut_off_by_an_etcd_outage_resumes_when_etcd_is_back(tmp_path: object) -> None:
    """It steps down during the outage (it cannot renew), and takes leadership back as soon as etcd
    returns — its key and lease are still there — instead of waiting out a 30 s lease."""
    from pathlib import Path

    server = EtcdServer(Path(str(tmp_path)) / "data")
    server.start()
    timings = LeaderTimings(lease_duration=30.0, renew_deadline=2.0, retry_period=0.5)
    settings = EtcdSettings(endpoints=(server.endpoint,), dial_timeout=1.0, command_timeout=1.0)
    try:
        async with await Etcd.connect(settings) as client:
            elector = LeaderElector(client, Keys(), "solo", timings)
            task = asyncio.create_task(elector.run())
            try:
                await wait_for_leader([elector], 10)
                server.stop()
                deadline = time.monotonic() + 20
                while elector.is_leader and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert not elector.is_leader, "a leader that cannot renew must step down"
                server.start()
                back = time.monotonic()
                await wait_for_leader([elector], 15)
                assert time.monotonic() - back < timings.lease_duration / 2
                assert elector.transitions == 3  # led, stepped down, led again
            finally:
                await elector.resign()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        server.stop()
