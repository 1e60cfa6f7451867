"""Workload 2: a burst of 500 registrations as fast as one client can, then 500 deletes.

One service behind an unmanaged nginx with the default ``wait`` (min 50 ms, max 1 s). The bench writes
500 keys one after another from one etcd client (each put awaited), then deletes them the same way.
Counted per 500 changes: *renders* (config generations published by the operator) and *reloads* (the
agent's ``reloads`` counter). Timed: from the last write being acknowledged to the final config
serving, i.e. the bench's watch seeing the agent's status for the generation that holds all 500 (or
none) of the backends; the agent reports only after nginx has forked the worker for it.
"""

from __future__ import annotations

import asyncio

from bench.harness import (
    KEYS,
    SERVER_RE,
    KeyLog,
    Options,
    Procs,
    ProxyRig,
    Stack,
    agent_reloads,
    decode_agent,
    decode_published,
    etcd_client,
    now,
    proxy_spec,
    put_json,
)
from bench.report import Target, WorkloadResult
from fleetop.etcd.client import Etcd

SIZE = 500
WAIT_MAX_MS = 1000.0
CONFD = "confd -watch: 21-26 reloads per 500 changes, final file 6-15 ms after the last put"


def _servers(raw: bytes | None) -> int | None:
    config = decode_published(raw)
    return None if config is None else len(set(SERVER_RE.findall(config.body)))


async def one_burst(
    etcd: Etcd, rig: ProxyRig, service: str, configs: KeyLog, agents: KeyLog, delete: bool
) -> dict[str, float]:
    config_key = KEYS.proxy_config(rig.name)
    start_config = decode_published(configs.items.get(config_key))
    gen0 = start_config.generation if start_config is not None else 0
    reloads0 = agent_reloads(agents)
    keys = [f"/services/{service}/{i:04d}" for i in range(SIZE)]
    t0 = now()
    for i, key in enumerate(keys):
        if delete:
            await etcd.delete(key)
        else:
            await etcd.put(key, f"127.0.0.1:{20000 + i}")
    last = now()
    want = 0 if delete else SIZE

    def final_generation() -> int | None:
        raw = configs.items.get(config_key)
        if _servers(raw) == want:
            config = decode_published(raw)
            return config.generation if config is not None else None
        return None

    generation = await configs.wait_for(final_generation, 30, f"the config with {want} backends")

    def applied() -> float | None:
        return agents.first_after(last, lambda s: _applied(s.value) >= generation)

    served = await agents.wait_for(applied, 30, "the agent applying the final config")
    await asyncio.sleep(0.3)  # nothing else should follow; let a stray render show up in the counts
    end_config = decode_published(configs.items.get(config_key))
    gen1 = end_config.generation if end_config is not None else gen0
    return {
        "writeSeconds": last - t0,
        "finalMs": (served - last) * 1000,
        "renders": gen1 - gen0,
        "reloads": agent_reloads(agents) - reloads0,
    }


def _applied(raw: bytes | None) -> int:
    status = decode_agent(raw)
    return status.applied_generation if status is not None and status.error is None else 0


async def run(opts: Options) -> WorkloadResult:
    result = WorkloadResult("burst")
    rounds = opts.count(3, 1)
    procs = Procs(opts.base / "burst")
    procs.base.mkdir(parents=True, exist_ok=True)
    stack = Stack(procs.base, procs)
    rows: list[dict[str, float]] = []
    try:
        stack.start()
        async with etcd_client(stack.endpoint) as etcd:
            await asyncio.to_thread(stack.wait_leader)
            rig = ProxyRig.start(stack, "burst", "nginx")
            service = "bulk"
            await put_json(
                etcd, KEYS.desired("proxies", rig.name), proxy_spec("nginx", rig.port, [{"service": service}])
            )
            async with (
                KeyLog(etcd, KEYS.proxy_config(rig.name)) as configs,
                KeyLog(etcd, KEYS.agent_status(rig.name, "")) as agents,
            ):
                await configs.wait_for(
                    lambda: configs.items.get(KEYS.proxy_config(rig.name)), 60, "a first config"
                )
                await agents.wait_for(
                    lambda: any(_applied(v) for v in agents.items.values()), 60, "the agent"
                )
                await asyncio.sleep(1.5)
                for _ in range(rounds):
                    for delete in (False, True):
                        row = await one_burst(etcd, rig, service, configs, agents, delete)
                        row["delete"] = float(delete)
                        rows.append(row)
                        await asyncio.sleep(1.5)
    finally:
        procs.stop_all()
        stack.stop()
    puts = [r for r in rows if not r["delete"]]
    deletes = [r for r in rows if r["delete"]]
    reload_target = Target.of(("max", "<=", 5))
    final_target = Target.of(("max", "<=", WAIT_MAX_MS + 50))
    for label, group in (("500 puts", puts), ("500 deletes", deletes)):
        result.add(f"{label}: reloads", "count", [r["reloads"] for r in group], reload_target)
        result.add(f"{label}: renders published", "count", [r["renders"] for r in group])
        result.add(
            f"{label}: last write → final config serving", "ms", [r["finalMs"] for r in group], final_target
        )
        result.add(f"{label}: time to write them", "s", [r["writeSeconds"] for r in group])
    result.raw["bursts"] = rows
    result.notes.append(
        f"{rounds} round(s) of 500 puts then 500 deletes, one client, each write awaited; default wait "
        f"(50 ms / 1 s), so the final-config target is wait.max + 50 ms = {WAIT_MAX_MS + 50:.0f} ms. "
        f"Reference: {CONFD}."
    )
    return result
