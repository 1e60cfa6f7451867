"""The operator's one-key path end to end, without I/O: the per-proxy BackendCollector and
FragmentRenderer redo only what changed, and after any sequence of changes (a key added, removed or
given another address, a service appearing or disappearing, the spec changing) their output is byte
for byte what a full ``collect_backends`` + ``render`` of everything gives."""

from __future__ import annotations

import asyncio
import gc
import random
from collections import deque
from typing import Any, cast

import pytest
from ophelpers import FakeCache

from fleetop.controller.proxies.status import BackendCollector, RegistrationSource
from fleetop.etcd.client import Etcd
from fleetop.models import ProxySpec
from fleetop.prefixes import ARRIVALS_KEPT, PrefixCache, RegistrationCaches
from fleetop.proxy.backends import Destinations, collect_backends, network_rules
from fleetop.proxy.published import decode_published, encode_published
from fleetop.proxy.render import FragmentRenderer, RenderPaths, paused_gc, render, routed_services

PATHS = RenderPaths("/var/lib/fleetop/proxies/edge")
LOOPBACK = network_rules(("127.0.0.0/8",))


def spec_of(kind: str, services: list[str], *, handler: bool) -> ProxySpec:
    routes: list[dict[str, Any]] = [{"service": s, "host": f"{s}.example.com"} for s in services]
    routes.append({"service": services[0], "path": "/first"})
    return ProxySpec.model_validate(
        {"kind": kind, "listen": "127.0.0.1:8080", "headers": {"handler": handler}, "routes": routes}
    )


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_incremental_passes_equal_the_full_render_after_every_change(kind: str) -> None:
    rng = random.Random(3)
    names = [f"s{n:02d}" for n in range(24)]
    caches = {name: FakeCache() for name in names}
    routed = names[:16]
    handler = True
    collector, renderer = BackendCollector(), FragmentRenderer()
    seen = {"add": 0, "remove": 0, "readdress": 0, "appear": 0, "disappear": 0, "spec": 0, "invalid": 0}
    for step in range(300):
        roll, name = rng.random(), rng.choice(routed)
        cache, n = caches[name], names.index(name)
        if roll < 0.35:
            cache.write(f"/services/{name}/{rng.randint(1, 5)}", f"127.0.{n}.{rng.randint(1, 9)}:80".encode())
            seen["add"] += 1
        elif roll < 0.55 and cache.values:
            cache.write(rng.choice(sorted(cache.values)), None)
            seen["remove"] += 1
        elif roll < 0.7 and cache.values:
            key = rng.choice(sorted(cache.values))
            cache.write(key, f"127.0.{n}.{rng.randint(10, 20)}:{rng.randint(80, 82)}".encode())
            seen["readdress"] += 1
        elif roll < 0.78:
            outside = [s for s in names if s not in routed]
            routed = sorted([*routed, rng.choice(outside)]) if outside else routed
            seen["appear"] += 1
        elif roll < 0.86 and len(routed) > 2:
            routed = [s for s in routed if s != rng.choice(routed[1:])]
            seen["disappear"] += 1
        elif roll < 0.93:
            handler = not handler
            seen["spec"] += 1
        else:  # a value that is no address, or one outside the allowed networks
            value = rng.choice([b"not an address", b"10.0.0.1:80"])
            cache.write(f"/services/{name}/bad", value)
            seen["invalid"] += 1
        spec = spec_of(kind, routed, handler=handler)
        services = routed_services(spec)
        sources: dict[str, tuple[str, RegistrationSource | None]] = {
            s: (f"/services/{s}/", caches[s]) for s in services
        }
        where = Destinations({}, {s: LOOPBACK for s in services})
        collector.names(sources)
        found = collector.collect(sources, {}, where)
        items = {s: (f"/services/{s}/", [(kv.key, kv.value) for kv in caches[s].under("")]) for s in services}
        expected = collect_backends(items, {}, where)
        assert {s: list(r) for s, r in found.valid.items()} == expected.valid, f"step {step}"
        assert found.invalid == expected.invalid and found.server_counts() == expected.server_counts()
        out = renderer.render("edge", spec, found.valid, paths=PATHS)
        assert out == render("edge", spec, expected.valid, paths=PATHS), f"step {step}"
    assert all(seen.values()), seen


def test_an_unchanged_service_is_handed_out_as_the_same_tuple_and_rendered_from_the_cache() -> None:
    caches = {name: FakeCache() for name in ("a", "b", "c")}
    for n, cache in enumerate(caches.values()):
        cache.write("/services/x/1", f"127.0.0.{n + 1}:80".encode())
    sources: dict[str, tuple[str, RegistrationSource | None]] = {
        name: ("/services/x/", cache) for name, cache in caches.items()
    }
    spec = spec_of("haproxy", ["a", "b", "c"], handler=False)
    collector, renderer = BackendCollector(), FragmentRenderer()
    collector.names(sources)
    first = collector.collect(sources, {}, Destinations())
    renderer.render("edge", spec, first.valid, paths=PATHS)
    caches["b"].write("/services/x/2", b"127.0.0.9:80")
    collector.names(sources)
    second = collector.collect(sources, {}, Destinations())
    assert second.valid["a"] is first.valid["a"] and second.valid["c"] is first.valid["c"]
    assert second.valid["b"] is not first.valid["b"] and second.server_counts() == {"a": 1, "b": 2, "c": 1}
    out = renderer.render("edge", spec, second.valid, paths=PATHS)
    assert renderer.last.fragments == ("b",)
    assert out == render("edge", spec, second.valid, paths=PATHS)


def test_a_list_changed_in_place_is_rendered_again() -> None:
    """Identity stands for "unchanged" only for tuples: a caller's list may have been changed."""
    spec = spec_of("nginx", ["a", "b"], handler=False)
    cache = FakeCache()
    cache.write("/services/a/1", b"127.0.0.1:80")
    backends = collect_backends({"a": ("/services/a/", [(kv.key, kv.value) for kv in cache.under("")])})
    valid = {"a": list(backends.valid["a"]), "b": []}
    renderer = FragmentRenderer()
    renderer.render("edge", spec, valid, paths=PATHS)
    cache.write("/services/a/2", b"127.0.0.2:80")
    more = collect_backends({"a": ("/services/a/", [(kv.key, kv.value) for kv in cache.under("")])})
    valid["a"][:] = more.valid["a"]  # the same list object, other contents
    out = renderer.render("edge", spec, valid, paths=PATHS)
    assert "127.0.0.2:80" in out.text and out == render("edge", spec, valid, paths=PATHS)


def test_the_collector_pauses_no_collection_for_good() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block leaves it to the outer one
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # disabled by someone else before: left so
    finally:
        gc.enable()


def test_the_render_hash_given_to_the_encoder_is_the_body_hash() -> None:
    spec = spec_of("nginx", ["a", "b"], handler=True)
    rendered = render("edge", spec, {}, paths=PATHS)
    config = rendered.published(spec, 3)
    plain = encode_published(config, compress_above=0)
    given = encode_published(config, compress_above=0, body_sha256=rendered.hash)
    assert b'"format":2' in given and given == plain
    assert decode_published(given).body == rendered.text


def test_a_caches_burst_is_kept_until_a_change_arrives() -> None:
    cache = PrefixCache(cast(Etcd, None), "/services/a/", lambda changed: None)
    assert cache.burst(0.05) is None
    cache.arrivals = deque([10.0, 10.01], maxlen=ARRIVALS_KEPT)  # as the first change makes it
    assert cache.burst(0.05) == (10.01, 10.0)
    assert cache.burst(0.001) == (10.01, 10.01)  # another gap: answered again
    cache.arrivals.append(10.02)
    assert cache.burst(0.05) == (10.02, 10.0)
    cache.arrivals.append(20.0)
    assert cache.burst(0.05) == (20.0, 20.0)
    for n in range(ARRIVALS_KEPT):  # the history full: the same length, a newer last arrival
        cache.arrivals.append(30.0 + n * 0.001)
    assert cache.burst(0.05) == (30.0 + (ARRIVALS_KEPT - 1) * 0.001, float("-inf"))


def test_registration_caches_are_synced_only_while_every_wanted_prefix_is() -> None:
    caches = RegistrationCaches(cast(Etcd, None), lambda prefix, changed: None)
    assert caches.synced  # nothing wanted
    caches.want(["/services/a/", "/services/b/"])
    assert not caches.synced
    for prefix in ("/services/a/", "/services/b/"):
        caches.caches[prefix] = PrefixCache(cast(Etcd, None), prefix, lambda changed: None)
    assert not caches.synced
    caches.caches["/services/a/"].synced.set()
    assert not caches.synced
    caches.caches["/services/b/"].synced.set()
    assert caches.synced and caches.synced
    caches.want(["/services/a/", "/services/b/", "/services/c/"])
    assert not caches.synced  # a new prefix: not until its cache has synced
    caches.caches["/services/c/"] = PrefixCache(cast(Etcd, None), "/services/c/", lambda changed: None)
    caches.caches["/services/c/"].synced.set()
    assert caches.synced

    async def stop_c() -> None:
        caches._tasks["alone", "/services/c/"] = asyncio.create_task(asyncio.sleep(10))
        await caches._stop([("alone", "/services/c/")])

    asyncio.run(stop_c())
    caches.want(["/services/a/", "/services/b/", "/services/c/"])  # the same set: no new object
    assert not caches.synced  # its cache was stopped


def test_collect_reads_the_caches_again_unless_names_just_read_them() -> None:
    cache = FakeCache()
    cache.write("/services/a/1", b"127.0.0.1:80")
    sources: dict[str, tuple[str, RegistrationSource | None]] = {"a": ("/services/a/", cache)}
    collector = BackendCollector()
    collector.names(sources)
    assert [r.address for r in collector.collect(sources, {}, Destinations()).valid["a"]] == ["127.0.0.1:80"]
    cache.write("/services/a/2", b"127.0.0.2:80")  # the same mapping, a cache that moved since
    found = collector.collect(sources, {}, Destinations())
    assert [r.address for r in found.valid["a"]] == ["127.0.0.1:80", "127.0.0.2:80"]
