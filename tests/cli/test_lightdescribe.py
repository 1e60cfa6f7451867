"""The light ``describe`` reader (:mod:`fleetop.cli.lightdescribe`) reads every field the models read
of a status and an event, none defaulted, so whatever it accepts the models read alike; and a stored
value whose compact re-encoding has the status's ``specHash`` is the document the models would show."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from fleetop.cli import lightdescribe
from fleetop.cli.light import Unsure
from fleetop.cli.output import to_yaml
from fleetop.controller.runtime.executor import status_bytes
from fleetop.models import (
    AvailableTemplate,
    Backend,
    Condition,
    Event,
    ProxyStatus,
    ReplicaCounts,
    RestartStatus,
    RollbackStatus,
    ServiceStatus,
    UnitStatus,
    parse_proxy,
    parse_service,
)
from fleetop.models.parse import encode_spec, spec_document, spec_hash
from fleetop.models.status import AgentCount
from fleetop.specjson import digest, encode_document

UNIT = UnitStatus(
    name="web@1.service",
    machine="m1",
    desired_state="launched",
    current_state="launched",
    load_state="loaded",
    active_state="active",
    sub_state="running",
    ready=True,
    restarts=2,
)
CONDITION = Condition(type="Available", status="True", reason="Ready", message="ok", last_transition_time="t")
SERVICE = ServiceStatus(
    observed_generation=7,
    spec_hash="ab" * 32,
    observed_generation_time="2026-01-01T00:00:00Z",
    replicas=ReplicaCounts(desired=2, launched=2, running=2, ready=1, updated=2),
    conditions=[CONDITION],
    units=[UNIT],
    backends=[Backend(key="/services/web/1", address="127.0.0.1:8001")],
    invalid_registrations=1,
    template="abc",
    restarts=[RestartStatus(unit="web@1.service", instance="1", last_failure="t", next_try="t")],
    rollback=RollbackStatus(from_template="b", to_template="a", generation=6, time="t"),
    last_available=AvailableTemplate(template="a", spec={"replicas": 2}),
    last_error="boom",
)
PROXY = ProxyStatus(
    observed_generation=3,
    spec_hash="cd" * 32,
    config_hash="f00",
    generation=4,
    backends={"web": 2},
    skipped_registrations=1,
    agents=AgentCount(total=1, on_newest=1),
    conditions=[CONDITION],
    units=[UNIT],
    last_error=None,
)
FREE_FORM = {("lastAvailable", "spec"), ("backends",)}
"""Maps whose keys are data, not fields (a stored spec; a proxy's services)."""


def as_json(status: ServiceStatus | ProxyStatus) -> dict[str, Any]:
    return dict(json.loads(status_bytes(status)))


def field_paths(data: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every field in ``data``, nested ones included (maps of data left whole)."""
    if isinstance(data, dict) and tuple(p for p in path if isinstance(p, str)) not in FREE_FORM:
        for key, value in data.items():
            yield (*path, key)
            yield from field_paths(value, (*path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from field_paths(item, (*path, index))


def without(data: Any, path: tuple[str | int, ...]) -> Any:
    data = json.loads(json.dumps(data))
    inner = data
    for part in path[:-1]:
        inner = inner[part]
    del inner[path[-1]]
    return data


def replaced(data: Any, path: tuple[str | int, ...], value: Any) -> Any:
    data = json.loads(json.dumps(data))
    inner = data
    for part in path[:-1]:
        inner = inner[part]
    inner[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("status", "reader"),
    [(SERVICE, lightdescribe.ServiceStatus), (PROXY, lightdescribe.ProxyStatus)],
    ids=["service", "proxy"],
)
def test_every_field_of_a_status_is_read_none_defaulted(status: Any, reader: Any) -> None:
    data = as_json(status)
    read = reader(data)
    assert (read.observed_generation, read.spec_hash) == (status.observed_generation, status.spec_hash)
    paths = list(field_paths(data))
    assert len(paths) > 25  # every nested list holds an item, every optional object is there
    for path in paths:
        with pytest.raises(Unsure):
            reader(without(data, path))
        if not isinstance(path[-1], int):
            with pytest.raises(Unsure):
                reader(replaced(data, path, [1.5]))  # a type no field has
    assert isinstance(reader(replaced(data, ("lastError",), None)).last_error, type(None))
    extra = reader({**data, "addedLater": 1})  # a newer operator's field: ignored, as the models do
    assert extra.observed_generation == status.observed_generation


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("conditions", 0, "type"), "Sleeping"),
        (("units", 0, "ready"), 1),
        (("units", 0, "restarts"), True),
        (("restarts", 0, "phase"), "lost"),
        (("restarts", 0, "cause"), "lost"),
        (("rollback",), []),
        (("lastAvailable", "spec"), []),
    ],
)
def test_what_the_models_refuse_is_not_read(path: tuple[str | int, ...], value: Any) -> None:
    data = replaced(as_json(SERVICE), path, value)
    with pytest.raises(ValidationError):
        ServiceStatus.model_validate(data)
    with pytest.raises(Unsure):
        lightdescribe.ServiceStatus(data)


def test_a_lone_surrogate_is_left_to_the_models() -> None:
    data = replaced(as_json(SERVICE), ("units", 0, "name"), "\ud800")
    with pytest.raises(Unsure):
        lightdescribe.ServiceStatus(data)


EVENT = Event(kind="Proxy", name="edge", type="Warning", reason="AgentFailed", message="m", time="t", count=2)


def test_an_event_is_read_whole_or_not_at_all() -> None:
    raw = EVENT.model_dump_json(by_alias=True).encode()
    read = lightdescribe.read_events([KV(raw, 5)], since_revision=4, limit=20)
    assert [(e.kind, e.name, e.type, e.reason, e.message, e.time, e.count) for e in read] == [
        ("Proxy", "edge", "Warning", "AgentFailed", "m", "t", 2)
    ]
    assert lightdescribe.read_events([KV(raw, 4)], since_revision=4, limit=20) == []
    data = json.loads(raw)
    for name in data:
        with pytest.raises(Unsure):
            lightdescribe.read_events(
                [KV(json.dumps(without(data, (name,))).encode(), 5)], since_revision=0, limit=9
            )
    for bad in (
        b'{"kind": "Proxy", "kind": "Service"}',
        b"\xff",
        b"[",
        json.dumps({**data, "count": 2.0}).encode(),
    ):
        with pytest.raises(Unsure):
            lightdescribe.read_events([KV(bad, 5)], since_revision=0, limit=9)


class KV:
    """A key's value and revisions, as the reads return them."""

    def __init__(self, value: bytes, create_revision: int, mod_revision: int = 0, key: str = "") -> None:
        self.value, self.create_revision, self.mod_revision, self.key = (
            value,
            create_revision,
            mod_revision,
            key,
        )


SPECS = [
    ("services", b'{"replicas": 3, "unit": {"execStart": "/bin/echo \xc3\xa9 \\u2028 \\ud83d\\ude00"}}'),
    ("services", b'{"unit": {"execStart": "/bin/true", "restartSec": 1.5},'
                 b' "discovery": {"ttl": "1m"}}'),
    ("services", b'{"unit": {"execStart": "/bin/true", "environment": {"Z": "1", "A": "\\"q\\""}},'
                 b' "ports": {"base": 8000}}'),
    ("proxies", b'{"kind": "nginx", "listen": 8080, "routes": [{"service": "web", "host": "a.example"}]}'),
    ("proxies", b'{"kind": "haproxy", "listen": "127.0.0.1:9000", "wait": {"min": 0.25, "max": "2s"}}'),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "raw"), SPECS)
def test_the_stored_normal_form_is_what_the_models_show(kind: str, raw: bytes) -> None:
    """``encode_spec`` written (as ``apply`` of the models' document does), re-encoded by the light
    reader: the same digest, and the same document, value for value, as YAML too."""
    spec = parse_service(raw, name="x") if kind == "services" else parse_proxy(raw, name="x")
    stored = encode_spec(spec)
    decoded = json.loads(stored)
    assert digest(encode_document(decoded)) == spec_hash(spec)
    assert decoded == spec_document(spec) and to_yaml(decoded) == to_yaml(spec_document(spec))
    pretty = json.dumps(decoded, indent=2, ensure_ascii=False).encode()  # the same document, typed by hand
    assert digest(encode_document(json.loads(pretty))) == spec_hash(spec)
