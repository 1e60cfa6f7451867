"""A leader paused past its lease (SIGSTOP) and resumed (SIGCONT) sends no fleet write.

Real processes: ``fleetop run`` and ``fleetop node`` as children, the session's etcd. The operator is
caught in the middle of a pass full of fleet writes: the node is stopped before the change arrives,
so the pass's first fleet request (the read that precedes each create) hangs there while the
operator's elector keeps renewing; then the operator is stopped. Its lease expires; a standby elector
in this test (it takes the lease and writes nothing) becomes the leader. The node resumes and answers
the read that was on its socket; then the operator resumes with its old pass one response away from
its first PUT, and nothing on that path writes to etcd (whose fence would stop it). From that moment
the standby is the only leader and writes nothing, so any change in fleet is the deposed operator's.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ophelpers import Node, Operator, owned_mains, spec

from fleetop.config import EtcdSettings
from fleetop.controller.runtime.leader import LeaderElector, LeaderTimings, holder_of
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from waiting import eventually

PREFIX = f"/t/paused-{os.getpid()}"
KEYS = Keys()
TIMINGS = (4.0, 2.0, 0.5)
REPLICAS = 24
QUIET = 4.0
"""Seconds the resumed operator is watched for writes after it has noticed it no longer leads."""


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=PREFIX)) as client:
        yield client


async def units_seen(fleet: FleetClient) -> dict[str, tuple[str, str]]:
    """Every unit in fleet: name -> (content hash, desiredState)."""
    return {u.name: (u.hash, u.desired_state) for u in await fleet.list_units()}


async def leader_is(etcd: Etcd, identity: str) -> bool:
    kv = await etcd.get(KEYS.leader())
    return kv is not None and holder_of(kv.value) == identity


async def not_leading(operator: Operator) -> bool:
    try:
        return "\nfleetop_leader 0.0\n" in await operator.metrics()
    except Exception:
        return False


async def unit_reads(operator: Operator) -> float:
    """How many single-unit reads (the GET before each create) the operator has sent."""
    match = re.search(
        r'^fleetop_fleet_api_calls_total\{operation="get_unit"\} ([0-9.e+]+)$', await operator.metrics(), re.M
    )
    return float(match.group(1)) if match else 0.0


def signal_child(proc: Operator | Node, sig: signal.Signals) -> None:
    assert proc.proc is not None and proc.proc.poll() is None
    os.kill(proc.proc.pid, sig)


async def test_a_leader_resumed_after_its_lease_sends_no_fleet_write(
    etcd: Etcd, etcd_server: EtcdServer, node: Node, fleet: FleetClient, tmp_path: Path
) -> None:
    operator = Operator(tmp_path, "paused", etcd_server.endpoint, PREFIX, node.endpoint, TIMINGS).start()
    standby = LeaderElector(etcd, KEYS, "test-standby", LeaderTimings(*TIMINGS))
    standby_task: asyncio.Task[None] | None = None
    stopped: list[Operator | Node] = []
    try:
        await eventually(lambda: leader_is(etcd, operator.identity), 30, "the operator to lead")
        await etcd.put(KEYS.desired("services", "paused-warm"), spec(1))

        async def warm() -> bool:  # leading with synced caches, and fleet's answers in its snapshot
            return len(owned_mains(await fleet.list_units(), "paused-warm")) == 1

        await eventually(warm, 30, "the operator to act")
        await asyncio.sleep(1.0)
        reads = await unit_reads(operator)
        signal_child(node, signal.SIGSTOP)
        stopped.append(node)
        await etcd.put(KEYS.desired("services", "paused"), spec(REPLICAS))

        async def reading() -> bool:  # the pass's first fleet request is on the stopped node's socket
            return await unit_reads(operator) > reads

        await eventually(reading, 30, "the pass to ask fleet for its first unit")
        await asyncio.sleep(0.2)
        signal_child(operator, signal.SIGSTOP)
        stopped.insert(0, operator)

        standby_task = asyncio.create_task(standby.run())
        await eventually(lambda: standby.is_leader, 30, "the standby to take the expired lease")

        signal_child(node, signal.SIGCONT)
        stopped.remove(node)
        await asyncio.sleep(1.0)  # the node answers what was on its socket before the pause
        before = await units_seen(fleet)
        assert not owned_mains(await fleet.list_units(), "paused"), "a create got through before the pause"

        signal_child(operator, signal.SIGCONT)
        stopped.remove(operator)
        await eventually(lambda: not_leading(operator), 30, "the resumed operator to step down")
        await asyncio.sleep(QUIET)
        assert standby.is_leader, "the standby lost the lease: the test proves nothing"
        after = await units_seen(fleet)
        changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
        assert not changed, (
            f"the deposed operator wrote to fleet after SIGCONT: {changed}\n{operator.log_tail()}"
        )

        await standby.resign()  # now it may lead again, and it finishes the job from a fresh plan
        await eventually(lambda: leader_is(etcd, operator.identity), 30, "the operator to lead again")

        async def finished() -> bool:
            return len(owned_mains(await fleet.list_units(), "paused")) == REPLICAS

        await eventually(finished, 90, f"{REPLICAS} instances")
    finally:
        for proc in stopped:
            signal_child(proc, signal.SIGCONT)
        await standby.resign()
        if standby_task is not None:
            standby_task.cancel()
            await asyncio.gather(standby_task, return_exceptions=True)
        operator.stop()
        for name in ("paused", "paused-warm"):
            await etcd.delete(KEYS.desired("services", name))
            for unit in owned_mains(await fleet.list_units(), name):
                await fleet.destroy_unit(unit.name)
