"""The operator when fleet is lost: real etcd, a real ``fleetop node`` and ``fleetop run`` as processes.

The operator is given two fleet endpoints, the first of which never answers (no socket there): it
works through the second. Then the node is frozen with SIGSTOP (as a machine that hangs would be):
the operator must mark the conditions it can no longer judge ``Unknown`` (``FleetUnreachable``, since
the loss), keep the last replica counts, and change nothing in fleet even though the spec asks it to;
after SIGCONT it resumes and does what the spec says.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ophelpers import (
    Node,
    Operator,
    events_of,
    owned_mains,
    running,
    running_mains,
    spec,
    status_of,
)

from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ServiceStatus
from fleetop.models.observed import OperatorObservation
from fleetop.timefmt import parse_rfc3339
from waiting import eventually

PREFIX = f"/t/blind-{os.getpid()}"
KEYS = Keys()
JUDGED = ("Available", "Progressing", "Degraded")
WRITES = ("create_unit", "destroy_unit", "set_desired_state")


@pytest.fixture(scope="module")
def dead_endpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"unix://{tmp_path_factory.mktemp('dead') / 'fleet.sock'}"


@pytest.fixture(scope="module")
def operator(
    node: Node, etcd_server: EtcdServer, dead_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    endpoints = f"{dead_endpoint},{node.endpoint}"
    base = tmp_path_factory.mktemp("operator")
    with running(Operator(base, "blind", etcd_server.endpoint, PREFIX, endpoints)) as proc:
        yield proc


def counter(metrics: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def fleet_writes(operator: Operator) -> dict[str, float]:
    text = await operator.metrics()
    return {op: counter(text, "fleetop_fleet_api_calls_total", f'{{operation="{op}"}}') for op in WRITES}


async def observed(etcd: Etcd) -> OperatorObservation | None:
    kv = await etcd.get(KEYS.observed())
    return None if kv is None else OperatorObservation.model_validate_json(kv.value)


async def converged(etcd: Etcd, fleet: FleetClient, name: str, replicas: int, operator: Operator) -> set[str]:
    async def check() -> set[str] | None:
        status = await status_of(etcd, name)
        mains = owned_mains(await fleet.list_units(), name)
        running = await running_mains(fleet, name)
        available = status is not None and status.condition("Available") is not None
        ready = available and status is not None and status.replicas.ready == replicas
        if ready and len(mains) == len(running) == replicas:
            assert status is not None
            if all(c.status != "Unknown" for c in status.conditions):
                return {u.name for u in mains}
        return None

    try:
        result: set[str] = await eventually(check, 60, f"{name} to run {replicas} ready instances")
    except AssertionError:
        print(operator.log_tail())
        raise
    return result


async def test_fails_over_then_changes_nothing_while_fleet_is_frozen(
    etcd: Etcd, fleet: FleetClient, operator: Operator, node: Node, dead_endpoint: str
) -> None:
    key = KEYS.desired("services", "steady")
    await etcd.put(key, spec(2))
    before = await converged(etcd, fleet, "steady", 2, operator)
    metrics = await operator.metrics()
    assert counter(metrics, "fleetop_fleet_api_failovers_total") >= 1  # off the dead first endpoint
    assert counter(metrics, "fleetop_fleet_api_calls_total", '{operation="create_unit"}') >= 2
    seen = await observed(etcd)
    assert seen is not None and seen.fleet.reachable and seen.fleet.endpoint == node.endpoint
    assert seen.fleet.endpoints == [dead_endpoint, node.endpoint]
    units_before = {u.name: u.hash for u in await fleet.list_units()}
    events_before = len(await events_of(etcd, "steady"))

    assert node.proc is not None
    writes_at_stop = await fleet_writes(operator)
    os.kill(node.proc.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:

        async def unknown() -> ServiceStatus | None:
            status = await status_of(etcd, "steady")
            if status is None:
                return None
            marked = [status.condition(kind) for kind in JUDGED]
            if all(
                c is not None and c.status == "Unknown" and c.reason == "FleetUnreachable" for c in marked
            ):
                return status
            return None

        status = await eventually(unknown, 120, "steady's conditions to turn Unknown(FleetUnreachable)")
        available = status.condition("Available")
        assert available is not None
        lost = parse_rfc3339(available.last_transition_time).timestamp()
        assert stopped_at - 5 <= lost <= time.time()  # since when fleet stopped answering (whole seconds)
        assert "fleet has not answered since" in available.message
        assert node.endpoint in available.message and dead_endpoint in available.message
        assert "last known: True (MinimumReplicasAvailable)" in available.message
        assert status.replicas.ready == 2 and status.replicas.desired == 2  # last known counts kept
        assert status.condition("Invalid") is None

        seen = await eventually(lambda: _lost(etcd), 30, "the operator's record to say fleet is unreachable")
        assert seen.fleet.lost_since == available.last_transition_time
        assert set(seen.fleet.tried) == {dead_endpoint, node.endpoint}

        await etcd.put(key, spec(3))  # a change the operator must not make while it is blind
        await asyncio.sleep(3)  # the window in which a blind operator would act on it
        assert await fleet_writes(operator) == writes_at_stop  # not one write was even attempted
        assert len(await events_of(etcd, "steady")) == events_before
        status = await status_of(etcd, "steady")
        assert status is not None and status.replicas.desired == 2
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)

    units_after_freeze = {u.name: u.hash for u in await fleet.list_units()}
    assert {n: units_after_freeze.get(n) for n in units_before} == units_before  # none destroyed or replaced

    after = await converged(etcd, fleet, "steady", 3, operator)
    assert before < after
    status = await status_of(etcd, "steady")
    assert status is not None
    for kind in JUDGED:
        condition = status.condition(kind)
        assert condition is not None and condition.status != "Unknown"
    available = status.condition("Available")
    assert available is not None and available.status == "True"
    seen = await eventually(lambda: _reachable(etcd), 30, "the operator's record to say fleet answers")
    assert seen.fleet.lost_since == ""


async def _lost(etcd: Etcd) -> OperatorObservation | None:
    seen = await observed(etcd)
    return seen if seen is not None and not seen.fleet.reachable else None


async def _reachable(etcd: Etcd) -> OperatorObservation | None:
    seen = await observed(etcd)
    return seen if seen is not None and seen.fleet.reachable else None


def test_dead_endpoint_is_really_dead(dead_endpoint: str) -> None:
    assert not Path(dead_endpoint.removeprefix("unix://")).exists()
