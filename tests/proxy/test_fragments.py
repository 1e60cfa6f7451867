"""The fragment renderer: a change to one service re-renders only its block, and every output equals
a full :func:`render` byte for byte (golden cases, random change sequences, both kinds)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_render import CASES, GOLDEN_RUNTIME, regs

from fleetop.discovery.addresses import Registration
from fleetop.errors import RenderError
from fleetop.models import ProxySpec
from fleetop.proxy.render import FragmentRenderer, RenderPaths, block_names, render

PATHS = RenderPaths(GOLDEN_RUNTIME)
KINDS = ("nginx", "haproxy")


def spec_of(kind: str, body: dict[str, Any]) -> ProxySpec:
    return ProxySpec.model_validate({"kind": kind, **body})


def many(services: int, *, handler: bool = True) -> dict[str, Any]:
    routes = [{"service": f"s{n:03d}", "host": f"s{n:03d}.example.com"} for n in range(services)]
    routes.append({"service": "s000", "path": "/zero"})
    return {"listen": "127.0.0.1:8080", "headers": {"handler": handler}, "routes": routes}


def addresses(n: int, count: int) -> list[Registration]:
    return regs(f"s{n:03d}", *(f"10.0.{n}.{i + 1}:80" for i in range(count)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_cases_equal_the_full_render(kind: str, case: str) -> None:
    body, backends = CASES[case]
    spec = spec_of(kind, body)
    renderer = FragmentRenderer()
    first = renderer.render("edge", spec, backends, paths=PATHS)
    assert first == render("edge", spec, backends, paths=PATHS)
    again = renderer.render("edge", spec, backends, paths=PATHS)
    assert again == first
    assert renderer.last.fragments == () and not renderer.last.skeleton


@pytest.mark.parametrize("kind", KINDS)
def test_one_service_changed_renders_only_its_block(kind: str) -> None:
    spec = spec_of(kind, many(50))
    backends = {f"s{n:03d}": addresses(n, 3) for n in range(50)}
    renderer = FragmentRenderer()
    renderer.render("edge", spec, backends, paths=PATHS)
    assert len(renderer.last.fragments) == 50 and renderer.last.skeleton

    backends["s017"] = addresses(17, 4)
    out = renderer.render("edge", spec, backends, paths=PATHS)
    assert renderer.last.fragments == ("s017",)
    assert renderer.last.reused == 49
    assert not renderer.last.skeleton  # s017 had backends and still has: routing is unchanged
    assert out == render("edge", spec, backends, paths=PATHS)
    assert "10.0.17.4:80" in out.text


@pytest.mark.parametrize("kind", KINDS)
def test_a_service_losing_its_last_backend_renders_the_skeleton_again_for_nginx_only(kind: str) -> None:
    """nginx's skeleton says which services have an upstream and which routes answer 503; HAProxy
    renders every routed backend, empty or not, so there only the service's block changes."""
    spec = spec_of(kind, many(5))
    backends = {f"s{n:03d}": addresses(n, 2) for n in range(5)}
    renderer = FragmentRenderer()
    renderer.render("edge", spec, backends, paths=PATHS)
    backends["s003"] = []
    out = renderer.render("edge", spec, backends, paths=PATHS)
    assert renderer.last.skeleton == (kind == "nginx")
    assert renderer.last.fragments == (() if kind == "nginx" else ("s003",))
    assert out == render("edge", spec, backends, paths=PATHS)
    backends["s003"] = addresses(3, 1)
    out = renderer.render("edge", spec, backends, paths=PATHS)
    assert renderer.last.skeleton == (kind == "nginx") and renderer.last.fragments == ("s003",)
    assert out == render("edge", spec, backends, paths=PATHS)


@pytest.mark.parametrize("kind", KINDS)
def test_a_spec_change_keeps_the_blocks_that_do_not_depend_on_it(kind: str) -> None:
    backends = {f"s{n:03d}": addresses(n, 2) for n in range(20)}
    renderer = FragmentRenderer()
    renderer.render("edge", spec_of(kind, many(20, handler=True)), backends, paths=PATHS)
    spec = spec_of(kind, many(20, handler=False))
    out = renderer.render("edge", spec, backends, paths=PATHS)
    assert renderer.last.skeleton
    # nginx's upstream blocks do not use the handler header; HAProxy's backends do
    assert len(renderer.last.fragments) == (0 if kind == "nginx" else 20)
    assert out == render("edge", spec, backends, paths=PATHS)


@pytest.mark.parametrize("kind", KINDS)
def test_random_changes_always_equal_the_full_render(kind: str) -> None:
    rng = random.Random(13)
    names = [f"s{n:03d}" for n in range(30)]
    specs = [spec_of(kind, many(30, handler=h)) for h in (True, False)]
    spec = specs[0]
    backends: dict[str, list[Registration]] = {name: [] for name in names}
    renderer = FragmentRenderer()
    for step in range(200):
        roll = rng.random()
        name = rng.choice(names)
        if roll < 0.05:
            spec = specs[step % 2]
        elif roll < 0.15:
            backends[name] = []
        else:
            n = names.index(name)
            picked = (f"10.0.{n}.{rng.randint(1, 6)}:80" for _ in range(rng.randint(1, 4)))
            backends[name] = regs(name, *picked)
        out = renderer.render("edge", spec, backends, paths=PATHS)
        assert out == render("edge", spec, backends, paths=PATHS), f"step {step}"


def test_another_proxy_name_or_paths_starts_afresh() -> None:
    spec = spec_of("nginx", many(3))
    backends = {f"s{n:03d}": addresses(n, 1) for n in range(3)}
    renderer = FragmentRenderer()
    renderer.render("edge", spec, backends, paths=PATHS)
    other = RenderPaths("/var/lib/fleetop/proxies/other")
    out = renderer.render("other", spec, backends, paths=other)
    assert out == render("other", spec, backends, paths=other)
    assert renderer.last.skeleton and len(renderer.last.fragments) == 3


def test_custom_templates_render_whole_and_fail_like_render() -> None:
    body = {"listen": 8080, "routes": [{"service": "web"}]}
    backends = {"web": regs("web", "127.0.0.1:8001")}
    spec = spec_of("nginx", {**body, "template": "{% for s in services %}{{ s.upstream }}\n{% endfor %}"})
    renderer = FragmentRenderer()
    assert renderer.render("edge", spec, backends, paths=PATHS) == render("edge", spec, backends, paths=PATHS)
    assert renderer.last.full
    broken = spec_of("nginx", {**body, "template": "{{ nope }}"})
    with pytest.raises(RenderError, match="undefined"):
        renderer.render("edge", broken, backends, paths=PATHS)


@pytest.mark.parametrize("kind", KINDS)
def test_the_builtin_templates_keep_the_block_contract(kind: str) -> None:
    names = block_names(kind)
    assert names is not None, "the built-in template lost its cacheable upstream block"
    assert set(names) <= {"handler_header", "paths", "proxy", "listen", "not_found_backend"}
