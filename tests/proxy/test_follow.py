"""The agent following registrations itself (``fleetop.proxy.follow``): the config it makes ahead of
the operator is byte for byte the one the operator renders from the same registrations, it never
goes behind a published config, and it leaves to the operator what only the operator can judge.
Then the agent against a REAL etcd and a REAL HAProxy: a registration reaches HAProxy at runtime
with no config published for it, and the operator's config arriving later changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import ProxySite, agent_running, handlers_seen, http_backends
from fleetop.controller.proxies.status import follow_rules, published_hash
from fleetop.discovery.addresses import Registration
from fleetop.etcd.client import Etcd
from fleetop.etcd.model import KeyValue
from fleetop.keys import Keys
from fleetop.models import AgentStatus, ProxySpec, PublishedConfig
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.backends import Destinations, collect_backends, network_rules
from fleetop.proxy.follow import Follower, followable, own_registrations
from fleetop.proxy.haproxy_servers import parse_config
from fleetop.proxy.render import RenderPaths, block_values, render
from waiting import eventually

PROXY = "edge"
MACHINE = "m1"
SERVICE = "web"
PREFIX = f"/services/{SERVICE}/"
PATHS = RenderPaths("/var/lib/fleetop/proxies/edge")
API_KEY, API = "/services/api/a", "127.0.0.9:80"
PRIVATE = ("10.0.0.0/8", "127.0.0.0/8")


def spec_of(listen: str = "127.0.0.1:8080", **extra: object) -> ProxySpec:
    return ProxySpec.model_validate(
        {
            "kind": "haproxy",
            "listen": listen,
            "headers": {"handler": True},
            "routes": [{"service": SERVICE}, {"service": "api", "path": "/api"}],
            "allowedNetworks": list(PRIVATE),
            **extra,
        }
    )


def published(
    spec: ProxySpec,
    pairs: Sequence[tuple[str, str]],
    revision: int,
    launched: frozenset[str] | None = None,
    paths: RenderPaths = PATHS,
) -> PublishedConfig:
    """What the operator publishes for these registrations of ``web`` (``api`` has one backend)."""
    items = {
        SERVICE: (PREFIX, [(k, v.encode()) for k, v in pairs]),
        "api": ("/services/api/", [(API_KEY, API.encode())]),
    }
    known = {SERVICE: launched} if launched is not None else {}
    allowed = {s: network_rules(tuple(spec.allowed_networks)) for s in items}
    backends = collect_backends(items, known, Destinations(None, allowed))
    text = render(PROXY, spec, backends.valid, paths=paths)
    networks = {s: (tuple(spec.allowed_networks),) for s in items}
    rules = follow_rules(
        spec, items, {SERVICE: revision, "api": 1}, known, networks, block_values(PROXY, spec, paths)
    )
    digest = published_hash(text.hash, spec, rules)
    return PublishedConfig(hash=digest, generation=1, kind="haproxy", body=text.text, follow=rules)


class View:
    """A prefix cache as the agent holds it: these keys, every change up to ``revision``."""

    def __init__(self, pairs: Sequence[tuple[str, str]], revision: int) -> None:
        self.revision = revision
        self.items = [KeyValue(k, v.encode(), 1, revision, 1, 0) for k, v in pairs]

    def under(self, prefix: str) -> list[KeyValue]:
        return [kv for kv in sorted(self.items, key=lambda kv: kv.key) if kv.key.startswith(prefix)]


def views(web: View) -> dict[str, View]:
    return {PREFIX: web}


HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.0.9", "192.0.2.7", "fd00::1"]
VALUES = st.one_of(
    st.builds(
        lambda h, p: f"[{h}]:{p}" if ":" in h else f"{h}:{p}",
        st.sampled_from(HOSTS),
        st.sampled_from([80, 8001]),
    ),
    st.sampled_from(["not an address", "10.0.0.1:99999", '{"host": "10.0.0.2", "port": 8002}']),
)
REGISTRATIONS = st.dictionaries(
    st.sampled_from([f"{PREFIX}i{n}" for n in range(6)] + [f"{PREFIX}deep/x"]), VALUES, max_size=6
)


@settings(max_examples=150, deadline=None)
@given(
    before=REGISTRATIONS,
    after=REGISTRATIONS,
    launched=st.none() | st.frozensets(st.sampled_from(["i0", "i1", "i2", "i3"])),
)
def test_the_config_made_ahead_is_the_operators_byte_for_byte(
    before: dict[str, str], after: dict[str, str], launched: frozenset[str] | None
) -> None:
    """Whatever the registrations were and became (invalid values, addresses outside the allowed
    networks, instances not launched, duplicates), the followed config is the one the operator
    renders from the new registrations under the same rules."""
    spec = spec_of()
    old = published(spec, sorted(before.items()), 10, launched)
    new = published(spec, sorted(after.items()), 11, launched)
    followed = Follower().effective(old, views(View(sorted(after.items()), 11)).get)
    assert followed.body == new.body
    assert followed.ahead == ((SERVICE,) if new.body != old.body else ())
    if followed.ahead:  # the servers changed at once are exactly the ones the file will name
        assert dict(followed.servers["svc_web"]) == parse_config(new.body).servers()["svc_web"]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(REGISTRATIONS, REGISTRATIONS, st.booleans()), min_size=2, max_size=6))
def test_what_a_follower_remembers_never_changes_its_answer(
    steps: list[tuple[dict[str, str], dict[str, str], bool]],
) -> None:
    """One follower through a run of published configs and views answers as a fresh one would."""
    spec, follower, revision = spec_of(), Follower(), 10
    cfg = published(spec, [], revision)
    for before, after, republish in steps:
        revision += 1
        if republish:
            cfg = published(spec, sorted(before.items()), revision)
            revision += 1
        seen = views(View(sorted(after.items()), revision)).get
        assert follower.effective(cfg, seen) == Follower().effective(cfg, seen)
        assert follower.effective(cfg, seen) == Follower().effective(cfg, seen)  # remembered now


def test_a_view_no_newer_than_the_published_config_keeps_its_servers() -> None:
    spec = spec_of()
    cfg = published(spec, [(f"{PREFIX}a", "10.0.0.1:80")], 10)
    newer = [(f"{PREFIX}a", "10.0.0.1:80"), (f"{PREFIX}b", "10.0.0.2:80")]
    follower = Follower()
    assert follower.effective(cfg, views(View(newer, 10)).get).body is cfg.body  # seen as far: same view
    assert follower.effective(cfg, views(View([], 9)).get).body is cfg.body  # behind: the published is newer
    assert follower.effective(cfg, {}.get).body is cfg.body  # not watched (yet, or not allowed)
    ahead = follower.effective(cfg, views(View(newer, 12)).get)
    assert ahead.ahead == (SERVICE,) and "server 10.0.0.2:80 10.0.0.2:80" in ahead.body


def test_a_dns_name_is_left_to_the_operator_and_holds_what_was_followed() -> None:
    spec = spec_of()
    cfg = published(spec, [(f"{PREFIX}a", "10.0.0.1:80")], 10)
    follower = Follower()
    two = [(f"{PREFIX}a", "10.0.0.1:80"), (f"{PREFIX}b", "10.0.0.2:80")]
    ahead = follower.effective(cfg, views(View(two, 11)).get)
    assert ahead.ahead == (SERVICE,)
    named = [*two, (f"{PREFIX}c", "web-3.internal:80")]
    held = follower.effective(cfg, views(View(named, 12)).get)
    assert held.body == ahead.body  # not back to the published servers, not guessing the name
    assert own_registrations(cfg.follow[1], View(named, 12).under(PREFIX)) is None
    assert Follower().effective(cfg, views(View(named, 12)).get).body is cfg.body


def test_only_runtime_haproxy_configs_of_the_builtin_template_are_followed() -> None:
    pairs = [(f"{PREFIX}a", "10.0.0.1:80")]
    assert followable(published(spec_of(), pairs, 3))
    assert not published(spec_of(reloadCmd=["/bin/true"]), pairs, 3).follow
    template = "global\n{% for s in services %}backend {{ s.upstream }}\n{% endfor %}"
    assert not published(spec_of(template=template), pairs, 3).follow
    nginx = ProxySpec.model_validate(
        {"kind": "nginx", "listen": "127.0.0.1:8080", "routes": [{"service": SERVICE}]}
    )
    assert not follow_rules(nginx, {SERVICE: (PREFIX, None)}, {}, {}, {}, block_values(PROXY, nginx, PATHS))


def test_the_rules_are_part_of_the_hash_and_the_revision_is_not() -> None:
    spec = spec_of()
    pairs = [(f"{PREFIX}i0", "10.0.0.1:80")]
    base = published(spec, pairs, 3, frozenset({"i0"}))
    assert published(spec, pairs, 4, frozenset({"i0"})).hash == base.hash
    assert published(spec, pairs, 3, frozenset({"i0", "i1"})).hash != base.hash
    assert published(spec, pairs, 3, frozenset({"i0", "i1"})).body == base.body


def test_a_block_that_is_not_what_its_servers_render_to_is_not_touched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = spec_of()
    cfg = published(spec, [(f"{PREFIX}a", "10.0.0.1:80")], 10)
    edited = cfg.model_copy(
        update={"body": cfg.body.replace("    server 10.0.0.1:80", "    server  10.0.0.1:80")}
    )
    newer = View([(f"{PREFIX}a", "10.0.0.1:80"), (f"{PREFIX}b", "10.0.0.2:80")], 11)
    with caplog.at_level(logging.WARNING):
        assert Follower().effective(edited, views(newer).get).body is edited.body
    assert "not the one its servers render to" in caplog.text


# -- the agent, a real etcd, a real HAProxy ------------------------------------------------------------


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[list[Registration]]:
    with http_backends(("127.0.0.4", "127.0.0.5", "127.0.0.6"), tmp_path) as regs:
        yield regs


@pytest.fixture
def site(tmp_path: Path) -> Iterator[ProxySite]:
    with ProxySite(tmp_path, "haproxy", PROXY) as running:
        yield running


async def status_of(etcd: Etcd) -> AgentStatus | None:
    kv = await etcd.get(Keys().agent_status(PROXY, MACHINE))
    return None if kv is None else AgentStatus.model_validate_json(kv.value)


async def reported(etcd: Etcd, what: str, check: object) -> AgentStatus:
    async def done() -> AgentStatus | None:
        status = await status_of(etcd)
        return status if status is not None and check(status) else None  # type: ignore[operator]

    found: AgentStatus = await eventually(done, 30, what)
    return found


@pytest.fixture
async def agent(etcd: Etcd, site: ProxySite) -> AsyncIterator[ProxyAgent]:
    async with agent_running(etcd, settings_for(site)) as running:
        yield running


def settings_for(site: ProxySite, *, follow: bool = True) -> AgentSettings:
    """The agent of ``site``: its file and directory, quick retries."""
    return AgentSettings(
        proxy=PROXY,
        machine=MACHINE,
        runtime_dir=site.target.parent,
        config_path=site.target,
        retry_min=0.05,
        follow=follow,
    )


def servers_in(path: Path) -> set[str]:
    found = parse_config(path.read_text()).servers().get(f"svc_{SERVICE}", {})
    return {s.address for s in found.values()}


async def test_a_registration_reaches_haproxy_before_any_config_is_published_for_it(
    etcd: Etcd, site: ProxySite, pool: list[Registration], agent: ProxyAgent
) -> None:
    a, b, c = pool
    spec = spec_of(f"127.0.0.1:{site.port}")
    await etcd.put(API_KEY, API)
    revision = await etcd.put(f"{PREFIX}a", a.address)
    first = published(spec, [(f"{PREFIX}a", a.address)], revision, paths=site.paths)
    await etcd.put(Keys().proxy_config(PROXY), first.model_dump_json(by_alias=True))
    status = await reported(etcd, "the first config applied", lambda s: s.applied_hash == first.hash)
    assert await handlers_seen(site.port, {a.address}) == {a.address}
    reloads = status.reloads

    await etcd.put(f"{PREFIX}b", b.address)  # no operator: nothing publishes this
    status = await reported(etcd, "b followed", lambda s: s.servers_ahead == [SERVICE])
    assert status.applied_hash == first.hash and status.applied_via == "runtime"
    assert status.followed_applies == 1 and status.reloads == reloads
    assert await handlers_seen(site.port, {a.address, b.address}) == {a.address, b.address}
    assert servers_in(site.target) == {a.address, b.address}  # a restart gives the same servers

    # the operator's config for both arrives: the very text HAProxy runs, so only reported
    installed = site.target.stat()
    current = await etcd.get(f"{PREFIX}b")
    assert current is not None
    both = published(
        spec, [(f"{PREFIX}a", a.address), (f"{PREFIX}b", b.address)], current.mod_revision, paths=site.paths
    )
    assert both.body == site.target.read_text()
    await etcd.put(
        Keys().proxy_config(PROXY), both.model_copy(update={"generation": 2}).model_dump_json(by_alias=True)
    )
    status = await reported(etcd, "caught up", lambda s: s.applied_hash == both.hash and not s.servers_ahead)
    assert status.runtime_applies == 1 and status.reloads == reloads
    assert (site.target.stat().st_ino, site.target.stat().st_mtime_ns) == (
        installed.st_ino,
        installed.st_mtime_ns,
    )

    # a leaves, c comes: followed again, at runtime
    await etcd.delete(f"{PREFIX}a")
    await etcd.put(f"{PREFIX}c", c.address)
    await reported(
        etcd, "a gone, c followed", lambda s: s.servers_ahead == [SERVICE] and s.followed_applies >= 2
    )
    await eventually(lambda: servers_in(site.target) == {b.address, c.address}, 30, "the file follows")
    assert await handlers_seen(site.port, {b.address, c.address}) == {b.address, c.address}
    status = await reported(etcd, "no reload", lambda s: s.error is None)
    assert status.reloads == reloads and status.runtime_fallbacks == 0

    # a name: only the operator resolves it, so the servers stay where they were followed
    before = site.target.read_text()
    await etcd.put(f"{PREFIX}named", "web-9.internal:80")
    await asyncio.sleep(0.5)
    assert site.target.read_text() == before
    assert await handlers_seen(site.port, {b.address, c.address}) == {b.address, c.address}


async def test_an_agent_not_following_applies_only_published_configs(
    etcd: Etcd, site: ProxySite, pool: list[Registration]
) -> None:
    a, b, _ = pool
    async with agent_running(etcd, settings_for(site, follow=False)):
        await etcd.put(API_KEY, API)
        revision = await etcd.put(f"{PREFIX}a", a.address)
        first = published(
            spec_of(f"127.0.0.1:{site.port}"), [(f"{PREFIX}a", a.address)], revision, paths=site.paths
        )
        await etcd.put(Keys().proxy_config(PROXY), first.model_dump_json(by_alias=True))
        await reported(etcd, "applied", lambda s: s.applied_hash == first.hash)
        await etcd.put(f"{PREFIX}b", b.address)
        await asyncio.sleep(0.5)
        assert servers_in(site.target) == {a.address}
        status = await status_of(etcd)
        assert status is not None and status.followed_applies == 0 and not status.servers_ahead


def test_the_operator_builds_again_only_the_rules_whose_inputs_changed() -> None:
    spec = spec_of()
    sources = {SERVICE: (PREFIX, None), "api": ("/services/api/", None)}
    networks = {s: (PRIVATE,) for s in sources}
    block = block_values(PROXY, spec, PATHS)
    memo: dict[str, Any] = {}
    first = follow_rules(spec, sources, {SERVICE: 5, "api": 3}, {}, networks, block, memo)
    again = follow_rules(spec, sources, {SERVICE: 6, "api": 3}, {}, networks, block, memo)
    assert again[0] is first[0] and again[0].service == "api"  # sorted: api, web
    assert again[1] is not first[1] and again[1].revision == 6
    launched = follow_rules(
        spec, sources, {SERVICE: 6, "api": 3}, {SERVICE: frozenset({"i1"})}, networks, block, memo
    )
    assert launched[1].launched == ["i1"] and launched[0] is first[0]
    assert follow_rules(spec, sources, {SERVICE: 6, "api": 3}, {}, networks, block, {}) == again


def test_a_rule_the_agent_cannot_use_keeps_the_published_servers(caplog: pytest.LogCaptureFixture) -> None:
    """A network that is not a CIDR (only a broken writer of the published document could put it
    there) is reported once and leaves that backend to the operator; the agent goes on."""
    cfg = published(spec_of(), [(f"{PREFIX}a", "10.0.0.1:80")], 10)
    broken = [r.model_copy(update={"networks": [["not-a-network"]]}) for r in cfg.follow]
    bad = cfg.model_copy(update={"follow": broken, "hash": "b" * 64})
    newer = views(View([(f"{PREFIX}a", "10.0.0.1:80"), (f"{PREFIX}b", "10.0.0.2:80")], 11))
    follower = Follower()
    with caplog.at_level(logging.WARNING):
        assert follower.effective(bad, newer.get).body is bad.body
        assert follower.effective(bad, newer.get).body is bad.body
    said = [r for r in caplog.records if "its rule cannot be used" in r.getMessage()]
    assert len(said) == 1 and "service web is not followed" in said[0].getMessage()
    assert follower.effective(cfg, newer.get).ahead == (SERVICE,)  # a usable config is followed again
