"""Workload 3: scale. 1,000 services x 10 backends (10,000 keys), one upstream per service.

* *render alone* (in this process, the operator's own code): parse the registrations
  (``collect_backends``) and ``render()`` the nginx config, at 10,000 keys and at 100,000 keys
  (10,000 services x 10 backends);
* *operator, full render*: with the 10,000 keys in etcd, a proxy spec routing the 1,000 services by
  host (``s0001.bench.test`` ...) is written, then changed back and forth (``headers.handler``), each
  change forcing a full render of everything: spec put → config published (the bench's watch) → the
  agent applied it (nginx checked and reloaded a 1,000-upstream config). The operator's CPU per full
  render and its RSS come from ``/proc/<pid>``;
* *one key added at that scale*: a 1,001st routed service ``probe`` starts empty (503); one key is put
  for a live backend; end = the first response through the proxy (``Host: probe.bench.test``) from it.
  Measured through nginx (right after the full renders), then through HAProxy (the same 1,001 routes
  on a proxy of its own, the nginx one deleted first so the operator renders one config per change):
  nginx checks and reloads a 0.7 MB config, since an empty service has no ``upstream`` and its route
  answers 503 itself; HAProxy renders the empty service's backend all the same (HAProxy answers 503
  from a backend without servers), so the first server is an ``add server`` over the admin socket with
  no reload, and the reloads the HAProxy agent counted over these changes are reported (target 0).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.harness import (
    KEYS,
    Backends,
    KeyLog,
    Kind,
    Options,
    Procs,
    ProxyRig,
    Stack,
    agent_reloads,
    applied_newer,
    config_newer,
    cpu_seconds,
    decode_agent,
    decode_published,
    etcd_client,
    generation_of,
    memory_mb,
    now,
    probe_until,
    put_json,
    put_many,
)
from bench.report import Target, WorkloadResult
from fleetop.etcd.client import Etcd
from fleetop.local.etcdserver import free_port
from fleetop.models import ProxySpec
from fleetop.proxy.backends import collect_backends
from fleetop.proxy.render import RenderPaths, render

CONFD = "confd -watch at 10,000 keys: full render 0.91 s wall, 0.89 s CPU, 33 MB RSS; one key → file 0.91 s"


def service_name(n: int) -> str:
    return f"s{n:05d}"


def registrations(services: int, per: int) -> dict[str, tuple[str, list[tuple[str, bytes]]]]:
    """``service -> (prefix, [(key, value)])`` as the operator's caches hold them."""
    out: dict[str, tuple[str, list[tuple[str, bytes]]]] = {}
    for n in range(services):
        name = service_name(n)
        prefix = f"/services/{name}/"
        pairs = [
            (f"{prefix}{i}", f"10.{(n >> 8) & 255}.{n & 255}.{i + 1}:{8000 + i}".encode()) for i in range(per)
        ]
        out[name] = (prefix, pairs)
    return out


def spec_body(
    services: int, port: int, handler: bool, probe: bool = True, kind: Kind = "nginx"
) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"service": service_name(n), "host": f"{service_name(n)}.bench.test"} for n in range(services)
    ]
    if probe:
        routes.append({"service": "probe", "host": "probe.bench.test"})
    return {
        "kind": kind,
        "listen": f"127.0.0.1:{port}",
        "routes": routes,
        "managed": False,
        "headers": {"handler": handler},
    }


def time_render(services: int, per: int, reps: int) -> tuple[list[float], list[float], int]:
    """(parse ms, render ms, config bytes) of the pure path, ``reps`` times."""
    items = registrations(services, per)
    spec = ProxySpec.model_validate(spec_body(services, 8080, False, probe=False))
    paths = RenderPaths("/var/lib/fleetop/proxies/scale")
    parse_ms, render_ms = [], []
    size = 0
    render("scale", spec, collect_backends(items).valid, paths=paths)  # compile the template once
    for _ in range(reps):
        t0 = time.perf_counter()
        backends = collect_backends(items)
        t1 = time.perf_counter()
        text = render("scale", spec, backends.valid, paths=paths).text
        t2 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1000)
        render_ms.append((t2 - t1) * 1000)
        size = len(text)
    return parse_ms, render_ms, size


async def operator_scale(opts: Options, result: WorkloadResult) -> None:
    services, per = 1000, 10
    reps = opts.count(6, 2)
    adds = opts.count(20, 3)
    procs = Procs(opts.base / "scale")
    procs.base.mkdir(parents=True, exist_ok=True)
    stack = Stack(procs.base, procs)
    try:
        stack.start()
        probe_address = f"127.0.0.3:{free_port()}"
        Backends.start(procs, "backends", [probe_address])
        async with etcd_client(stack.endpoint) as etcd:
            op = await asyncio.to_thread(stack.wait_leader)
            items = [
                (key, value.decode())
                for _, pairs in registrations(services, per).values()
                for key, value in pairs
            ]
            await put_many(etcd, items)
            rig = ProxyRig.start(stack, "scale", "nginx")
            config_key = KEYS.proxy_config(rig.name)
            rss0, _ = memory_mb(op.pid)
            async with (
                KeyLog(etcd, config_key) as configs,
                KeyLog(etcd, KEYS.agent_status(rig.name, "")) as agents,
            ):
                published_ms: list[float] = []
                applied_ms: list[float] = []
                cpu_ms: list[float] = []
                first_ms = 0.0
                for rep in range(reps + 1):
                    gen0 = _generation(configs.items.get(config_key))
                    cpu0 = cpu_seconds(op.pid)
                    t0 = now()
                    await put_json(
                        etcd, KEYS.desired("proxies", rig.name), spec_body(services, rig.port, rep % 2 == 1)
                    )
                    t_pub = await configs.wait_stamp(t0, config_newer(config_key, gen0), 120, "a full render")
                    cpu1 = cpu_seconds(op.pid)
                    gen = generation_of(configs.items.get(config_key))
                    t_app = await agents.wait_stamp(t0, applied_newer(gen, at_least=True), 120, "apply")
                    if rep == 0:
                        first_ms = (t_pub - t0) * 1000  # includes 1,001 registration watches starting
                    else:
                        published_ms.append((t_pub - t0) * 1000)
                        applied_ms.append((t_app - t0) * 1000)
                        cpu_ms.append((cpu1 - cpu0) * 1000)
                    await asyncio.sleep(1.0)
                rss, hwm = memory_mb(op.pid)
                nginx_one = await one_key_added(etcd, rig, configs, probe_address, adds)
                body = decode_published(configs.items.get(config_key))
            rig.stop(stack.procs)
            await etcd.delete(KEYS.desired("proxies", rig.name))
            rig = ProxyRig.start(stack, "scale-haproxy", "haproxy")
            config_key = KEYS.proxy_config(rig.name)
            async with (
                KeyLog(etcd, config_key) as configs,
                KeyLog(etcd, KEYS.agent_status(rig.name, "")) as agents,
            ):
                t0 = now()
                await put_json(
                    etcd,
                    KEYS.desired("proxies", rig.name),
                    spec_body(services, rig.port, False, kind="haproxy"),
                )
                await configs.wait_stamp(t0, config_newer(config_key, 0), 120, "the HAProxy render")
                gen = generation_of(configs.items.get(config_key))
                await agents.wait_stamp(t0, applied_newer(gen, at_least=True), 120, "the HAProxy apply")
                await asyncio.sleep(1.0)
                reloads0 = agent_reloads(agents)
                haproxy_one = await one_key_added(etcd, rig, configs, probe_address, adds)
                await asyncio.sleep(0.5)  # the last change's status
                haproxy_reloads = agent_reloads(agents) - reloads0
        result.value("10,000 keys: first render after the spec appears", "ms", first_ms)
        result.add(
            "10,000 keys: spec change → full render published (operator)",
            "ms",
            published_ms,
            Target.of(("median", "<=", 100.0)),
        )
        result.add("10,000 keys: operator CPU per full render", "ms", cpu_ms)
        result.add("10,000 keys: spec change → nginx serving it (agent applied)", "ms", applied_ms)
        result.value("10,000 keys: operator RSS", "MB", rss, Target.of(("value", "<=", 150.0)))
        for kind, (served, one_published) in (("nginx", nginx_one), ("haproxy", haproxy_one)):
            published_row = f"10,000 keys: {kind}: one key added → config published (operator)"
            result.add(published_row, "ms", one_published)
            result.add(
                f"10,000 keys: {kind}: one key added → request served by it",
                "ms",
                served,
                Target.of(("median", "<=", 50.0)) if kind == "haproxy" else None,
            )
        result.value(
            f"10,000 keys: haproxy: reloads during the {2 * adds} one-key changes",
            "count",
            haproxy_reloads,
            Target.of(("value", "==", 0)),
        )
        result.raw["operator"] = {
            "rssBeforeProxyMB": rss0,
            "rssMB": rss,
            "peakRssMB": hwm,
            "configBytes": len(body.body) if body else 0,
            "publishedMs": published_ms,
            "appliedMs": applied_ms,
            "cpuMs": cpu_ms,
            "servedMs": nginx_one[0],
            "oneKeyPublishedMs": nginx_one[1],
            "haproxyServedMs": haproxy_one[0],
            "haproxyOneKeyPublishedMs": haproxy_one[1],
            "haproxyReloads": haproxy_reloads,
        }
    finally:
        procs.stop_all()
        stack.stop()


async def one_key_added(
    etcd: Etcd, rig: ProxyRig, configs: KeyLog, address: str, adds: int
) -> tuple[list[float], list[float]]:
    """``adds`` times: put the probe service's one key → first response from it through the proxy,
    then delete it → 503 again. (served ms, published ms)."""
    config_key = KEYS.proxy_config(rig.name)
    served_ms: list[float] = []
    published_ms: list[float] = []
    key = "/services/probe/p1"
    for _ in range(adds):
        gen0 = _generation(configs.items.get(config_key))
        t0 = now()
        await etcd.put(key, address)
        end = await probe_until(
            rig.port, lambda s, w: s == 200 and w == address, 20, host_header="probe.bench.test"
        )
        served_ms.append((end - t0) * 1000)
        t_pub = await configs.wait_stamp(t0, config_newer(config_key, gen0), 20, "one key's render")
        published_ms.append((t_pub - t0) * 1000)
        await asyncio.sleep(random.uniform(0.3, 0.5))
        await etcd.delete(key)
        await probe_until(rig.port, lambda s, w: s == 503, 20, host_header="probe.bench.test")
        await asyncio.sleep(random.uniform(0.3, 0.5))
    return served_ms, published_ms


def _generation(raw: bytes | None) -> int:
    config = decode_published(raw)
    return config.generation if config is not None else 0


def _applied(raw: bytes | None) -> int:
    status = decode_agent(raw)
    return status.applied_generation if status is not None and status.error is None else 0


async def run(opts: Options) -> WorkloadResult:
    result = WorkloadResult("scale")
    parse_ms, render_ms, size = await asyncio.to_thread(time_render, 1000, 10, opts.count(7, 2))
    result.add("10,000 keys: parse registrations (pure)", "ms", parse_ms)
    result.add("10,000 keys: render (pure)", "ms", render_ms)
    result.add(
        "10,000 keys: parse + render (pure)",
        "ms",
        [a + b for a, b in zip(parse_ms, render_ms, strict=True)],
        Target.of(("median", "<=", 100.0)),
    )
    result.raw["pure10k"] = {"parseMs": parse_ms, "renderMs": render_ms, "configBytes": size}
    big = opts.count(3, 1)
    parse_big, render_big, size_big = await asyncio.to_thread(time_render, 10000, 10, big)
    result.add(
        "100,000 keys: parse + render (pure)",
        "ms",
        [a + b for a, b in zip(parse_big, render_big, strict=True)],
        Target.of(("median", "<=", 1000.0)),
    )
    result.raw["pure100k"] = {"parseMs": parse_big, "renderMs": render_big, "configBytes": size_big}
    await operator_scale(opts, result)
    result.notes.append(
        "One upstream per service, routed by host; nginx (one key added: nginx, then HAProxy), default "
        "wait. The operator path includes "
        "reading the registrations from its caches, rendering, hashing and the fenced etcd write. "
        f"Reference: {CONFD}."
    )
    return result
