"""What ``get`` and ``status`` show of a spec the operator has judged, read without pydantic.

Importing pydantic and building the models costs more than the rest of a read verb together, and in
the common case the operator has already done the work: each status says which revision of the spec
it judged (``observedGeneration``, the key's ``mod_revision``) and its verdict (an ``Invalid``
condition). When the status judged exactly the revision the verb read, and judged it valid, the verb
takes validity from it and reads the few spec fields it displays from the stored JSON here.

This reader is standard library only and knows no defaults: anything it does not expect (a field
missing, whose default lives in the models; a value of another type; a spec judged invalid, whose
message the models word; a spec no operator has judged, or judged at another revision; a status that
does not read) raises :class:`Unsure`, and the verb reads everything through the models instead,
exactly as it would have. The objects below carry the attribute names of the models the formatting
reads (:mod:`fleetop.cli.output`, :mod:`fleetop.cli.statusview`), so one formatting serves both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleetop.keys import Keys, Kind


class Unsure(Exception):
    """The light reader cannot vouch for what it would show: read through the models."""


def _field(data: Any, name: str, *types: type) -> Any:
    """``data[name]``, of exactly one of ``types`` (``bool`` is not an ``int`` here, as in the models'
    strict mode)."""
    if not isinstance(data, dict) or name not in data:
        raise Unsure(name)
    value = data[name]
    if type(value) not in types:
        raise Unsure(name)
    return value


def _text(data: Any, name: str) -> str:
    value: str = _field(data, name, str)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the models would replace it
        raise Unsure(name) from None
    return value


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise Unsure("not JSON") from None


CONDITION_TYPES = frozenset({"Available", "Progressing", "Degraded", "Invalid", "Ready", "Published"})
CONDITION_STATUSES = frozenset({"True", "False", "Unknown"})


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str

    @classmethod
    def read(cls, data: Any) -> Condition:
        kind, status = _text(data, "type"), _text(data, "status")
        if kind not in CONDITION_TYPES or status not in CONDITION_STATUSES:
            raise Unsure("condition")
        return cls(
            kind, status, _text(data, "reason"), _text(data, "message"), _text(data, "lastTransitionTime")
        )


def _conditions(data: Any) -> list[Condition]:
    return [Condition.read(c) for c in _field(data, "conditions", list)]


@dataclass(frozen=True)
class ReplicaCounts:
    desired: int
    launched: int
    running: int
    ready: int
    updated: int

    @classmethod
    def read(cls, data: Any) -> ReplicaCounts:
        names = ("desired", "launched", "running", "ready", "updated")
        return cls(*(_field(data, name, int) for name in names))


@dataclass(frozen=True)
class ServiceStatus:
    """What ``get services`` and ``status`` show of a service's status."""

    observed_generation: int
    observed_generation_time: str
    replicas: ReplicaCounts
    conditions: list[Condition]

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True)
class AgentCount:
    total: int
    on_newest: int


@dataclass(frozen=True)
class ProxyStatus:
    """What ``get proxies`` and ``status`` show of a proxy's status."""

    observed_generation: int
    config_hash: str
    backends: dict[str, int]
    agents: AgentCount
    conditions: list[Condition]
    last_error: str | None

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


def read_status(kind: Kind, raw: bytes) -> ServiceStatus | ProxyStatus:
    data = _decode(raw)
    if kind == "services":
        return ServiceStatus(
            _field(data, "observedGeneration", int),
            _text(data, "observedGenerationTime"),
            ReplicaCounts.read(_field(data, "replicas", dict)),
            _conditions(data),
        )
    backends = _field(data, "backends", dict)
    if not all(type(v) is int for v in backends.values()):
        raise Unsure("backends")
    agents = _field(data, "agents", dict)
    last_error = _field(data, "lastError", str, type(None))
    return ProxyStatus(
        _field(data, "observedGeneration", int),
        _text(data, "configHash"),
        backends,
        AgentCount(_field(agents, "total", int), _field(agents, "onNewest", int)),
        _conditions(data),
        None if last_error is None else _text(data, "lastError"),
    )


@dataclass(frozen=True)
class ServiceSpec:
    """The fields of a service's spec that ``get services`` and ``status`` show."""

    replicas: int


@dataclass(frozen=True)
class Entry:
    """A desired key whose revision the operator judged valid, with the fields shown of its spec."""

    kind: Kind
    name: str
    key: str
    spec: ServiceSpec
    create_revision: int
    mod_revision: int
    error: None = None

    @property
    def valid(self) -> bool:
        return True


@dataclass(frozen=True)
class StatusEntry:
    name: str
    status: ServiceStatus | ProxyStatus
    mod_revision: int


@dataclass(frozen=True)
class KeyRead:
    """One key as read (the fields of :class:`fleetop.etcd.model.KeyValue` used here)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int


def read_statuses(kind: Kind, keys: Keys, kvs: list[Any]) -> dict[str, StatusEntry]:
    out: dict[str, StatusEntry] = {}
    for kv in kvs:
        name = keys.name_of(kv.key, kind, "status")
        if name is not None:
            out[name] = StatusEntry(name, read_status(kind, kv.value), kv.mod_revision)
    return out


def read_entries(kind: Kind, keys: Keys, kvs: list[Any], statuses: dict[str, StatusEntry]) -> list[Entry]:
    """Every desired key of ``kind``, each judged valid at its revision by the operator's status."""
    entries = []
    for kv in kvs:
        if kind != "services":
            raise Unsure("a proxy")  # the models normalise its listen address
        name = keys.name_of(kv.key, kind)
        if name is None:
            continue
        judged = statuses.get(name)
        if judged is None or judged.status.observed_generation != kv.mod_revision:
            raise Unsure("not judged at this revision")
        invalid = judged.status.condition("Invalid")
        if invalid is not None and invalid.status != "False":
            raise Unsure("judged invalid")  # the models word the reason
        replicas = _field(_decode(kv.value), "replicas", int)
        entries.append(Entry(kind, name, kv.key, ServiceSpec(replicas), kv.create_revision, kv.mod_revision))
    return sorted(entries, key=lambda e: e.name)


@dataclass(frozen=True)
class FleetObservation:
    endpoints: list[str]
    endpoint: str
    reachable: bool
    last_seen: str
    lost_since: str
    error: str
    tried: list[str]


@dataclass(frozen=True)
class OperatorObservation:
    identity: str
    time: str
    heartbeat: float
    fleet: FleetObservation


def _texts(data: Any, name: str) -> list[str]:
    values = _field(data, name, list)
    if not all(type(v) is str for v in values):
        raise Unsure(name)
    return [_text({name: v}, name) for v in values]


def read_observation(raw: bytes) -> OperatorObservation:
    data = _decode(raw)
    fleet = _field(data, "fleet", dict)
    return OperatorObservation(
        _text(data, "identity"),
        _text(data, "time"),
        float(_field(data, "heartbeat", int, float)),
        FleetObservation(
            _texts(fleet, "endpoints"),
            _text(fleet, "endpoint"),
            _field(fleet, "reachable", bool),
            _text(fleet, "lastSeen"),
            _text(fleet, "lostSince"),
            _text(fleet, "error"),
            _texts(fleet, "tried"),
        ),
    )
