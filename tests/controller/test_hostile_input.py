"""Hostile input written straight into etcd while a real operator runs: nothing stops it.

Real etcd, ``fleetop node --machines 3`` and ``fleetop run`` as processes (one of each for the module).
Each test writes what an ``etcdctl put`` could write (documents nested 1,000 deep, duplicate keys, names
no unit may carry, arbitrary bytes, hypothesis-generated documents and key names) and asserts that the
operator is still running, that every bad key is reported on a status key of its own (``Invalid``) or
by an event, that nothing was run for it, and that a good service beside them converges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from ophelpers import Node, Operator, running, running_mains, spec

from backends import agent_running, handlers_seen, http_backends
from fleetop.config import EtcdSettings
from fleetop.controller.runtime.contain import FailureReporter
from fleetop.controller.runtime.contract import Dispatcher
from fleetop.controller.runtime.executor import Executor
from fleetop.errors import SpecInvalid
from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys, is_name
from fleetop.local.etcdserver import EtcdServer, free_port
from fleetop.models import Condition, ProxyStatus, ServiceStatus
from fleetop.prefixes import PrefixCache, follow
from fleetop.proxy.agent import AgentSettings
from fleetop.proxy.apply import initial_config, start_proxy
from fleetop.proxy.policy import AgentPolicy
from fleetop.proxy.render import RenderPaths
from fleetop.store import Kind, parse_stored
from waiting import eventually

PREFIX = f"/t/hostile-{os.getpid()}"
KEYS = Keys()
CONVERGE = 40.0
PROXY_BODY = {"kind": "nginx", "listen": "127.0.0.1:18080", "managed": False}

BAD_SERVICE_NAMES = [
    "UPPER",
    "under_score",
    "dot.ted",
    "-lead",
    "trail-",
    "x.service",
    "x@y",
    "with:colon",
    "x" * 64,
    ".",
    "..",
    "with space",
    "semi;colon",
    "tab\there",
    'quo"te',
    "single'quote",
    "back\\slash",
    "nön-ascii",
    "%40",
    "y" * 300,
    "../x",
    "new\nline",
    "nul\x00byte",
    "bad-\udcff-utf8",  # the byte 0xff in the key (keys are decoded with surrogateescape)
]
BAD_PROXY_NAMES = ["Edge_X", "dot.proxy", "../edge"]


@pytest.fixture(scope="module")
def proxy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxies")


@pytest.fixture(scope="module")
def operator(
    node: Node, etcd_server: EtcdServer, proxy_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    base = tmp_path_factory.mktemp("operator")
    root = ("--proxy-root", str(proxy_root))
    child = Operator(base, "hostile", etcd_server.endpoint, PREFIX, node.endpoint, extra_args=root)
    with running(child) as proc:
        yield proc


def _status_model(kind: Kind) -> type[ServiceStatus] | type[ProxyStatus]:
    return ServiceStatus if kind == "services" else ProxyStatus


async def status_of(etcd: Etcd, kind: Kind, name: str) -> ServiceStatus | ProxyStatus | None:
    kv = await etcd.get(KEYS.status(kind, name))
    return None if kv is None else _status_model(kind).model_validate_json(kv.value)


async def invalid_status(
    etcd: Etcd, operator: Operator, kind: Kind, name: str, timeout: float = CONVERGE
) -> ServiceStatus | ProxyStatus:
    async def check() -> ServiceStatus | ProxyStatus | None:
        assert operator.running, f"the operator exited:\n{operator.log_tail()}"
        status = await status_of(etcd, kind, name)
        condition = status.condition("Invalid") if status is not None else None
        return status if condition is not None and condition.status == "True" else None

    try:
        return await eventually(check, timeout, f"{kind}/{name!r} reported Invalid")
    except AssertionError:
        print(operator.log_tail())
        raise


async def converged(etcd: Etcd, fleet: FleetClient, operator: Operator, name: str, replicas: int) -> None:
    async def check() -> bool:
        assert operator.running, f"the operator exited:\n{operator.log_tail()}"
        status = await status_of(etcd, "services", name)
        available = status.condition("Available") if status is not None else None
        running = await running_mains(fleet, name)
        return available is not None and available.status == "True" and len(running) == replicas

    try:
        await eventually(check, CONVERGE, f"{name} to run {replicas} available instances")
    except AssertionError:
        print(operator.log_tail())
        raise


async def test_deeply_nested_value_is_invalid_and_the_neighbour_converges(
    etcd: Etcd, fleet: FleetClient, operator: Operator
) -> None:
    await etcd.put(KEYS.desired("services", "neighbour"), spec(1))
    await etcd.put(KEYS.desired("services", "deep"), ("[" * 1000 + "]" * 1000).encode())
    status = await invalid_status(etcd, operator, "services", "deep")
    assert "nested deeper than 16 levels" in (status.last_error or "")
    await converged(etcd, fleet, operator, "neighbour", 1)
    # and a change of the neighbour is still applied after it
    await etcd.put(KEYS.desired("services", "neighbour"), spec(2))
    await converged(etcd, fleet, operator, "neighbour", 2)
    assert operator.running
    events, _ = await etcd.list(KEYS.events("services", "deep"))
    assert any(b"SpecInvalid" in kv.value and b"Warning" in kv.value for kv in events)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("services", n) for n in BAD_SERVICE_NAMES] + [("proxies", n) for n in BAD_PROXY_NAMES],
    ids=lambda v: json.dumps(v)[:40],
)
async def test_bad_name_in_the_key_is_invalid_and_runs_nothing(
    etcd: Etcd, fleet: FleetClient, operator: Operator, kind: Kind, name: str
) -> None:
    if await etcd.get(KEYS.desired("services", "names-neighbour")) is None:
        await etcd.put(KEYS.desired("services", "names-neighbour"), spec(1))
    body = spec(1) if kind == "services" else json.dumps(PROXY_BODY).encode()
    await etcd.put(KEYS.desired(kind, name), body)
    status = await invalid_status(etcd, operator, kind, name)
    await converged(etcd, fleet, operator, "names-neighbour", 1)
    assert "must be 1-63 lowercase letters" in (status.last_error or "")
    # the report lands on one key directly under the status prefix, whatever the name
    statuses, _ = await etcd.list(KEYS.status(kind))
    base = KEYS.status(kind)
    reported = [kv.key[len(base) :] for kv in statuses if kv.key == KEYS.status(kind, name)]
    assert len(reported) == 1 and "/" not in reported[0] and reported[0].isprintable()
    assert reported[0] == name or not is_name(reported[0])
    assert not [u.name for u in await fleet.list_units() if u.name.startswith(name[:20] + "@")]
    if kind == "proxies":
        assert await etcd.get(KEYS.proxy_config(name)) is None
    await etcd.delete(KEYS.desired(kind, name))
    await eventually(
        lambda: status_gone(etcd, kind, name), CONVERGE, f"the status of {name!r} to be deleted with its key"
    )


async def status_gone(etcd: Etcd, kind: Kind, name: str) -> bool:
    return await etcd.get(KEYS.status(kind, name)) is None


async def test_duplicate_keys_are_refused_with_their_path(etcd: Etcd, operator: Operator) -> None:
    body = b'{"replicas": 1, "unit": {"execStart": "/bin/sleep 1"}, "replicas": 5}'
    await etcd.put(KEYS.desired("services", "twice"), body)
    status = await invalid_status(etcd, operator, "services", "twice")
    assert "$.replicas: duplicate key" in (status.last_error or "")


async def test_a_service_and_a_proxy_cannot_share_a_name(
    etcd: Etcd, fleet: FleetClient, operator: Operator
) -> None:
    await etcd.put(KEYS.desired("services", "twin"), spec(1))
    await converged(etcd, fleet, operator, "twin", 1)
    await etcd.put(KEYS.desired("proxies", "twin"), json.dumps(PROXY_BODY).encode())
    status = await invalid_status(etcd, operator, "proxies", "twin")
    assert "taken by service 'twin'" in (status.last_error or "")
    invalid = status.condition("Invalid")
    assert invalid is not None and invalid.reason == "NameTaken"
    assert await etcd.get(KEYS.proxy_config("twin")) is None
    await converged(etcd, fleet, operator, "twin", 1)  # the service is untouched
    # once the service is gone, the proxy is valid and published
    await etcd.delete(KEYS.desired("services", "twin"))
    await eventually(lambda: etcd.get(KEYS.proxy_config("twin")), CONVERGE, "the proxy twin to be published")
    await etcd.delete(KEYS.desired("proxies", "twin"))


# -- fuzzing -------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["replicas", "unit", "ports", "placement", "discovery", "rollout", "paused", "listen", "routes"]


@st.composite
def spec_mutations(draw: st.DrawFn) -> bytes:
    """A valid service spec with one field (or a field of ``unit``) replaced by something else."""
    body: dict[str, Any] = {"replicas": 0, "unit": {"execStart": "/bin/sleep 1"}}
    if draw(st.booleans()):
        body["unit"][draw(st.sampled_from(["execStart", "environment", "options", "restartSec", "x"]))] = (
            draw(JSON_VALUES)
        )
    else:
        body[draw(st.sampled_from(FIELDS))] = draw(JSON_VALUES)
    return json.dumps(body).encode()


VALUES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    spec_mutations(),
)
NAMES = st.one_of(st.text(min_size=1, max_size=70), st.from_regex(r"\Afz-[a-z0-9]{1,12}\Z"))


def generated(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same on every run (derandomized, no database)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


HAND_PICKED: list[tuple[Kind, str, bytes]] = [
    ("services", "fz-deep-object", ('{"a":' * 5000 + "1" + "}" * 5000).encode()),
    ("services", "fz-huge-int", b'{"replicas": 1' + b"0" * 5000 + b', "unit": {"execStart": "x"}}'),
    ("services", "fz-nan", b'{"replicas": NaN, "unit": {"execStart": "x"}}'),
    ("services", "fz-not-utf8", b'{"unit": {"execStart": "\xff\xfe"}}'),
    (
        "services",
        "fz-env",
        json.dumps(
            {"unit": {"execStart": "x", "environment": {f"K{i}": "v" for i in range(20000)}}}
        ).encode(),
    ),
    ("services", "fz-interval", b'{"unit": {"execStart": "x"}, "discovery": {"check": {"interval": "1ms"}}}'),
    (
        "services",
        "fz-prefix",
        b'{"unit": {"execStart": "x"}, "discovery": {"prefix": "/fleetop/proxies/edge"}}',
    ),
    (
        "services",
        "fz-min-ready",
        b'{"unit": {"execStart": "x"}, "rollout": {"minReadySeconds": 1000000000000}}',
    ),
    ("services", "fz-surge", b'{"unit": {"execStart": "x"}, "rollout": {"maxSurge": 1000000000}}'),
    ("services", "fz-empty", b""),
    ("services", "fz-null", b"null"),
    ("proxies", "fz-template", json.dumps({**PROXY_BODY, "template": "x" * (1024 * 1024)}).encode()),
    ("proxies", "fz-listen-name", json.dumps({**PROXY_BODY, "listen": "evil.com:80"}).encode()),
    ("proxies", "fz-listen-etcd", json.dumps({**PROXY_BODY, "listen": "127.0.0.1:2379"}).encode()),
    (
        "proxies",
        "fz-path",
        json.dumps({**PROXY_BODY, "routes": [{"service": "a", "path": "/" + "p" * 100_000}]}).encode(),
    ),
]


def hostile_keys() -> list[tuple[Kind, str, bytes]]:
    """Hand-picked cases, then generated key names and values; only those the spec parser refuses
    (a generated document can be valid by chance: it is left out, it would run)."""
    chosen: dict[tuple[Kind, str], bytes] = {(k, n): v for k, n, v in HAND_PICKED}
    for index, (drawn, value, is_proxy) in enumerate(generated(st.tuples(NAMES, VALUES, st.booleans()), 150)):
        kind: Kind = "proxies" if is_proxy else "services"
        name = f"{drawn}-{index}" if is_name(drawn) else drawn
        try:
            parse_stored(kind, name, value, where="fuzz")
        except SpecInvalid:
            chosen.setdefault((kind, name), value)
    return [(kind, name, value) for (kind, name), value in chosen.items()]


REGISTRATIONS = st.one_of(st.binary(max_size=100), JSON_VALUES.map(lambda v: json.dumps(v).encode()))


@contextlib.asynccontextmanager
async def serving(etcd: Etcd, proxy_root: Path, directory: Path, port: int) -> AsyncIterator[None]:
    """nginx on ``port``, and the proxy agent's loop applying what the operator publishes for
    ``fz-edge`` (runtime paths where the operator renders them: its ``--proxy-root``)."""
    paths = RenderPaths(str(proxy_root / "fz-edge"))
    target = directory / "nginx.conf"
    target.write_text(initial_config("fz-edge", "nginx", f"127.0.0.1:{port}", paths))
    process = start_proxy("nginx", target, paths, listen=("127.0.0.1", port))
    settings = AgentSettings(
        proxy="fz-edge",
        machine="fuzz",
        runtime_dir=directory,
        config_path=target,
        retry_min=0.05,
        policy=AgentPolicy().with_dirs([proxy_root / "fz-edge"]),  # where the operator renders its pid file
    )
    try:
        async with agent_running(etcd, settings):
            yield
    finally:
        process.stop()


async def test_fuzzed_keys_are_each_reported_while_a_good_service_converges(
    etcd: Etcd, fleet: FleetClient, operator: Operator, proxy_root: Path, tmp_path: Path
) -> None:
    bad = hostile_keys()
    assert len(bad) > 40
    for kind, name, value in bad:
        await etcd.put(KEYS.desired(kind, name), value)
    port = free_port("127.0.0.1")
    edge = {**PROXY_BODY, "listen": f"127.0.0.1:{port}", "routes": [{"service": "fz-web"}]}
    await etcd.put(
        KEYS.desired("proxies", "fz-edge"), json.dumps({**edge, "headers": {"handler": True}}).encode()
    )
    # hostile registrations beside good ones, behind a proxy that must keep following them
    for index, value in enumerate(generated(REGISTRATIONS, 60)):
        await etcd.put(f"/services/fz-web/bad-{index}", value)
    with http_backends(("127.0.0.4", "127.0.0.5"), tmp_path) as (first, second):
        await etcd.put("/services/fz-web/good", first.address.encode())
        await etcd.put(KEYS.desired("services", "fz-good"), spec(2))
        async with serving(etcd, proxy_root, tmp_path, port):
            await converged(etcd, fleet, operator, "fz-good", 2)
            assert first.address in await handlers_seen(port, {first.address}), operator.log_tail()
            await check_reported(etcd, fleet, operator, bad)
            # the operator keeps reconciling: a scale and a new backend are applied after all of that
            await etcd.put(KEYS.desired("services", "fz-good"), spec(1))
            await etcd.put("/services/fz-web/second", second.address.encode())
            await converged(etcd, fleet, operator, "fz-good", 1)
            want = {first.address, second.address}
            assert await handlers_seen(port, want) == want, operator.log_tail()
    assert operator.running
    for kind, name, _ in bad:
        await etcd.delete(KEYS.desired(kind, name))
    await etcd.delete(KEYS.desired("proxies", "fz-edge"))
    await etcd.delete_prefix("/services/fz-web/")


async def check_reported(
    etcd: Etcd, fleet: FleetClient, operator: Operator, bad: list[tuple[Kind, str, bytes]]
) -> None:
    """Every bad key Invalid on its own status key, and no unit written for any of them."""
    for kind, name, _ in bad:
        await invalid_status(etcd, operator, kind, name)
    names = {n for _, n, _ in bad}
    leaked = [u.name for u in await fleet.list_units() if u.name.partition("@")[0] in names]
    assert not leaked, f"units written for invalid keys: {leaked}"


async def test_a_change_handler_that_fails_never_stops_the_watch(etcd_server: EtcdServer) -> None:
    """The informers' own loop: a handler raising (a bug reached by one key) loses that report only."""
    prefix = f"/t/handler-{os.getpid()}"
    seen: list[set[str]] = []

    def handler(changed: set[str]) -> None:
        if any(key.endswith("/boom") for key in changed):
            raise RecursionError("maximum recursion depth exceeded")
        seen.append(changed)

    async with await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=prefix)) as client:
        cache = PrefixCache(client, "/desired/services/", handler)
        task = asyncio.create_task(follow(cache))
        try:
            await eventually(cache.synced.is_set, 10.0, "the cache to sync")
            await client.put("/desired/services/boom", b"{}")
            await client.put("/desired/services/after", b"{}")
            await eventually(
                lambda: {"/desired/services/after"} in seen, 10.0, "the change after the failure"
            )
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_failed_pass_is_reported_on_its_own_key(etcd_server: EtcdServer) -> None:
    """What the dispatcher does with an unexpected exception: Degraded on that key's status (the rest
    of the status kept) and one Warning event, both fenced on the leader key."""
    prefix = f"/t/reporter-{os.getpid()}"
    async with (
        await Etcd.connect(EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=prefix)) as client,
        FleetClient("unix:///nonexistent/fleet.sock") as fleet,
    ):
        await client.put(KEYS.leader(), b"me")
        executor = Executor(fleet, client, KEYS, lambda: (KEYS.leader(), b"me"))
        before = ServiceStatus(observed_generation=7, conditions=[Condition(type="Available", status="True")])
        await client.put(KEYS.status("services", "buggy"), before.model_dump_json(by_alias=True).encode())
        reconciler = Dispatcher({"services": Failing()}, report=FailureReporter(executor).report)
        for _ in range(2):
            with pytest.raises(MemoryError):
                await reconciler.reconcile("services/buggy")
        status = await status_of(client, "services", "buggy")
        assert status is not None and status.observed_generation == 7
        condition = status.condition("Degraded")
        assert condition is not None and (condition.status, condition.reason) == ("True", "ReconcileFailed")
        assert "MemoryError: absurd" in condition.message and status.condition("Available") is not None
        events, _ = await client.list(KEYS.events("services", "buggy"))
        assert len(events) == 1 and json.loads(events[0].value)["count"] == 2
        assert json.loads(events[0].value)["type"] == "Warning"


class Failing:
    async def reconcile(self, name: str) -> float | None:
        raise MemoryError("absurd")
