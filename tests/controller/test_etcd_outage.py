"""The operator rides out an etcd outage: etcd killed (by PID) under a running operator, restarted on the
same data dir, and a change made after it is back is acted on; the operator never exits."""

from __future__ import annotations

from pathlib import Path

from ophelpers import Node, Operator, owned_mains, running_mains, spec

from fleetop.config import EtcdSettings
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ServiceStatus
from waiting import eventually

KEYS = Keys()


async def _converged(etcd: Etcd, fleet: FleetClient, name: str, replicas: int) -> bool:
    kv = await etcd.get(KEYS.status("services", name))
    status = None if kv is None else ServiceStatus.model_validate_json(kv.value)
    running = await running_mains(fleet, name)
    mains = owned_mains(await fleet.list_units(), name)
    return status is not None and status.replicas.ready == replicas and len(running) == replicas == len(mains)


async def _not_leading(operator: Operator) -> bool:
    try:
        return "\nfleetop_leader 0.0\n" in await operator.metrics()
    except Exception:
        return False


async def test_operator_resumes_after_etcd_restarts(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    node = Node(tmp_path / "node", machines=2)
    node.start()
    operator = Operator(tmp_path / "op", "outage", server.endpoint, "", node.endpoint).start()
    settings = EtcdSettings(endpoints=(server.endpoint,), dial_timeout=2.0, command_timeout=2.0)
    try:
        async with FleetClient(node.endpoint) as fleet:
            async with await Etcd.connect(settings) as etcd:
                await etcd.put(KEYS.desired("services", "steady"), spec(2))
                await eventually(
                    lambda: _converged(etcd, fleet, "steady", 2), 40, "2 instances before the outage"
                )
            server.kill()
            # past the operator's renew deadline (2 s) it steps down, and says so in its metrics
            await eventually(lambda: _not_leading(operator), 30, "the operator to step down")
            assert operator.running, operator.log_tail()
            server.start()
            async with await Etcd.connect(settings) as etcd:
                await etcd.put(KEYS.desired("services", "steady"), spec(3))
                await eventually(
                    lambda: _converged(etcd, fleet, "steady", 3), 40, "3 instances after the outage"
                )
            assert operator.running, operator.log_tail()
    finally:
        operator.stop()
        node.stop()
        server.stop()
