"""Bounds and the one validation every path in shares: sizes, depths, counts, durations, names, keys.

Pure tests of ``fleetop.models.parse`` (what ``etcdctl put``, ``apply``, ``patch`` and the operator all
read specs through), the models' bounds, the safe key segment of a refused name, and the containment
helpers of the operator.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetop.cli.documents import split_documents
from fleetop.cli.patching import apply_patch
from fleetop.controller.runtime.contain import degraded, failure_message
from fleetop.controller.runtime.reconcile import Reconciler
from fleetop.errors import InputError, SpecInvalid, TemporaryError
from fleetop.keys import SEGMENT_CHARS, Keys, is_name, segment, unsegment
from fleetop.models import Condition, ProxySpec, ServiceStatus, parse_proxy, parse_service, parse_spec
from fleetop.models.parse import SPEC_LIMITS, Limits, check_limits, decode_document
from fleetop.store import Entry, shared_name

UNIT = {"execStart": "/bin/sleep 1"}
PROXY: dict[str, Any] = {"kind": "nginx", "listen": "127.0.0.1:8080"}


def refused(parse: Any, data: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        parse(data, **kwargs)
    return info.value.all_messages()


def has(messages: list[str], path: str, fragment: str) -> bool:
    """A message at ``path`` (or below it) containing ``fragment``."""
    return any(m.startswith(path) and fragment in m for m in messages)


# -- reading a document --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("[" * 1000 + "]" * 1000, "$", "nested deeper than 16 levels"),
        ("[" * 17 + "]" * 17, "$" + "[0]" * 16, "nested deeper than 16 levels"),
        ('{"unit": {"options": [' + "[" * 20 + "]" * 20 + "]}}", "$.unit.options[0]", "nested deeper"),
        ('{"unit": {"execStart": "a"}, "unit": {}}', "$.unit", "duplicate key"),
        (
            '{"unit": {"execStart": "a", "environment": {"K": "1", "K": "2"}}}',
            "$.unit.environment.K",
            "duplicate",
        ),
        ('{"unit": {"execStart": "a"}, "replicas": NaN}', "$", "NaN is not a JSON number"),
        ('{"unit": {"execStart": "a"}, "replicas": Infinity}', "$", "Infinity is not a JSON number"),
        ('{"unit": {"execStart": "a"}, "ttl": 1e999}', "$.ttl", "not a finite number"),
        ('{"replicas": 1' + "0" * 5000 + "}", "$", "cannot be read"),
        ('{"a": "' + "x" * (64 * 1024 + 1) + '"}', "$.a", "at most 65536"),
        ('{"' + "k" * 257 + '": 1}', '$["' + "k" * 63, "a key of 257 characters, at most 256"),
        ("[" + ",".join(["1"] * 10_001) + "]", "$", "10001 entries, at most 10000"),
        ("[]", "$", "expected a JSON object, got list"),
        ("", "$", "invalid JSON"),
    ],
)
def test_documents_are_read_within_bounds(text: str, path: str, fragment: str) -> None:
    assert has(refused(parse_service, text), path, fragment)


def test_a_document_over_the_size_limit_is_refused_before_it_is_decoded() -> None:
    text = "[" * (SPEC_LIMITS.document_bytes + 1)  # would raise RecursionError if decoded
    assert has(refused(parse_service, text), "$", f"at most {SPEC_LIMITS.document_bytes}")


def test_not_utf8_is_refused() -> None:
    assert has(refused(parse_service, b'{"unit": {"execStart": "\xff"}}'), "$", "not UTF-8")


def test_limits_count_values_and_report_paths_in_document_order() -> None:
    small = Limits(entries=3, nodes=10)
    assert check_limits({"a": [1, 2, 3, 4]}, small) == [("$.a", "4 entries, at most 3")]
    assert check_limits([[1, 2, 3]] * 3, small)[0][1].startswith("more than 10 values")
    errors = check_limits({"b": "x" * 70_000, "a": "y" * 70_000})
    assert [p for p, _ in errors] == ["$.b", "$.a"]


def test_a_yaml_alias_bomb_is_bounded_by_the_node_count() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}," * 1
        bomb += f" *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
    document = {"kind": "Service", "name": "bomb", "spec": {"unit": UNIT, "x": None}}
    (_, loaded), *_ = split_documents(bomb, "bomb.yaml")
    document["spec"]["x"] = loaded
    with pytest.raises(SpecInvalid) as info:
        parse_spec(document)
    assert "more than 100000 values" in info.value.all_messages()[0]


def test_errors_are_few_and_short() -> None:
    document = {"unit": {**UNIT, "options": [{"section": "S" * 100, "name": "n"}] * 50}}
    messages = refused(parse_service, document)
    assert len(messages) <= 10 and all(len(m) < 700 for m in messages)


# -- names -----------------------------------------------------------------------------------------------

BAD_NAMES = [
    "UPPER", "under_score", "dot.ted", "-lead", "trail-", "x.service", "x@y", "with:colon", "x" * 64, ".",
    "..", "a b", "a;b", "a\tb", 'a"b', "a\\b", "nön", "%40", "y" * 300, "../x", "a/b", "a\nb", "", "\udcff",
]  # fmt: skip


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: json.dumps(n)[:30])
def test_the_name_in_the_key_is_checked_by_the_one_parse_function(name: str) -> None:
    for parse, body in ((parse_service, {"unit": UNIT}), (parse_proxy, PROXY)):
        messages = refused(parse, json.dumps(body), name=name, where=f"key /desired/x/{name}")
        assert has(messages, "$.name", "must be 1-63 lowercase letters")
        assert all(len(m) < 300 for m in messages)
    with pytest.raises(SpecInvalid):
        parse_spec({"kind": "Service", "name": name, "spec": {"unit": UNIT}})


@pytest.mark.parametrize("name", ["web", "a", "x" * 63, "a-b-9"])
def test_good_names_pass(name: str) -> None:
    assert parse_service(json.dumps({"unit": UNIT}), name=name).unit.exec_start == UNIT["execStart"]
    assert is_name(name) and segment(name) == name


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
def test_a_refused_name_gets_one_safe_status_key(name: str) -> None:
    keys = Keys()
    for key in (keys.status("services", name), keys.events(name).rstrip("/"), keys.proxy_config(name)):
        assert key.isprintable() and key.isascii()
    part = keys.status("services", name).removeprefix("/status/services/")
    assert part and "/" not in part and part not in (".", "..") and len(part) <= SEGMENT_CHARS
    assert not is_name(part) or part == name
    assert keys.name_of(keys.status("services", name), "services", "status") == (
        name if len(part) < SEGMENT_CHARS else part
    )


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_segments_of_different_names_differ(first: str, second: str) -> None:
    if first != second:
        assert segment(first) != segment(second)
    if len(segment(first)) < SEGMENT_CHARS:
        assert unsegment(segment(first)) == first


def test_deeper_desired_keys_are_names_not_ignored() -> None:
    keys = Keys()
    assert keys.name_of("/desired/services/../x", "services") == "../x"
    assert keys.name_of("/status/proxies/edge/agents/m1", "proxies", "status") is None


# -- bounds of the models ------------------------------------------------------------------------------


def service(**fields: Any) -> dict[str, Any]:
    return {"unit": UNIT, **fields}


def with_unit(**fields: Any) -> dict[str, Any]:
    return {"unit": {**UNIT, **fields}}


SIDEKICK = {"ports": {"base": 8000}, "discovery": {"sidekick": True}}


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        (service(replicas=10_001), "$.replicas", "less than or equal to 10000"),
        (with_unit(execStart="x" * 4097), "$.unit.execStart", "at most 4096"),
        (with_unit(execStartPre=["x"] * 33), "$.unit.execStartPre", "at most 32"),
        (with_unit(execStop=["x" * 4097]), "$.unit.execStop[0]", "at most 4096"),
        (with_unit(environment={f"K{i}": "v" for i in range(257)}), "$.unit.environment", "at most 256"),
        (with_unit(environment={"K" * 129: "v"}), "$.unit.environment", "at most 128"),
        (with_unit(environment={"K": "v" * 4097}), "$.unit.environment.K", "at most 4096"),
        (with_unit(environmentFile=["/e"] * 33), "$.unit.environmentFile", "at most 32"),
        (with_unit(options=[{"section": "Service", "name": "A"}] * 65), "$.unit.options", "at most 64"),
        (
            with_unit(options=[{"section": "Service", "name": "A", "value": "v" * 4097}]),
            "$.unit.options[0].value",
            "4096",
        ),
        (with_unit(restartSec="2h"), "$.unit.restartSec", "between 0s and 3600s"),
        (with_unit(description="d" * 1025), "$.unit.description", "at most 1024"),
        (with_unit(user="u" * 65), "$.unit.user", "at most 64"),
        (service(discovery={"check": {"interval": "1ms"}}), "$.discovery.check.interval", "between 500ms"),
        (service(discovery={"check": {"interval": "2h"}}), "$.discovery.check.interval", "and 3600s"),
        (
            service(discovery={"check": {"timeout": "10ms"}}),
            "$.discovery.check.timeout",
            "between 100ms and 60s",
        ),
        (service(discovery={"check": {"http": "/" + "p" * 1024}}), "$.discovery.check.http", "at most 1024"),
        (service(discovery={"ttl": "0.5s"}), "$.discovery.ttl", "between 1s and 86400s"),
        (
            {
                **service(**SIDEKICK),
                "discovery": {"sidekick": True, "ttl": "10s", "check": {"interval": "9s"}},
            },
            "$.discovery",
            "ttl must be longer than check.interval + check.timeout",
        ),
        (
            service(discovery={"prefix": "/fleetop/proxies/edge"}),
            "$.discovery.prefix",
            "inside fleetop's own keys",
        ),
        (service(discovery={"prefix": "/desired"}), "$.discovery.prefix", "inside fleetop's own keys"),
        (
            service(discovery={"prefix": "/status/services/x"}),
            "$.discovery.prefix",
            "inside fleetop's own keys",
        ),
        (service(discovery={"prefix": "/s" * 129}), "$.discovery.prefix", "at most 256"),
        (
            service(rollout={"minReadySeconds": 10**12}),
            "$.rollout.minReadySeconds",
            "less than or equal to 3600",
        ),
        (service(rollout={"progressDeadlineSeconds": 86401}), "$.rollout.progressDeadlineSeconds", "86400"),
        (
            service(rollout={"minReadySeconds": 60, "progressDeadlineSeconds": 60}),
            "$.rollout",
            "longer than minReady",
        ),
        (service(rollout={"maxSurge": 10**9}), "$.rollout.maxSurge", "at most 10000"),
        (service(rollout={"maxUnavailable": 10_001}), "$.rollout.maxUnavailable", "at most 10000"),
        (
            service(placement={"machineMetadata": {f"k{i}": ["v"] for i in range(33)}}),
            "$.placement.machineMetadata",
            "at most 32",
        ),
        (
            service(placement={"machineMetadata": {"k": ["v"] * 33}}),
            "$.placement.machineMetadata",
            "at most 32 values",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_service_bounds(document: dict[str, Any], path: str, fragment: str) -> None:
    assert has(refused(parse_service, document), path, fragment)


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"listen": "evil.com:80"}, "$.listen", "is not an IP address"),
        ({"listen": "localhost:80"}, "$.listen", "is not an IP address"),
        ({"listen": "127.0.0.1:2379"}, "$.listen", "one of etcd's ports"),
        ({"listen": 2380}, "$.listen", "one of etcd's ports"),
        ({"listen": "[::1]:4001"}, "$.listen", "one of etcd's ports"),
        ({"listen": "1" * 100}, "$.listen", "must be a port or host:port"),
        ({"template": "x" * (64 * 1024 + 1)}, "$.template", "at most 65536"),
        ({"routes": [{"service": "a", "path": "/" + "p" * 1024}]}, "$.routes[0].path", "at most 1024"),
        ({"routes": [{"service": "a", "host": "h" * 254}]}, "$.routes[0].host", "at most 253"),
        ({"routes": [{"service": "a" * 64}]}, "$.routes[0].service", "at most 63"),
        ({"configPath": "/" + "c" * 1024}, "$.configPath", "at most 1024"),
        ({"checkCmd": ["x"] * 65}, "$.checkCmd", "at most 64"),
        ({"reloadCmd": "x" * 4097}, "$.reloadCmd", "at most 4096"),
        ({"wait": {"max": "2m"}}, "$.wait.max", "between 0s and 60s"),
        ({"replicas": 101}, "$.replicas", "less than or equal to 100"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_proxy_bounds(change: dict[str, Any], path: str, fragment: str) -> None:
    assert has(refused(parse_proxy, {**PROXY, **change}), path, fragment)


@pytest.mark.parametrize("listen", ["*:80", "0.0.0.0:8080", "127.0.0.1:8080", "[::]:443", "[::1]:80", 8080])
def test_proxies_may_bind_ip_literals(listen: Any) -> None:
    assert parse_proxy({**PROXY, "listen": listen}).listen


def test_a_proxy_may_route_ten_thousand_services() -> None:
    routes = [{"service": f"s{i}", "host": f"s{i}.example.com"} for i in range(10_000)]
    spec = parse_proxy(json.dumps({**PROXY, "routes": routes}))
    assert isinstance(spec, ProxySpec) and len(spec.routes) == 10_000


def test_defaults_and_the_examples_bounds_hold() -> None:
    spec = parse_service({"unit": UNIT, **SIDEKICK})
    assert spec.discovery.ttl > spec.discovery.check.interval + spec.discovery.check.timeout


# -- every path in -------------------------------------------------------------------------------------


def test_apply_files_refuse_duplicate_keys_in_yaml_and_json() -> None:
    with pytest.raises(InputError, match=r"line 5 .*duplicate key 'replicas'"):
        split_documents("kind: Service\nname: a\nspec:\n  replicas: 1\n  replicas: 2\n", "a.yaml")
    with pytest.raises(SpecInvalid) as info:
        split_documents('{"kind": "Service", "kind": "Proxy"}', "a.json")
    assert info.value.all_messages() == ["$.kind: duplicate key (a key may appear once in an object)"]


def test_a_patch_is_read_like_a_spec() -> None:
    with pytest.raises(SpecInvalid, match="duplicate key"):
        apply_patch({}, '{"replicas": 1, "replicas": 2}', "merge")
    with pytest.raises(SpecInvalid, match="nested deeper"):
        apply_patch({}, "[" * 2000 + "]" * 2000, "json")


def test_decode_never_raises_anything_but_spec_invalid() -> None:
    for text in ("[" * 100_000, '{"a": 1' + "0" * 10_000 + "}", "\ud800", b"\x00\xff", "{" * 3):
        with pytest.raises(SpecInvalid):
            decode_document(text, "x")


# -- containment -----------------------------------------------------------------------------------------


def entry(kind: str, name: str, revision: int) -> Entry:
    spec = parse_service({"unit": UNIT}) if kind == "services" else parse_proxy(PROXY)
    return Entry(kind, name, f"/desired/{kind}/{name}", b"{}", spec, None, revision, revision)  # type: ignore[arg-type]


def test_a_service_and_a_proxy_of_one_name_the_first_declared_keeps_it() -> None:
    first, later = entry("services", "twin", 5), entry("proxies", "twin", 9)
    assert shared_name("services", first, later) is first
    loser = shared_name("proxies", later, first)
    assert loser is not None and loser.spec is None and loser.error is not None
    assert "taken by service 'twin'" in loser.error.all_messages()[0]
    assert shared_name("proxies", later, None) is later
    tie_service, tie_proxy = entry("services", "t", 7), entry("proxies", "t", 7)
    assert shared_name("services", tie_service, tie_proxy) is tie_service
    assert shared_name("proxies", tie_proxy, tie_service) is not tie_proxy


def test_degraded_keeps_its_transition_time_and_replaces_only_degraded() -> None:
    status = ServiceStatus(conditions=[Condition(type="Available", status="True")])
    first = degraded(status, failure_message(RecursionError("deep")), 100.0)
    again = degraded(first, failure_message(RecursionError("deep")), 200.0)
    condition = again.condition("Degraded")
    assert condition is not None and condition.reason == "ReconcileFailed"
    assert condition.last_transition_time == first.condition("Degraded").last_transition_time  # type: ignore[union-attr]
    assert "RecursionError: deep" in condition.message and again.condition("Available") is not None


class Failing:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def reconcile(self, name: str) -> float | None:
        raise self.exc


async def test_a_pass_that_fails_unexpectedly_is_reported_on_its_key_and_retried() -> None:
    reports: list[tuple[str, str, str]] = []

    async def report(kind: str, name: str, exc: BaseException) -> None:
        reports.append((kind, name, type(exc).__name__))

    reconciler = Reconciler({"services": Failing(RecursionError("deep"))}, report=report)
    with pytest.raises(RecursionError):
        await reconciler.reconcile("services/deep")
    assert reports == [("services", "deep", "RecursionError")]
    for exc in (TemporaryError("later"), asyncio.CancelledError()):
        reconciler = Reconciler({"services": Failing(exc)}, report=report)
        with pytest.raises(type(exc)):
            await reconciler.reconcile("services/x")
    assert len(reports) == 1  # fleetop's own errors and cancellation are not failures to report


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.one_of(st.binary(max_size=300), JSON_VALUES.map(json.dumps).map(str.encode), JSON_VALUES))
def test_any_input_is_a_spec_or_spec_invalid(data: Any) -> None:
    """The property the operator relies on: reading never raises anything else (it would be a bug
    reached by one key)."""
    for parse in (parse_service, parse_proxy):
        try:
            parse(data if isinstance(data, bytes | dict) else {"unit": data}, name="fuzz")
        except SpecInvalid as exc:
            assert exc.errors and all(len(m) < 1000 for m in exc.all_messages())
