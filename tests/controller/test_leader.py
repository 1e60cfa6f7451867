"""Leader election against a real etcd: one leader, takeover on lease loss and on resign, fencing.

The electors run on a FakeClock: renewals, retry periods and the renew deadline happen when the test
steps it, never because the machine was slow. etcd (and its leases) runs in real time; the tests wait
for what etcd does with generous deadlines and assert no durations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from fleetop.clock import FakeClock
from fleetop.config import EtcdSettings
from fleetop.controller.runtime.leader import LeaderElector, LeaderTimings, holder_of
from fleetop.errors import NotLeader
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from waiting import eventually

TIMINGS = LeaderTimings(lease_duration=30.0, renew_deadline=20.0, retry_period=5.0)
"""etcd's lease outlives every test: a lease ends here because the test ends it, not by its TTL."""


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    settings = EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    async with await Etcd.connect(settings) as client:
        yield client


@contextlib.asynccontextmanager
async def candidates(
    etcd: Etcd, clock: FakeClock, *names: str
) -> AsyncIterator[tuple[list[LeaderElector], list[asyncio.Task[None]]]]:
    electors = [LeaderElector(etcd, Keys(), name, TIMINGS, clock=clock) for name in names]
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
    electors: list[LeaderElector], exclude: LeaderElector | None = None
) -> LeaderElector:
    """The first elector (other than ``exclude``) seen leading; etcd's answers come in real time."""

    def leader() -> LeaderElector | None:
        return next((e for e in electors if e.is_leader and e is not exclude), None)

    found: LeaderElector = await eventually(leader, 30, "a leader", every=0.02)
    return found


async def renewal(leader: LeaderElector, clock: FakeClock, steps: int = 3) -> None:
    """Step one retry period and wait until the renewal it starts has been answered by etcd.

    A renewal started by an earlier step may still be waiting for etcd when this step moves the clock
    (a loaded machine); the elector then schedules its next renewal from that later answer, one retry
    period on. So a step that starts no renewal is followed by another, up to ``steps``."""
    for attempt in range(1, steps + 1):
        await clock.step(TIMINGS.retry_period)
        try:
            await eventually(
                lambda: not leader.is_leader or leader.renewed_at == clock.now(), 10, "the renewal"
            )
            return
        except AssertionError:
            if attempt == steps:
                raise


async def test_two_candidates_elect_exactly_one(etcd: Etcd) -> None:
    clock = FakeClock()
    async with candidates(etcd, clock, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors)
        follower = next(e for e in electors if e is not leader)
        await eventually(lambda: follower.observed_leader == leader.identity, 30, "the follower to see it")
        for _ in range(5):  # it stays that way across several renewals (and the follower's re-checks)
            await renewal(leader, clock)
            assert [e.is_leader for e in electors].count(True) == 1 and leader.is_leader
            leader.check_leading()
        stored = await etcd.get(Keys().leader())
        assert stored is not None and stored.value == leader.value
        assert holder_of(stored.value) == leader.identity
        assert follower.observed_leader == leader.identity
        assert leader.transitions == 1 and follower.transitions == 0


async def test_lost_lease_makes_the_leader_step_down_and_the_other_take_over(etcd: Etcd) -> None:
    clock = FakeClock()
    async with candidates(etcd, clock, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors)
        before = clock.now()
        await etcd.revoke(leader._lease)  # the lease is gone, as after a partition longer than its TTL
        successor = await wait_for_leader(electors, exclude=leader)  # watching the key, it saw it go
        assert clock.now() == before, "the standby acted on the key's deletion, not on a retry period"
        await renewal(leader, clock)  # the old leader finds out at its next renewal
        await eventually(lambda: not leader.is_leader, 30, "the old leader to step down")
        with pytest.raises(NotLeader):
            leader.check_leading()
        await renewal(successor, clock)
        assert [e.is_leader for e in electors].count(True) == 1
        assert successor.is_leader and leader.observed_leader == successor.identity


async def test_a_leader_that_stops_renewing_is_replaced(etcd: Etcd) -> None:
    clock = FakeClock()
    async with candidates(etcd, clock, "frozen", "standby") as (electors, tasks):
        leader = await wait_for_leader(electors)
        index = electors.index(leader)
        tasks[index].cancel()  # stops renewing without resigning, like a hung or killed process
        await asyncio.gather(tasks[index], return_exceptions=True)
        assert not leader.is_leader
        successor = await wait_for_leader(electors, exclude=leader)
        assert successor is not leader


async def test_resign_hands_over_without_waiting_for_a_retry_period(etcd: Etcd) -> None:
    clock = FakeClock()
    async with candidates(etcd, clock, "a", "b") as (electors, _):
        leader = await wait_for_leader(electors)
        follower = next(e for e in electors if e is not leader)
        await eventually(lambda: follower.observed_leader == leader.identity, 30, "the follower to see it")
        before = clock.now()
        await leader.resign()
        assert not leader.is_leader
        with pytest.raises(NotLeader):
            leader.check_leading()
        successor = await wait_for_leader(electors, exclude=leader)
        assert successor is follower
        assert clock.now() == before, "the standby followed the key's deletion, not a retry period"


async def test_fenced_write_by_the_loser_is_refused(etcd: Etcd) -> None:
    async with candidates(etcd, FakeClock(), "a", "b") as (electors, _):
        leader = await wait_for_leader(electors)
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
    assert LeaderTimings(15, 10, 2).lease_ttl == 13
    assert LeaderTimings(4, 2, 0.5).lease_ttl == 3  # whole seconds, rounded down: within the duration
    with pytest.raises(ConfigError):
        LeaderTimings(10, 10, 2).check()
    with pytest.raises(ConfigError):
        LeaderTimings(15, 10, 10).check()
    # the renew deadline must end before the lease's TTL (13 - 2 = 11 here), not the lease duration
    with pytest.raises(ConfigError, match="--renew-deadline") as refused:
        LeaderTimings(13, 11, 2).check()
    assert "--lease-duration" in str(refused.value) and "11s < 11s" in str(refused.value)


def test_settings_refuse_a_renew_deadline_past_the_lease_ttl() -> None:
    from fleetop.controller.runtime.settings import OperatorSettings
    from fleetop.errors import ConfigError

    flags = {"lease_duration": "12", "renew_deadline": "10", "retry_period": "2"}
    with pytest.raises(ConfigError, match="--lease-duration"):
        OperatorSettings.from_flags(flags, {"FLEETOP_PATH": "/bin/sh"})


async def test_the_leader_key_lives_the_lease_duration_less_a_retry_period(etcd: Etcd) -> None:
    """A leader killed right after a renewal leaves its key ``lease_ttl`` to live, so the standby has
    the retry period left of the lease duration for etcd's lessor and its takeover."""
    clock = FakeClock()
    async with candidates(etcd, clock, "a") as (electors, _):
        leader = await wait_for_leader(electors)
        stored = await etcd.get(Keys().leader())
        assert stored is not None and stored.lease == leader._lease
        assert await etcd.keepalive_once(leader._lease) == TIMINGS.lease_ttl == 25


async def test_a_leader_cut_off_by_an_etcd_outage_resumes_when_etcd_is_back(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    """It steps down at the renew deadline during the outage (it cannot renew), and when etcd returns
    takes leadership back on its own lease — still there — instead of waiting out a 30 s lease."""
    import logging
    from pathlib import Path

    caplog.set_level(logging.DEBUG, logger="fleetop.controller.runtime.leader")

    server = EtcdServer(Path(str(tmp_path)) / "data")
    server.start()
    clock = FakeClock()
    timings = LeaderTimings(lease_duration=30.0, renew_deadline=2.0, retry_period=0.5)
    settings = EtcdSettings(endpoints=(server.endpoint,), dial_timeout=1.0, command_timeout=1.0)
    try:
        async with await Etcd.connect(settings) as client:
            elector = LeaderElector(client, Keys(), "solo", timings, clock=clock)
            task = asyncio.create_task(elector.run())
            try:
                await wait_for_leader([elector])
                lease = elector._lease
                server.stop()
                # one retry period starts a renewal that cannot be answered; at the renew deadline
                # its timeout fires and the leader steps down, however long etcd takes to fail it
                await clock.step(timings.renew_deadline)
                await eventually(lambda: not elector.is_leader, 30, "the leader to step down")
                with pytest.raises(NotLeader):
                    elector.check_leading()
                # stepping down, it tries to revoke its lease (its client retries within the command
                # timeout): an etcd back before that attempt has failed would take the revoke
                await eventually(
                    lambda: any("revoking lease" in r.getMessage() for r in caplog.records),
                    30,
                    "the step-down's revoke to fail",
                )
                server.start()

                async def led_again() -> bool:
                    await clock.step(timings.retry_period)  # its retries wait on the clock
                    return elector.is_leader

                await eventually(led_again, 30, "leadership back")
                assert elector._lease == lease, "resumed on its own lease, not a new one"
                assert elector.transitions == 3  # led, stepped down, led again
            finally:
                await elector.resign()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        server.stop()
