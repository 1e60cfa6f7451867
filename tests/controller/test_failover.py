"""Failover between ``fleetop run`` processes: only the leader acts, kill -9 and SIGTERM hand over,
and a loop of failovers loses or duplicates no instance.

Leases are short here (3 s: a 2 s etcd lease, renew deadline 1.5 s, retry 0.5 s), so that each kill -9
waits out 2 s rather than the 3 s of the other operator tests. Timing assertions are generous bounds.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ophelpers import Node, Operator, owned_mains, running_mains, spec

from fleetop.config import EtcdSettings
from fleetop.controller.runtime.leader import holder_of
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ServiceStatus
from waiting import eventually

PREFIX = f"/t/failover-{os.getpid()}"
KEYS = Keys()
LEASE = 3.0
TIMINGS = (LEASE, 1.5, 0.5)
FAILOVERS = 20


class Fleet:
    """The operator processes of one test; every one of them is stopped at the end."""

    def __init__(self, base: Path, etcd_endpoint: str, node: Node) -> None:
        self.base = base
        self.etcd_endpoint = etcd_endpoint
        self.node = node
        self.started: list[Operator] = []
        self.counter = itertools.count(1)

    def start(self) -> Operator:
        name = f"op{next(self.counter)}"
        proc = Operator(self.base, name, self.etcd_endpoint, PREFIX, self.node.endpoint, TIMINGS)
        self.started.append(proc.start())
        return proc

    def by_identity(self, identity: str) -> Operator:
        return next(p for p in self.started if p.identity == identity)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(1500)}" for p in self.started)


@pytest.fixture
def operators(node: Node, etcd_server: EtcdServer, tmp_path: Path) -> Iterator[Fleet]:
    group = Fleet(tmp_path, etcd_server.endpoint, node)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=PREFIX)) as client:
        yield client


async def leader_identity(etcd: Etcd) -> str | None:
    kv = await etcd.get(KEYS.leader())
    return None if kv is None else holder_of(kv.value)


async def new_leader(etcd: Etcd, operators: Fleet, other_than: str | None, timeout: float) -> Operator:
    async def check() -> str | None:
        identity = await leader_identity(etcd)
        return identity if identity is not None and identity != other_than else None

    try:
        identity = await eventually(check, timeout, "a new leader", every=0.05)
    except AssertionError:
        print(operators.logs())
        raise
    return operators.by_identity(identity)


async def converged(
    etcd: Etcd, fleet: FleetClient, name: str, replicas: int, timeout: float = 40.0
) -> set[str]:
    async def check() -> set[str] | None:
        mains = owned_mains(await fleet.list_units(), name)
        running = await running_mains(fleet, name)
        kv = await etcd.get(KEYS.status("services", name))
        status = None if kv is None else ServiceStatus.model_validate_json(kv.value)
        ready = status is not None and status.replicas.ready == replicas
        return {u.name for u in mains} if len(mains) == len(running) == replicas and ready else None

    return await eventually(check, timeout, f"{name} to run {replicas} instances")


def counter(metrics: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def test_only_the_leader_acts_and_kill_9_hands_over(
    etcd: Etcd, fleet: FleetClient, operators: Fleet
) -> None:
    first, second = operators.start(), operators.start()
    leader = await new_leader(etcd, operators, None, 15)
    follower = second if leader is first else first
    key = KEYS.desired("services", "fo")
    await etcd.put(key, spec(2))
    names = await converged(etcd, fleet, "fo", 2)
    await eventually(lambda: _answers(follower), 10, "the follower's /metrics")
    follower_metrics = await follower.metrics()
    assert counter(follower_metrics, "fleetop_leader") == 0
    assert counter(follower_metrics, "fleetop_fleet_api_calls_total", '{operation="create_unit"}') == 0
    assert counter(follower_metrics, "fleetop_writes_total", '{result="written",what="status"}') == 0
    assert counter(await leader.metrics(), "fleetop_writes_total", '{result="written",what="status"}') >= 1

    leader.kill()
    successor = await new_leader(etcd, operators, leader.identity, LEASE + 5)  # once its lease expires
    assert successor is follower
    await etcd.put(key, spec(3))
    after = await converged(etcd, fleet, "fo", 3)
    assert names < after, "the new leader kept the running instances and added one"


async def _answers(proc: Operator) -> bool:
    try:
        return "fleetop_leader" in await proc.metrics()
    except Exception:
        return False


async def test_sigterm_resigns_and_hands_over(etcd: Etcd, operators: Fleet) -> None:
    """On SIGTERM the leader gives its key up instead of leaving it to expire (that the standby then
    takes over at once, with no time passing, is tests/controller/test_leader.py's to show)."""
    first, second = operators.start(), operators.start()
    leader = await new_leader(etcd, operators, None, 15)
    follower = second if leader is first else first
    await eventually(lambda: _answers(follower), 10, "the follower to be up")
    leader.stop()
    assert leader.proc is not None and leader.proc.returncode == 0, leader.log_tail()
    assert f"resigned leadership ({leader.identity})" in leader.log_tail(), leader.log_tail()
    successor = await new_leader(etcd, operators, leader.identity, LEASE + 5)
    assert successor is follower


async def test_repeated_failovers_lose_and_duplicate_nothing(
    etcd: Etcd, fleet: FleetClient, operators: Fleet
) -> None:
    key = KEYS.desired("services", "loop")
    await etcd.put(key, spec(3))
    for _ in range(3):  # a leader and two standbys: each round's standby has had a round to start up
        operators.start()
    leader = await new_leader(etcd, operators, None, 15)
    names = await converged(etcd, fleet, "loop", 3)
    replicas = 3
    for round_no in range(FAILOVERS):
        waiting = next(p for p in operators.started if p.running and p is not leader)
        await eventually(functools.partial(_answers, waiting), 15, "the standby to be up")
        if round_no % 2:
            leader.kill()
        else:
            leader.stop()
        old = leader
        leader = await new_leader(etcd, operators, old.identity, LEASE + 5)
        operators.start()  # the next standby
        if round_no % 5 == 4:  # change something now and then, so the new leader must act
            replicas = 4 if replicas == 3 else 3
            await etcd.put(key, spec(replicas))
        after = await converged(etcd, fleet, "loop", replicas)
        mains = owned_mains(await fleet.list_units(), "loop")
        assert len(mains) == replicas, [u.name for u in mains]
        if replicas == len(names):
            assert after == names, f"round {round_no}: instances were replaced by a failover"
        names = after
