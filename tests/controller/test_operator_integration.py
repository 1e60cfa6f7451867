"""The operator end to end: real etcd, ``fleetop node --machines 3`` and ``fleetop run``, as processes.

One node and one operator serve the whole module; each test uses its own service names.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest
from ophelpers import Node, Operator, owned_mains, running, running_mains, spec, status_of

from fleetop.config import EtcdSettings
from fleetop.controller.operator import run_operator
from fleetop.controller.runtime.leader import LeaderTimings
from fleetop.controller.runtime.settings import FleetSettings, MetricsSettings, OperatorSettings
from fleetop.errors import FleetopError
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import UnitOption
from fleetop.http import HttpSession, Timeouts
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer, free_port
from fleetop.models import ServiceStatus
from waiting import eventually

PREFIX = f"/t/integration-{os.getpid()}"
KEYS = Keys()
CONVERGE = 40.0


@pytest.fixture(scope="module")
def operator(
    node: Node, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    base = tmp_path_factory.mktemp("operator")
    with running(Operator(base, "solo", etcd_server.endpoint, PREFIX, node.endpoint)) as proc:
        yield proc


def available(status: ServiceStatus | None, replicas: int) -> bool:
    if status is None:
        return False
    condition = status.condition("Available")
    return (
        condition is not None
        and condition.status == "True"
        and status.replicas.ready == replicas
        and status.replicas.updated == replicas
        and len([u for u in status.units if u.role == "main"]) == replicas
    )


async def converge(
    etcd: Etcd, fleet: FleetClient, name: str, replicas: int, operator: Operator
) -> ServiceStatus:
    async def check() -> ServiceStatus | None:
        status = await status_of(etcd, name)
        running = await running_mains(fleet, name)
        mains = owned_mains(await fleet.list_units(), name)
        if available(status, replicas) and len(running) == replicas == len(mains):
            return status
        return None

    try:
        return await eventually(check, CONVERGE, f"{name} to run {replicas} available instances")
    except AssertionError:
        print(operator.log_tail())
        raise


async def test_launches_units_and_reports_available(
    etcd: Etcd, fleet: FleetClient, operator: Operator
) -> None:
    await etcd.put(KEYS.desired("services", "hello"), spec(3, ports={"base": 8001}))
    status = await converge(etcd, fleet, "hello", 3, operator)
    names = sorted(u.name for u in owned_mains(await fleet.list_units(), "hello"))
    assert names == ["hello@8001.service", "hello@8002.service", "hello@8003.service"]
    desired = await etcd.get(KEYS.desired("services", "hello"))
    assert desired is not None and status.observed_generation == desired.mod_revision
    events, _ = await etcd.list(KEYS.events("services", "hello"))
    assert any(b"Created hello@8001.service" in kv.value for kv in events)


async def test_scales_up_and_down(etcd: Etcd, fleet: FleetClient, operator: Operator) -> None:
    key = KEYS.desired("services", "scale")
    await etcd.put(key, spec(3))
    await converge(etcd, fleet, "scale", 3, operator)
    await etcd.put(key, spec(5))
    await converge(etcd, fleet, "scale", 5, operator)
    await etcd.put(key, spec(1))
    await converge(etcd, fleet, "scale", 1, operator)
    assert len(owned_mains(await fleet.list_units(), "scale")) == 1


async def test_rolling_update_never_exceeds_surge(etcd: Etcd, fleet: FleetClient, operator: Operator) -> None:
    key = KEYS.desired("services", "roll")
    rollout = {"maxSurge": 1, "maxUnavailable": 0}
    await etcd.put(key, spec(3, rollout=rollout))
    before = await converge(etcd, fleet, "roll", 3, operator)
    await etcd.put(key, spec(3, "/bin/sleep 1001", rollout=rollout))
    seen_max = 0
    templates: set[str] = set()

    async def rolled() -> ServiceStatus | None:
        nonlocal seen_max
        mains = owned_mains(await fleet.list_units(), "roll")
        seen_max = max(seen_max, len(mains))
        for unit in mains:
            owner = owned_by(unit.options)
            assert owner is not None
            templates.add(owner.template)
        status = await status_of(etcd, "roll")
        done = available(status, 3) and status is not None and status.template != before.template
        return status if done and len(await running_mains(fleet, "roll")) == 3 and len(mains) == 3 else None

    after = await eventually(rolled, CONVERGE, "the rolling update to finish", every=0.05)
    assert seen_max <= 3 + 1, f"saw {seen_max} main units at once"
    assert len(templates) == 2
    assert all(
        owned_by(u.options).template == after.template for u in owned_mains(await fleet.list_units(), "roll")
    )  # type: ignore[union-attr]


async def test_delete_removes_owned_units_only(etcd: Etcd, fleet: FleetClient, operator: Operator) -> None:
    await fleet.create_unit(
        "web@9999.service", [UnitOption("Service", "ExecStart", "/bin/sleep 1000")], "launched"
    )
    key = KEYS.desired("services", "web")
    await etcd.put(key, spec(2, ports={"base": 8101}))
    await converge(etcd, fleet, "web", 2, operator)
    await etcd.delete(key)

    async def gone() -> bool:
        units = await fleet.list_units()
        status = await etcd.get(KEYS.status("services", "web"))
        return not owned_mains(units, "web") and status is None

    await eventually(gone, CONVERGE, "web's owned units and status to go")
    unowned = await fleet.get_unit("web@9999.service")
    assert unowned is not None and unowned.desired_state == "launched"
    await fleet.destroy_unit("web@9999.service")


async def test_instances_of_a_stopped_machine_come_back_elsewhere(
    etcd: Etcd, fleet: FleetClient, operator: Operator, node: Node
) -> None:
    await etcd.put(KEYS.desired("services", "move"), spec(3))
    await converge(etcd, fleet, "move", 3, operator)
    units = owned_mains(await fleet.list_units(), "move")
    victim = units[0].machine_id
    assert victim is not None
    await node.machine(victim, "stop")
    try:

        async def moved() -> bool:
            mains = owned_mains(await fleet.list_units(), "move")
            running = await running_mains(fleet, "move")
            return len(running) == 3 and all(u.machine_id not in (None, victim) for u in mains)

        await eventually(moved, CONVERGE, "move's instances to run on the remaining machines")
        await converge(etcd, fleet, "move", 3, operator)

        async def lost_event() -> list[dict[str, str]]:
            events, _ = await etcd.list(KEYS.events("services", "move"))
            found = [json.loads(kv.value) for kv in events]
            return [e for e in found if e["reason"] == "MachineLost"]

        lost = await eventually(lost_event, CONVERGE, "a MachineLost event")
        assert len(lost) == 1 and lost[0]["type"] == "Warning", lost
        assert lost[0]["message"].startswith(f"machine {victim} left the cluster with move@"), lost
    finally:
        await node.machine(victim, "start")


async def test_invalid_spec_marks_only_that_service(
    etcd: Etcd, fleet: FleetClient, operator: Operator
) -> None:
    await etcd.put(KEYS.desired("services", "steady"), spec(2))
    await converge(etcd, fleet, "steady", 2, operator)
    steady_units = sorted(u.name for u in owned_mains(await fleet.list_units(), "steady"))
    await etcd.put(KEYS.desired("services", "broken"), b'{"replicas": 2, "unit": {"execStrat": "/bin/true"}}')

    async def invalid() -> ServiceStatus | None:
        status = await status_of(etcd, "broken")
        condition = status.condition("Invalid") if status else None
        return status if condition is not None and condition.status == "True" else None

    status = await eventually(invalid, CONVERGE, "broken's Invalid condition")
    condition = status.condition("Invalid")
    assert condition is not None and "$.unit" in condition.message
    assert not owned_mains(await fleet.list_units(), "broken")
    await asyncio.sleep(1.0)
    assert sorted(u.name for u in owned_mains(await fleet.list_units(), "steady")) == steady_units
    assert available(await status_of(etcd, "steady"), 2)


async def test_run_operator_in_process_serves_health_and_resigns_on_cancel(
    etcd_server: EtcdServer, node: Node
) -> None:
    prefix = f"{PREFIX}-inproc"
    port = free_port()
    config = OperatorSettings(
        etcd=EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=prefix),
        fleet=FleetSettings(endpoint=node.endpoint),
        leader=LeaderTimings(4.0, 2.0, 0.5),
        metrics=MetricsSettings(f"127.0.0.1:{port}"),
        identity="in-process",
    )
    task = asyncio.create_task(run_operator(config, handle_signals=False))
    try:
        async with HttpSession(f"http://127.0.0.1:{port}", timeouts=Timeouts.uniform(5.0)) as http:

            async def ready() -> str | None:
                try:
                    resp = await http.request("GET", "/readyz")
                except FleetopError:
                    return None
                return resp.text if resp.status == 200 else None

            body = json.loads(await eventually(ready, 20, "/readyz to answer 200"))
            assert body["caches"]["fleet"] is True and body["etcd"] == "ok"
            assert (await http.request("GET", "/healthz")).status == 200
            metrics = (await http.request("GET", "/metrics")).text
            assert "fleetop_leader 1.0" in metrics
            assert "fleetop_workqueue_depth" in metrics and "fleetop_fleet_api_calls_total" in metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=prefix)) as client:
        assert await client.get(KEYS.leader()) is None, "cancelling the operator resigns leadership"
