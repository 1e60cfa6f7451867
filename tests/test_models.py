"""The spec contract: field names, strictness, defaults, and errors that name the JSON path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from fleetop.errors import SpecInvalid
from fleetop.models import ProxySpec, ServiceSpec, parse_proxy, parse_service, parse_spec
from fleetop.models.base import format_duration, parse_duration
from fleetop.models.networks import DEFAULT_ALLOWED_NETWORKS
from fleetop.models.parse import encode_spec, spec_document
from fleetop.models.service import resolve_int_or_percent

MINIMAL = {"replicas": 2, "unit": {"execStart": "/bin/sleep 1000"}}

FULL_SERVICE: dict[str, Any] = {
    "replicas": 3,
    "unit": {
        "description": "web %i",
        "execStartPre": ["-/bin/true"],
        "execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i",
        "execStartPost": ["/bin/true"],
        "execStop": ["/bin/kill $MAINPID"],
        "execStopPost": ["/bin/true"],
        "environment": {"MODE": "prod"},
        "environmentFile": ["/etc/environment"],
        "restart": "always",
        "restartSec": "2s",
        "user": "nobody",
        "options": [{"section": "Service", "name": "TimeoutStartSec", "value": "0"}],
    },
    "ports": {"base": 8001},
    "placement": {"machineMetadata": {"region": ["sfo1", "nyc1"]}, "spread": True},
    "discovery": {
        "prefix": "/services/web",
        "sidekick": True,
        "check": {"http": "/", "interval": "5s", "timeout": "1s"},
        "ttl": "30s",
    },
    "rollout": {"maxSurge": "25%", "maxUnavailable": 1, "minReadySeconds": 5, "progressDeadlineSeconds": 120},
    "paused": False,
}


def test_minimal_and_full_services_parse() -> None:
    spec = parse_service(json.dumps(MINIMAL))
    assert spec.replicas == 2 and spec.unit.exec_start == "/bin/sleep 1000"
    assert spec.unit.environment_file == ["-/etc/environment"]
    full = parse_service(FULL_SERVICE)
    assert full.ports is not None and full.ports.base == 8001
    assert full.placement.spread and full.placement.machine_metadata == {"region": ["sfo1", "nyc1"]}
    assert full.discovery.check.interval == 5.0 and full.discovery.ttl == 30.0
    assert full.rollout.max_surge == "25%"


def test_stored_form_is_compact_and_round_trips() -> None:
    spec = parse_service(MINIMAL)
    assert json.loads(encode_spec(spec)) == MINIMAL
    full = parse_service(FULL_SERVICE)
    again = parse_service(spec_document(full))
    assert again == full


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ({"replicas": "2", "unit": {"execStart": "x"}}, "$.replicas", "valid integer"),
        ({"replicas": 2}, "$.unit", "required"),
        ({"unit": {"execStart": ""}}, "$.unit.execStart", "at least 1"),
        ({"unit": {"execStart": "x", "execstart": "y"}}, "$.unit.execstart", "unknown field"),
        ({"unit": {"execStart": "x"}, "replica": 3}, "$.replica", "unknown field"),
        ({"unit": {"execStart": "a\nb"}}, "$.unit.execStart", "newline"),
        ({"unit": {"execStart": "x", "environment": {"A B": "c"}}}, "$.unit.environment", "not valid"),
        (
            {
                "unit": {
                    "execStart": "x",
                    "options": [{"section": "X-Fleetop", "name": "Service", "value": "a"}],
                }
            },
            "$.unit.options[0].section",
            "written by fleetop",
        ),
        (
            {"unit": {"execStart": "x", "options": [{"section": "Service", "name": "A=B", "value": "a"}]}},
            "$.unit.options[0].name",
            "option name",
        ),
        ({"unit": {"execStart": "x"}, "replicas": -1}, "$.replicas", "greater than or equal"),
        ({"unit": {"execStart": "x"}, "ports": {"base": 70000}}, "$.ports.base", "less than or equal"),
        ({"unit": {"execStart": "x"}, "ports": {"base": 65535}, "replicas": 2}, "$", "65535"),
        (
            {"unit": {"execStart": "x"}, "placement": {"global": True, "machineOf": "db.service"}},
            "$.placement",
            "global cannot",
        ),
        ({"unit": {"execStart": "x"}, "placement": {"machineId": "xyz"}}, "$.placement.machineId", "32"),
        (
            {"unit": {"execStart": "x"}, "placement": {"machineMetadata": {"region": []}}},
            "$.placement.machineMetadata",
            "at least one",
        ),
        (
            {"unit": {"execStart": "x"}, "discovery": {"check": {"http": "/", "tcp": True}}},
            "$.discovery.check",
            "one check",
        ),
        (
            {"unit": {"execStart": "x"}, "discovery": {"check": {"http": "no-slash"}}},
            "$.discovery.check.http",
            "path",
        ),
        ({"unit": {"execStart": "x"}, "discovery": {"ttl": "soon"}}, "$.discovery.ttl", "not a duration"),
        ({"unit": {"execStart": "x"}, "discovery": {"prefix": "/a/../b"}}, "$.discovery.prefix", "etcd key"),
        ({"unit": {"execStart": "x"}, "discovery": {"prefix": "/a/b\n"}}, "$.discovery.prefix", "etcd key"),
        (
            {"unit": {"execStart": "x"}, "rollout": {"maxSurge": 0, "maxUnavailable": 0}},
            "$.rollout",
            "both be 0",
        ),
        ({"unit": {"execStart": "x"}, "rollout": {"maxSurge": "150%"}}, "$.rollout.maxSurge", "percentage"),
        ({"unit": {"execStart": "x"}, "paused": "yes"}, "$.paused", "boolean"),
        ({"unit": {"execStart": "x"}, "name": "Web_1"}, "$.name", "lowercase"),
        ({"unit": {"execStart": "x"}, "discovery": {"sidekick": True}}, "$", "needs ports.base"),
    ],
)
def test_invalid_services_name_the_json_path(document: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_service(document, where="web.yaml")
    paths = [p for p, _ in info.value.errors]
    messages = " ".join(m for _, m in info.value.errors)
    assert path in paths, info.value.errors
    assert fragment in messages, info.value.errors
    assert str(info.value).startswith("web.yaml: ")


def test_name_in_body_must_match_key() -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_service({**MINIMAL, "name": "other"}, name="web", where="key /desired/services/web")
    assert info.value.path == "$.name" and "differs" in info.value.message


@pytest.mark.parametrize("text", ["{", "[1,2]", '"web"', "\xff"])
def test_garbage_is_a_spec_error_not_a_crash(text: str) -> None:
    with pytest.raises(SpecInvalid):
        parse_service(text.encode("latin-1"))


PROXY = {
    "kind": "nginx",
    "listen": "127.0.0.1:8080",
    "routes": [{"service": "hello"}],
    "headers": {"handler": True},
}


@pytest.mark.parametrize(
    ("listen", "normalized"),
    [
        (8080, "*:8080"),
        ("8080", "*:8080"),
        ("127.0.0.1:80", "127.0.0.1:80"),
        ("[::1]:80", "[::1]:80"),
        ("*:443", "*:443"),
        ("0.0.0.0:8080", "0.0.0.0:8080"),
    ],
)
def test_proxy_listen_forms(listen: Any, normalized: str) -> None:
    assert parse_proxy({**PROXY, "listen": listen}).listen == normalized


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"kind": "traefik"}, "$.kind"),
        ({"listen": "127.0.0.1:0"}, "$.listen"),
        ({"listen": "127.0.0.1:80; }"}, "$.listen"),
        ({"listen": True}, "$.listen"),
        ({"routes": [{"service": "Hello"}]}, "$.routes[0].service"),
        ({"routes": [{"service": "a", "host": "x.com; }"}]}, "$.routes[0].host"),
        ({"routes": [{"service": "a", "path": "/a b"}]}, "$.routes[0].path"),
        ({"routes": [{"service": "a", "path": "/$host"}]}, "$.routes[0].path"),
        ({"routes": [{"service": "a"}, {"service": "b"}]}, "$"),
        ({"wait": {"min": "2s", "max": "1s"}}, "$.wait"),
        ({"configPath": "relative/nginx.conf"}, "$.configPath"),
        ({"checkCmd": ["nginx", "-t\n"]}, "$.checkCmd"),
        ({"replicas": 1.5}, "$.replicas"),
    ],
)
def test_invalid_proxies(change: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_proxy({**PROXY, **change})
    assert path in [p for p, _ in info.value.errors], info.value.errors


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"name": "web", "spec": MINIMAL}, "$.kind"),
        ({"kind": "Deployment", "name": "web", "spec": MINIMAL}, "$.kind"),
        ({"kind": "Service", "spec": MINIMAL}, "$.name"),
        ({"kind": "Service", "name": "Web", "spec": MINIMAL}, "$.name"),
        ({"kind": "Service", "name": "web"}, "$.spec"),
        ({"kind": "Service", "name": "web", "spec": MINIMAL, "replicas": 3}, "$.replicas"),
        ({"kind": "Service", "name": "web", "spec": {**MINIMAL, "replicas": "3"}}, "$.spec.replicas"),
        ({"kind": "Service", "name": "web", "spec": {**MINIMAL, "name": "api"}}, "$.spec.name"),
        ({"kind": "Proxy", "name": "edge", "spec": {**PROXY, "kind": "Proxy"}}, "$.spec.kind"),
    ],
)
def test_apply_documents_are_envelopes(document: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(document, where="f.yaml (document 2)")
    assert info.value.path == path, info.value.errors
    assert info.value.where == "f.yaml (document 2)"


def test_apply_documents_parse() -> None:
    service = parse_spec({"kind": "Service", "name": "web", "metadata": {"modRevision": 5}, "spec": MINIMAL})
    assert isinstance(service, ServiceSpec) and service.name == "web"
    proxy = parse_spec({"kind": "Proxy", "metadata": {"name": "edge"}, "spec": PROXY, "status": {}})
    assert isinstance(proxy, ProxySpec) and proxy.name == "edge" and proxy.kind == "nginx"


@pytest.mark.parametrize(
    ("text", "seconds"), [(10, 10.0), (2.5, 2.5), ("10s", 10.0), ("500ms", 0.5), ("1m", 60.0), ("2h", 7200.0)]
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [(1, 10, True, 1), ("25%", 10, True, 3), ("25%", 10, False, 2), ("100%", 3, False, 3)],
)
def test_int_or_percent(value: Any, total: int, up: bool, expected: int) -> None:
    assert resolve_int_or_percent(value, total, round_up=up) == expected


def test_proxy_model_type() -> None:
    assert isinstance(parse_proxy(PROXY), ProxySpec)


def test_allowed_networks_default_to_private_and_loopback_and_can_be_widened() -> None:
    spec = ProxySpec.model_validate({"kind": "nginx", "listen": 8080})
    assert spec.allowed_networks == list(DEFAULT_ALLOWED_NETWORKS)
    assert "allowedNetworks" not in spec.model_dump(by_alias=True, exclude_defaults=True)
    wide = ProxySpec.model_validate(
        {"kind": "nginx", "listen": 8080, "allowedNetworks": ["0.0.0.0/0", "::/0"]}
    )
    assert wide.allowed_networks == ["0.0.0.0/0", "::/0"]
    one = ProxySpec.model_validate(
        {"kind": "nginx", "listen": 8080, "allowedNetworks": ["10.0.0.5", "FD00::/8"]}
    )
    assert one.allowed_networks == ["10.0.0.5/32", "fd00::/8"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["10.0.0.1/8"], "did you mean 10.0.0.0/8"),
        (["10.0.0.0/33"], "not a network in CIDR form"),
        (["evil.com"], "not a network in CIDR form"),
        (["x" * 100], "at most 64 characters"),
        ("10.0.0.0/8", "valid list"),
        (["10.0.0.0/8"] * 257, "at most 256"),
    ],
)
def test_bad_allowed_networks_are_refused_with_the_path(value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ProxySpec.model_validate({"kind": "nginx", "listen": 8080, "allowedNetworks": value})
    assert "allowedNetworks" in str(info.value) and message in str(info.value), str(info.value)
    with pytest.raises(ValidationError) as info:
        ServiceSpec.model_validate({"unit": {"execStart": "x"}, "discovery": {"allowedNetworks": value}})
    assert "discovery.allowedNetworks" in str(info.value)
