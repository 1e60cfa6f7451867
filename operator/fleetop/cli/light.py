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
reads (:mod:`fleetop.cli.output`, :mod:`fleetop.cli.statusview`), so one formatting serves both. They
are plain classes: making a dataclass costs more than reading every key a verb shows.
"""

from __future__ import annotations

import json
from typing import Any, Generic, TypeVar

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


def _texts(data: Any, name: str) -> list[str]:
    values = _field(data, name, list)
    return [_text({name: value}, name) for value in values]


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise Unsure("not JSON") from None


CONDITION_TYPES = frozenset({"Available", "Progressing", "Degraded", "Invalid", "Ready", "Published"})
CONDITION_STATUSES = frozenset({"True", "False", "Unknown"})


class Condition:
    __slots__ = ("last_transition_time", "message", "reason", "status", "type")

    def __init__(self, data: Any) -> None:
        self.type = _text(data, "type")
        self.status = _text(data, "status")
        if self.type not in CONDITION_TYPES or self.status not in CONDITION_STATUSES:
            raise Unsure("condition")
        self.reason = _text(data, "reason")
        self.message = _text(data, "message")
        self.last_transition_time = _text(data, "lastTransitionTime")


def _conditions(data: Any) -> list[Condition]:
    return [Condition(c) for c in _field(data, "conditions", list)]


class ReplicaCounts:
    __slots__ = ("desired", "launched", "ready", "running", "updated")

    def __init__(self, data: Any) -> None:
        self.desired: int = _field(data, "desired", int)
        self.launched: int = _field(data, "launched", int)
        self.running: int = _field(data, "running", int)
        self.ready: int = _field(data, "ready", int)
        self.updated: int = _field(data, "updated", int)


class ServiceStatus:
    """What ``get services`` and ``status`` show of a service's status."""

    __slots__ = ("conditions", "observed_generation", "observed_generation_time", "replicas")

    def __init__(self, data: Any) -> None:
        self.observed_generation: int = _field(data, "observedGeneration", int)
        self.observed_generation_time = _text(data, "observedGenerationTime")
        self.replicas = ReplicaCounts(_field(data, "replicas", dict))
        self.conditions = _conditions(data)

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


class AgentCount:
    __slots__ = ("on_newest", "total")

    def __init__(self, data: Any) -> None:
        self.total: int = _field(data, "total", int)
        self.on_newest: int = _field(data, "onNewest", int)


class ProxyStatus:
    """What ``get proxies`` and ``status`` show of a proxy's status."""

    __slots__ = ("agents", "backends", "conditions", "config_hash", "last_error", "observed_generation")

    def __init__(self, data: Any) -> None:
        self.observed_generation: int = _field(data, "observedGeneration", int)
        self.config_hash = _text(data, "configHash")
        backends: dict[str, int] = _field(data, "backends", dict)
        if not all(type(v) is int for v in backends.values()):
            raise Unsure("backends")
        self.backends = backends
        self.agents = AgentCount(_field(data, "agents", dict))
        self.conditions = _conditions(data)
        error = _field(data, "lastError", str, type(None))
        self.last_error: str | None = None if error is None else _text(data, "lastError")

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


def read_status(kind: Kind, raw: bytes) -> ServiceStatus | ProxyStatus:
    data = _decode(raw)
    return ServiceStatus(data) if kind == "services" else ProxyStatus(data)


class ServiceSpec:
    """The fields of a service's spec that ``get services`` and ``status`` show."""

    __slots__ = ("replicas",)

    def __init__(self, data: Any) -> None:
        self.replicas: int = _field(data, "replicas", int)


class JudgedKey:
    """A desired key whose revision the operator judged valid (what every light entry has)."""

    __slots__ = ("create_revision", "key", "kind", "mod_revision", "name")
    error: None = None

    def __init__(self, kind: Kind, name: str, kv: Any) -> None:
        self.kind = kind
        self.name = name
        self.key: str = kv.key
        self.create_revision: int = kv.create_revision
        self.mod_revision: int = kv.mod_revision


class Entry(JudgedKey):
    """A judged key with the fields shown of its spec."""

    __slots__ = ("spec",)
    valid = True

    def __init__(self, kind: Kind, name: str, kv: Any, spec: ServiceSpec) -> None:
        super().__init__(kind, name, kv)
        self.spec = spec


S = TypeVar("S", bound="ServiceStatus | ProxyStatus")


class StatusEntry(Generic[S]):
    """A status as read, with the revision of its key: this module's statuses, or the fuller ones
    ``describe`` reads (:mod:`fleetop.cli.lightdescribe`)."""

    __slots__ = ("mod_revision", "name", "status")
    error: None = None

    def __init__(self, name: str, status: S, mod_revision: int) -> None:
        self.name = name
        self.status = status
        self.mod_revision = mod_revision


def read_statuses(
    kind: Kind, keys: Keys, kvs: list[Any]
) -> dict[str, StatusEntry[ServiceStatus | ProxyStatus]]:
    out: dict[str, StatusEntry[ServiceStatus | ProxyStatus]] = {}
    for kv in kvs:
        name = keys.name_of(kv.key, kind, "status")
        if name is not None:
            out[name] = StatusEntry(name, read_status(kind, kv.value), kv.mod_revision)
    return out


def read_entries(
    kind: Kind, keys: Keys, kvs: list[Any], statuses: dict[str, StatusEntry[ServiceStatus | ProxyStatus]]
) -> list[Entry]:
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
        entries.append(Entry(kind, name, kv, ServiceSpec(_decode(kv.value))))
    return sorted(entries, key=lambda e: e.name)


class FleetObservation:
    __slots__ = ("endpoint", "endpoints", "error", "last_seen", "lost_since", "reachable", "tried")

    def __init__(self, data: Any) -> None:
        self.endpoints = _texts(data, "endpoints")
        self.endpoint = _text(data, "endpoint")
        self.reachable: bool = _field(data, "reachable", bool)
        self.last_seen = _text(data, "lastSeen")
        self.lost_since = _text(data, "lostSince")
        self.error = _text(data, "error")
        self.tried = _texts(data, "tried")


class OperatorObservation:
    __slots__ = ("fleet", "heartbeat", "identity", "time")

    def __init__(self, data: Any) -> None:
        self.identity = _text(data, "identity")
        self.time = _text(data, "time")
        self.heartbeat = float(_field(data, "heartbeat", int, float))
        self.fleet = FleetObservation(_field(data, "fleet", dict))


def read_observation(raw: bytes) -> OperatorObservation:
    return OperatorObservation(_decode(raw))
