"""Workload 6: recovery under a running system (operator, unmanaged nginx + agent, live backends).

* *etcd outage*: etcd is stopped (SIGTERM) for 20 s (5 s with ``--quick``) and started again on the
  same data dir and ports. t_back = the moment etcd serves clients again: its ``/health`` answers
  healthy (one request held open from the restart: etcd accepts connections at once but serves none
  until its raft has elected a leader, which a restarted single member takes 1-2 s to do, its election
  timeout of 1 s randomized; that part is reported on its own row, "etcd restarted → serving"). Then
  a fresh client registers a new backend at once; end = the first request through nginx answered by
  it. The default leader timings (lease 15 s, renew deadline 10 s, retry 2 s) apply, as a user would
  have them.
* *leader failover*: two operators (``fleetop run``, default timings); the leader is killed with
  SIGKILL; right after, a new backend is registered; end = the first request through nginx answered
  by it, i.e. the new leader has rendered and published. Target: within the lease duration (15 s).
  The killed one is restarted as the next standby.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request

from bench.harness import (
    KEYS,
    Backends,
    KeyLog,
    Options,
    Procs,
    ProxyRig,
    Stack,
    config_newer,
    decode_published,
    etcd_client,
    now,
    probe_until,
    proxy_spec,
    put_json,
)
from bench.report import Target, WorkloadResult
from fleetop.local.etcdserver import free_port

LEASE = 15.0
CONFD = "confd -watch: etcd down 20 s → first change in the file 6.6 s after it is back (2.9-7.6 s)"


async def _setup(stack: Stack, name: str, base: str) -> ProxyRig:
    rig = ProxyRig.start(stack, name, "nginx")
    async with etcd_client(stack.endpoint) as etcd:
        await put_json(
            etcd, KEYS.desired("proxies", name), proxy_spec("nginx", rig.port, [{"service": "rec"}])
        )
        await etcd.put("/services/rec/base", base)
    await probe_until(rig.port, lambda s, w: s == 200 and w == base, 60)
    return rig


async def _remove(stack: Stack, rig: ProxyRig, key: str, base: str) -> None:
    async with etcd_client(stack.endpoint) as etcd:
        await etcd.delete(key)
    await probe_until(rig.port, lambda s, w: s == 200 and w == base, 60)
    for _ in range(4):  # three in a row from base: the removed one is out of rotation
        await probe_until(rig.port, lambda s, w: s == 200 and w == base, 60)


async def etcd_outage(opts: Options, result: WorkloadResult) -> None:
    rounds = opts.count(3, 1)
    down = 5.0 if opts.quick else 20.0
    procs = Procs(opts.base / "recovery-etcd")
    procs.base.mkdir(parents=True, exist_ok=True)
    stack = Stack(procs.base, procs)
    served: list[float] = []
    electing: list[float] = []
    try:
        stack.start()
        await asyncio.to_thread(stack.wait_leader)
        ports = [free_port() for _ in range(2)]
        base, new = f"127.0.0.99:{ports[0]}", f"127.0.0.2:{ports[1]}"
        Backends.start(procs, "backends", [base, new])
        rig = await _setup(stack, "rec", base)
        assert stack.etcd is not None
        for _ in range(rounds):
            await asyncio.to_thread(stack.etcd.stop)
            await asyncio.sleep(down)
            started = now()
            await asyncio.to_thread(stack.etcd.start)
            await asyncio.to_thread(_serving, stack.etcd.url, 60.0)
            back = now()
            electing.append(back - started)
            async with etcd_client(stack.endpoint) as etcd:
                await etcd.put("/services/rec/new", new)
            end = await probe_until(rig.port, lambda s, w: s == 200 and w == new, 120)
            served.append(end - back)
            await asyncio.sleep(1.0)
            await _remove(stack, rig, "/services/rec/new", base)
            await asyncio.sleep(random.uniform(2.0, 3.0))
    finally:
        procs.stop_all()
        stack.stop()
    result.add(
        f"etcd down {down:.0f} s, back → first change served", "s", served, Target.of(("median", "<=", 1.0))
    )
    result.add("etcd restarted → serving clients again (etcd's own election)", "s", electing)
    result.raw["etcdOutage"] = {"downSeconds": down, "servedSeconds": served, "electingSeconds": electing}


def _serving(url: str, timeout: float) -> None:
    """Return once etcd at ``url`` answers ``/health`` healthy. Before its raft has a leader etcd
    accepts connections but answers none: the request waits in its accept queue and is answered the
    moment etcd serves, so this returns then, not on a polling tick."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=max(0.1, deadline - time.monotonic())) as r:
                if json.load(r).get("health") == "true":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"etcd at {url} did not serve within {timeout:g} s")


async def failover(opts: Options, result: WorkloadResult) -> None:
    rounds = opts.count(3, 1)
    procs = Procs(opts.base / "recovery-leader")
    procs.base.mkdir(parents=True, exist_ok=True)
    stack = Stack(procs.base, procs)
    acted: list[float] = []
    published: list[float] = []
    try:
        stack.start(operators=2)
        await asyncio.to_thread(stack.wait_leader)
        ports = [free_port() for _ in range(2)]
        base, new = f"127.0.0.99:{ports[0]}", f"127.0.0.2:{ports[1]}"
        Backends.start(procs, "backends", [base, new])
        rig = await _setup(stack, "fo", base)
        async with etcd_client(stack.endpoint) as etcd, KeyLog(etcd, KEYS.proxy_config("fo")) as configs:
            for n in range(rounds):
                leader = await asyncio.to_thread(stack.wait_leader)
                await asyncio.sleep(1.0)
                gen0 = _generation(configs.items.get(KEYS.proxy_config("fo")))
                killed = now()
                procs.kill(leader.child)
                stack.operators.remove(leader)
                await etcd.put("/services/rec/new", new)
                end = await probe_until(rig.port, lambda s, w: s == 200 and w == new, 3 * LEASE)
                acted.append(end - killed)
                pub = configs.first_after(killed, config_newer(KEYS.proxy_config("fo"), gen0))
                if pub is not None:
                    published.append(pub - killed)
                await asyncio.to_thread(stack.start_operator, f"bench-{n + 3}")
                await _remove(stack, rig, "/services/rec/new", base)
                await asyncio.sleep(random.uniform(1.0, 2.0))
    finally:
        procs.stop_all()
        stack.stop()
    result.add(
        "leader killed -9 → new leader published the change", "s", published, Target.of(("max", "<=", LEASE))
    )
    result.add("leader killed -9 → change served through nginx", "s", acted, Target.of(("max", "<=", LEASE)))
    result.raw["failover"] = {"servedSeconds": acted, "publishedSeconds": published}


def _generation(raw: bytes | None) -> int:
    config = decode_published(raw)
    return config.generation if config is not None else 0


async def run(opts: Options) -> WorkloadResult:
    result = WorkloadResult("recovery")
    await etcd_outage(opts, result)
    await failover(opts, result)
    result.notes.append(
        "Default leader timings (lease 15 s, renew deadline 10 s, retry 2 s). etcd is restarted on the "
        "same data dir and ports; 'back' is when it serves clients again (its /health answers), and a "
        "fresh client writes the change then (the bench's own reconnect backoff is not measured). "
        f"Reference: {CONFD}."
    )
    return result
