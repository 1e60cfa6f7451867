"""Workload 4: spec to running, per stage, on ``fleetop node --machines 3``.

``etcdctl put /desired/services/s2r`` a ServiceSpec with 10 replicas whose units run
``bench/backend.py`` on ``${COREOS_PRIVATE_IPV4}:%i`` with a sidekick (``fleetop register``, HTTP check
every 1 s). Stages, all from t0 = just before ``etcdctl put`` runs:

* *units running*: every main unit is ``active`` in fleet's ``/state`` (polled every 100 ms);
* *registered*: every instance's key is under ``/services/s2r/`` (the bench's watch);
* *ready in status*: ``/status/services/s2r`` reports ``ready == replicas`` for this generation.

Then the same for a replica change 10 → 20, and for a template change (a new environment variable)
rolled out with the default rollout (maxSurge 1, maxUnavailable 0): *rolled out* is the status reporting
``updated == ready == 20`` for the new generation.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.harness import (
    BACKEND_SCRIPT,
    KEYS,
    KeyLog,
    Options,
    Procs,
    Stack,
    etcd_client,
    etcdctl,
    now,
)
from bench.report import WorkloadResult
from fleetop.fleet.client import FleetClient
from fleetop.local.etcdserver import port_is_free
from fleetop.models import ServiceStatus

NAME = "s2r"


def spec(replicas: int, base: int, version: str) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "ports": {"base": base},
        "unit": {
            "execStart": f"{sys.executable} {BACKEND_SCRIPT} ${{COREOS_PRIVATE_IPV4}}:%i",
            "environment": {"BENCH_VERSION": version},
        },
        "discovery": {
            "sidekick": True,
            "check": {"http": "/", "interval": "1s", "timeout": "1s"},
            "ttl": "10s",
        },
    }


def free_base(count: int) -> int:
    for base in range(23000, 60000, 97):
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


async def running(fleet: FleetClient) -> int:
    """Main units of the service that fleet reports active."""
    states = await fleet.list_states()
    return sum(1 for s in states if s.name.startswith(f"{NAME}@") and s.active_state == "active")


async def wait_running(fleet: FleetClient, replicas: int, timeout: float) -> float:
    deadline = now() + timeout
    while True:
        count = await running(fleet)
        if count >= replicas:
            return now()
        if now() > deadline:
            raise TimeoutError(f"{count}/{replicas} units running after {timeout:g} s")
        await asyncio.sleep(0.1)


def status_of(log: KeyLog) -> ServiceStatus | None:
    raw = log.items.get(KEYS.status("services", NAME))
    return None if raw is None else ServiceStatus.model_validate_json(raw)


async def stage_change(
    endpoint: str,
    fleet: FleetClient,
    regs: KeyLog,
    statuses: KeyLog,
    body: dict[str, Any],
    replicas: int,
    rollout: bool,
) -> dict[str, float]:
    t0 = now()
    await asyncio.to_thread(etcdctl, endpoint, "put", KEYS.desired("services", NAME), json.dumps(body))
    revision = int(
        json.loads(
            await asyncio.to_thread(etcdctl, endpoint, "get", KEYS.desired("services", NAME), "-w", "json")
        )["kvs"][0]["mod_revision"]
    )
    out: dict[str, float] = {}
    if not rollout:
        out["running"] = await wait_running(fleet, replicas, 240) - t0
        at = await regs.wait_for(
            lambda: now() if len(regs.items) >= replicas else None, 240, f"{replicas} registrations"
        )
        out["registered"] = at - t0

    def ready() -> float | None:
        status = status_of(statuses)
        if status is None or status.observed_generation < revision:
            return None
        counts = status.replicas
        if (
            counts.ready >= replicas
            and (not rollout or counts.updated >= replicas)
            and counts.desired == replicas
        ):
            return now()
        return None

    out["rolledOut" if rollout else "ready"] = await statuses.wait_for(ready, 600, "the status") - t0
    return out


async def one_round(stack: Stack, base: int) -> dict[str, dict[str, float]]:
    async with etcd_client(stack.endpoint) as etcd, FleetClient(stack.fleet_endpoint) as fleet:
        async with (
            KeyLog(etcd, KEYS.default_registrations(NAME)) as regs,
            KeyLog(etcd, KEYS.status("services", NAME)) as statuses,
        ):
            stages = {
                "create10": await stage_change(
                    stack.endpoint, fleet, regs, statuses, spec(10, base, "1"), 10, False
                ),
                "scale20": await stage_change(
                    stack.endpoint, fleet, regs, statuses, spec(20, base, "1"), 20, False
                ),
                "template": await stage_change(
                    stack.endpoint, fleet, regs, statuses, spec(20, base, "2"), 20, True
                ),
            }
        await etcd.delete(KEYS.desired("services", NAME))
        deadline = now() + 120
        while now() < deadline:
            units = [u for u in await fleet.list_units() if u.name.startswith(NAME)]
            items, _ = await etcd.list(KEYS.default_registrations(NAME))
            if not units and not items:
                break
            await asyncio.sleep(0.5)
    return stages


async def run(opts: Options) -> WorkloadResult:
    result = WorkloadResult("spec")
    rounds = opts.count(2, 1)
    procs = Procs(opts.base / "spec")
    procs.base.mkdir(parents=True, exist_ok=True)
    stack = Stack(procs.base, procs, machines=3)
    all_rounds: list[dict[str, dict[str, float]]] = []
    try:
        stack.start()
        await asyncio.to_thread(stack.wait_leader)
        base = free_base(20)
        for _ in range(rounds):
            all_rounds.append(await one_round(stack, base))
    finally:
        procs.stop_all()
        stack.stop()
    labels = {
        ("create10", "running"): "put spec (10 replicas) → 10 units running",
        ("create10", "registered"): "put spec (10 replicas) → 10 registered",
        ("create10", "ready"): "put spec (10 replicas) → status ready 10",
        ("scale20", "running"): "replicas 10 → 20: 20 units running",
        ("scale20", "registered"): "replicas 10 → 20: 20 registered",
        ("scale20", "ready"): "replicas 10 → 20: status ready 20",
        ("template", "rolledOut"): "template change → 20 updated and ready",
    }
    for (stage, what), label in labels.items():
        result.add(label, "s", [r[stage][what] for r in all_rounds])
    result.raw["rounds"] = all_rounds
    result.notes.append(
        f"{rounds} round(s) on fleetop node --machines 3; units run bench/backend.py, sidekick HTTP check "
        "every 1 s, default rollout (maxSurge 1, maxUnavailable 0). "
        "No target in the issue: reported per stage."
    )
    return result
