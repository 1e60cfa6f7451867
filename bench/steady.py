"""Workload 5: the operator's steady state. 1,000 services x 3 replicas on ``fleetop node``.

The units run ``/bin/sleep`` (no discovery). From an empty etcd the 1,000 specs are written (in
transactions of 100), and the bench waits until fleet reports 3,000 active units and every service's
status says ``ready == 3``: *time to converge*. Then, once etcd's revision has stopped moving, a quiet
period (a minute; 15 s with ``--quick``) during which nothing changes, measured from outside the
operator:

* the operator's CPU (``/proc/<pid>/stat``), as % of one core;
* etcd writes: the change of etcd's revision (every put, delete or txn that writes moves it) and
  etcd's ``etcd_mvcc_put_total`` / ``etcd_mvcc_delete_total``;
* etcd requests: ``grpc_server_started_total`` (every unary call and stream the operator opens) and
  stream messages received, from etcd's own ``/metrics``, per minute;
* fleet API calls: the operator's ``fleetop_fleet_api_calls_total``, per minute;
* the operator's RSS.
"""

from __future__ import annotations

import asyncio
import json

from bench.harness import (
    KEYS,
    Options,
    Procs,
    Stack,
    cpu_seconds,
    etcd_client,
    memory_mb,
    metric_sum,
    now,
    put_many,
)
from bench.report import Target, WorkloadResult
from fleetop.controller.runtime.informers import CONVERGING_POLL
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.models import ServiceStatus

SPEC = {"replicas": 3, "unit": {"execStart": "/bin/sleep 86400"}}


async def ready_services(etcd: Etcd) -> int:
    items, _ = await etcd.list(KEYS.status("services"))
    count = 0
    for kv in items:
        if kv.key.count("/") != 3:
            continue  # agents' and other sub-keys
        try:
            status = ServiceStatus.model_validate_json(kv.value)
        except ValueError:
            continue
        if status.replicas.ready >= 3 and status.replicas.desired == 3:
            count += 1
    return count


async def active_units(fleet: FleetClient) -> int:
    return sum(1 for s in await fleet.list_states() if s.active_state == "active")


async def quiet_revision(etcd: Etcd, still: float, timeout: float) -> int:
    """Wait until etcd's revision has not moved for ``still`` seconds; return it."""
    deadline = now() + timeout
    revision = int((await etcd.status())["revision"])
    since = now()
    while now() < deadline:
        await asyncio.sleep(0.5)
        current = int((await etcd.status())["revision"])
        if current != revision:
            revision, since = current, now()
        elif now() - since >= still:
            return revision
    raise TimeoutError(f"etcd's revision kept moving for {timeout:g} s")


def _etcd_counts(metrics: dict[str, float]) -> dict[str, float]:
    return {
        "rpcs": metric_sum(metrics, "grpc_server_started_total"),
        "streamMessages": metric_sum(metrics, "grpc_server_msg_received_total", 'grpc_type="bidi_stream"'),
        "puts": metric_sum(metrics, "etcd_mvcc_put_total"),
        "deletes": metric_sum(metrics, "etcd_mvcc_delete_total"),
        "ranges": metric_sum(metrics, "etcd_mvcc_range_total"),
    }


def _rpcs_by_method(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in after.items():
        if key.startswith("grpc_server_started_total{"):
            method = key.partition('grpc_method="')[2].partition('"')[0]
            delta = value - before.get(key, 0.0)
            if delta:
                out[method] = out.get(method, 0.0) + delta
    return out


def _by_label(before: dict[str, float], after: dict[str, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in after.items():
        if key.startswith(name + "{"):
            which = key.partition(f'{label}="')[2].partition('"')[0]
            delta = value - before.get(key, 0.0)
            if delta:
                out[which] = delta
    return out


async def run(opts: Options) -> WorkloadResult:
    result = WorkloadResult("steady")
    services = 50 if opts.quick else 1000
    quiet = 15.0 if opts.quick else 60.0
    procs = Procs(opts.base / "steady")
    procs.base.mkdir(parents=True, exist_ok=True)
    stack = Stack(procs.base, procs, machines=3)
    try:
        stack.start()
        op = await asyncio.to_thread(stack.wait_leader)
        async with etcd_client(stack.endpoint) as etcd, FleetClient(stack.fleet_endpoint) as fleet:
            body = json.dumps(SPEC, separators=(",", ":"))
            t0 = now()
            await put_many(etcd, [(KEYS.desired("services", f"q{n:04d}"), body) for n in range(services)])
            units_at = ready_at = 0.0
            budget = 240.0  # keeps the whole run under 15 minutes; a slower convergence is reported
            deadline = t0 + budget
            active = 0
            while now() < deadline:
                active = await active_units(fleet)
                if not units_at and active >= 3 * services:
                    units_at = now()
                if units_at and await ready_services(etcd) >= services:
                    ready_at = now()
                    break
                await asyncio.sleep(1.0)
            if not ready_at:
                ready = await ready_services(etcd)
                elapsed = now() - t0
                result.value(f"{services} services x 3: units active after {elapsed:.0f} s", "count", active)
                result.value("converging: units started per second", "count", active / elapsed)
                result.value(f"{services} services x 3: services ready after {elapsed:.0f} s", "count", ready)
                result.error = (
                    f"not converged within {budget:.0f} s ({active}/{3 * services} units active, "
                    f"{ready}/{services} services ready): no quiet-period figures"
                )
                return result
            converge = ready_at - t0
            if not opts.quick:
                # after acting, the operator polls fleet fast for CONVERGING_POLL (30 s); steady is after
                await asyncio.sleep(max(0.0, ready_at + CONVERGING_POLL + 2 - now()))
            revision0 = await quiet_revision(etcd, 5.0, 300)
            settled = now() - ready_at
            etcd0 = stack.etcd_metrics()
            op0 = op.metrics()
            cpu0, node_cpu0 = cpu_seconds(op.pid), cpu_seconds(stack.node.pid) if stack.node else 0.0
            started = now()
            await asyncio.sleep(quiet)
            elapsed = now() - started
            cpu1, node_cpu1 = cpu_seconds(op.pid), cpu_seconds(stack.node.pid) if stack.node else 0.0
            op1 = op.metrics()
            etcd1 = stack.etcd_metrics()
            revision1 = int((await etcd.status())["revision"])
            rss, hwm = memory_mb(op.pid)
        minutes = elapsed / 60
        before, after = _etcd_counts(etcd0), _etcd_counts(etcd1)
        delta = {k: after[k] - before[k] for k in before}
        fleet_calls = metric_sum(op1, "fleetop_fleet_api_calls_total") - metric_sum(
            op0, "fleetop_fleet_api_calls_total"
        )
        status_writes = metric_sum(
            op1, "fleetop_writes_total", 'result="written",what="status"'
        ) - metric_sum(op0, "fleetop_writes_total", 'result="written",what="status"')
        result.value(f"{services} services x 3: time to converge from empty", "s", converge)
        result.value(
            "quiet: operator CPU",
            "% of a core",
            (cpu1 - cpu0) / elapsed * 100,
            Target.of(("value", "<=", 1.0)),
        )
        result.value(
            "quiet: etcd writes (revision change)",
            "count",
            revision1 - revision0,
            Target.of(("value", "==", 0)),
        )
        result.value("quiet: etcd requests (RPCs started) per minute", "count", delta["rpcs"] / minutes)
        result.value(
            "quiet: etcd stream messages received per minute", "count", delta["streamMessages"] / minutes
        )
        result.value("quiet: fleet API calls per minute", "count", fleet_calls / minutes)
        result.value("quiet: operator status writes", "count", status_writes, Target.of(("value", "==", 0)))
        result.value("operator RSS", "MB", rss, Target.of(("value", "<=", 100.0)))
        result.raw.update(
            {
                "services": services,
                "quietSeconds": elapsed,
                "settleSeconds": settled,
                "unitsActiveSeconds": units_at - t0,
                "etcdDelta": delta,
                "rpcsByMethod": _rpcs_by_method(etcd0, etcd1),
                "fleetCalls": fleet_calls,
                "fleetCallsByOperation": _by_label(op0, op1, "fleetop_fleet_api_calls_total", "operation"),
                "operatorCpuSeconds": cpu1 - cpu0,
                "nodeCpuPercent": (node_cpu1 - node_cpu0) / elapsed * 100,
                "rssMB": rss,
                "peakRssMB": hwm,
            }
        )
        result.notes.append(
            f"{services} services x 3 replicas of /bin/sleep on fleetop node --machines 3; quiet period "
            f"{elapsed:.0f} s after etcd's revision had been still for 5 s ({settled:.0f} s after convergence"
            + ("" if opts.quick else ", past the operator's 30 s fast-poll window after acting")
            + "). fleet has no watch API, so the operator polls it: 0.5 s while converging, otherwise 5 s or"
            + " further apart on a cluster where polls would take more than 0.5 % of a core (units are listed"
            + " when states or machines changed, or once a minute)."
        )
    finally:
        procs.stop_all()
        stack.stop()
    return result
