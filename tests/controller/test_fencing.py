"""The executor's writes, with stepped clocks. Fleet writes: fleet cannot compare the leader key, so
the executor (and the fleet client, before each retry) asks the elector whether its lease is known
fresh by its own monotonic clock. Status writes: they carry when their generation was first
reported. Real etcd, a real ``fleetop node``; only the clocks are stepped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetop.clock import FakeClock
from fleetop.config import EtcdSettings
from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.leader import LeaderElector, LeaderTimings
from fleetop.controller.services.unitrender import render_main
from fleetop.controller.world import CreateUnit, DestroyUnit, SetDesiredState
from fleetop.errors import FleetUnavailable, NotLeader
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient, RetryPolicy
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ServiceSpec

FENCED, STAMPED = ObjectRef("services", "fenced"), ObjectRef("services", "stamped")
TIMINGS = LeaderTimings(lease_duration=40.0, renew_deadline=20.0, retry_period=10.0)


class SteppedClock:
    """A UNIX-time clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(
        EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def leading(etcd: Etcd, clock: FakeClock) -> AsyncIterator[LeaderElector]:
    """An elector that holds the leader key, driven by hand: no renew loop runs, the test renews."""
    elector = LeaderElector(etcd, Keys(), "fenced", TIMINGS, clock=clock)
    assert await elector._try_acquire()
    elector._set_leader(True)
    try:
        yield elector
    finally:
        await elector.resign()


async def test_the_guard_follows_the_elector_s_own_clock(etcd: Etcd) -> None:
    clock = FakeClock()
    follower = LeaderElector(etcd, Keys(), "follower", TIMINGS, clock=clock)
    with pytest.raises(NotLeader):
        follower.check_leading()
    async with leading(etcd, clock) as elector:
        elector.check_leading()
        await clock.step(TIMINGS.renew_deadline - 0.5)
        elector.check_leading()  # still inside the deadline
        await clock.step(1.0)
        with pytest.raises(NotLeader, match="renew deadline"):
            elector.check_leading()
        assert await elector._renew_within_deadline() is False, "past the deadline: step down, no renewal"


async def test_a_renewal_sent_in_time_makes_writes_allowed_again(etcd: Etcd) -> None:
    clock = FakeClock()
    async with leading(etcd, clock) as elector:
        await clock.step(TIMINGS.renew_deadline - 1.0)
        assert await elector._renew_within_deadline()
        await clock.step(2.0)  # past the first deadline, inside the one the renewal started
        elector.check_leading()
        elector._set_leader(False)  # deposed: refused whatever the clock says
        with pytest.raises(NotLeader):
            elector.check_leading()


async def test_the_executor_sends_no_fleet_write_after_the_deadline(etcd: Etcd, fleet: FleetClient) -> None:
    clock = FakeClock()
    spec = ServiceSpec.model_validate({"replicas": 1, "unit": {"execStart": "/bin/sleep 1000"}})
    name = "fenced@1.service"
    create = CreateUnit(name, tuple(render_main(spec, "fenced", 1)), desired_state="loaded")
    try:
        async with leading(etcd, clock) as elector:
            executor = Executor(fleet, etcd, Keys(), lambda: elector.fence, guard=elector.check_leading)
            await clock.step(TIMINGS.renew_deadline)
            with pytest.raises(NotLeader):
                await executor.apply(FENCED, [create])
            assert await fleet.get_unit(name) is None, "a refused create reached fleet"

        async with leading(etcd, clock) as elector:
            executor = Executor(fleet, etcd, Keys(), lambda: elector.fence, guard=elector.check_leading)
            await clock.step(TIMINGS.renew_deadline - 1.0)
            assert await elector._renew_within_deadline()
            await clock.step(2.0)  # past the acquisition's deadline, inside the renewal's
            outcome = await executor.apply(FENCED, [create])
            assert outcome.error is None and outcome.applied == [f"Created {name}"]

            await clock.step(TIMINGS.renew_deadline)  # no renewal since: every kind of write is refused
            for action in (SetDesiredState(name, "launched"), DestroyUnit(name, "test")):
                with pytest.raises(NotLeader):
                    await executor.apply(FENCED, [action])
            unit = await fleet.get_unit(name)
            assert unit is not None and unit.desired_state == "loaded", "a refused write reached fleet"
    finally:
        await fleet.destroy_unit(name)


async def test_the_fleet_client_checks_the_guard_before_each_retry_of_a_write(tmp_path: Path) -> None:
    """A write that failed temporarily is retried after a backoff: a pause in between must not let
    the retry out. The first attempt gets a 500; the guard then refuses, and nothing else arrives."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                requests.append(head.split(b" ", 1)[0])
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                body = b'{"error":{"code":500,"message":"boom"}}'
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    allowed = [True]

    def guard() -> None:
        if not allowed[0]:
            raise NotLeader("deadline passed")
        allowed[0] = False  # the first attempt goes out; the pause "happens" before the retry

    socket_path = tmp_path / "f.sock"
    server = await asyncio.start_unix_server(serve, path=str(socket_path))
    retry = RetryPolicy(attempts=4, initial=0.01, maximum=0.02, jitter=0.0, total=5.0)
    try:
        async with FleetClient(f"unix://{socket_path}", retry=retry, write_guard=guard) as client:
            with pytest.raises(NotLeader):
                await client.destroy_unit("x@1.service")
            assert requests == [b"DELETE"]
            # reads are not writes: they are retried as before, whatever the guard says
            with pytest.raises(FleetUnavailable):
                await client.list_units()
            assert requests.count(b"GET") == retry.attempts
    finally:
        server.close()
        await server.wait_closed()


async def test_status_carries_when_its_generation_was_first_reported(etcd: Etcd, fleet: FleetClient) -> None:
    """A scale moves no condition; the status still says when the spec last changed (CHANGED)."""
    from fleetop.models import ServiceStatus

    wall = SteppedClock()
    wall.now = 1_790_000_000.0
    key = Keys().status("services", "stamped")
    async with leading(etcd, FakeClock()) as elector:
        executor = Executor(fleet, etcd, Keys(), lambda: elector.fence, clock=wall)

        async def write(generation: int, ready: int) -> ServiceStatus:
            status = ServiceStatus.model_validate(
                {"observedGeneration": generation, "replicas": {"ready": ready}}
            )
            await executor.write_status(STAMPED, status, await executor.read_now(key))
            stored = await etcd.get(key)
            assert stored is not None
            return ServiceStatus.model_validate_json(stored.value)

        first = await write(7, 1)
        assert first.observed_generation_time == "2026-09-21T14:13:20Z"
        wall.step(60)
        assert (await write(7, 2)).observed_generation_time == first.observed_generation_time
        assert (
            await executor.write_status(
                STAMPED,
                ServiceStatus.model_validate({"observedGeneration": 7, "replicas": {"ready": 2}}),
                await executor.read_now(key),
            )
            == "unchanged"
        )
        scaled = await write(9, 2)  # the replicas changed in the spec: a new generation
        assert scaled.observed_generation_time == "2026-09-21T14:14:20Z"
