"""What ``describe`` shows of a spec the operator judged, read without pydantic (:mod:`.light`).

``describe`` prints the spec as the models normalise it (defaults left out, fields in the models'
order, durations and addresses in their normal form), which only the models know. The operator's
status names the spec it judged valid by the sha256 of that normal form (``specHash``). When the status
judged exactly the revision read, found it valid, and the stored JSON re-encoded compactly has that
digest (:func:`fleetop.specjson.digest`), the stored JSON *is* the normal form: it is shown as it is.

The status and the events are read here in full, every field the models read and of exactly the type
they accept (none is defaulted: the operator writes them all), so the models would read the same
values; anything else (a field missing or of another type, an unknown condition or phase, a text with
a lone surrogate, an event that does not read) raises :class:`~fleetop.cli.light.Unsure`, and the verb
reads everything through the models instead, exactly as it would have. The classes carry the
attribute names :func:`fleetop.cli.output.format_describe` reads, so one formatting serves both.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

from fleetop.cli import light
from fleetop.cli.light import Unsure, _decode, _field, _text
from fleetop.keys import Keys, Kind
from fleetop.specjson import digest, encode_document


def _int(data: Any, name: str) -> int:
    value: int = _field(data, name, int)
    return value


def _bool(data: Any, name: str) -> bool:
    value: bool = _field(data, name, bool)
    return value


def _optional_text(data: Any, name: str) -> str | None:
    return None if _field(data, name, str, type(None)) is None else _text(data, name)


def _choice(data: Any, name: str, choices: frozenset[str]) -> str:
    value = _text(data, name)
    if value not in choices:
        raise Unsure(name)
    return value


def _list(data: Any, name: str) -> list[Any]:
    values: list[Any] = _field(data, name, list)
    return values


class UnitStatus:
    __slots__ = (
        "active_state", "current_state", "desired_state", "instance", "load_state", "machine", "name",
        "ready", "registered", "restarts", "role", "sub_state", "template",
    )  # fmt: skip

    def __init__(self, data: Any) -> None:
        self.name = _text(data, "name")
        self.role = _text(data, "role")
        self.instance = _text(data, "instance")
        self.machine = _optional_text(data, "machine")
        self.desired_state = _text(data, "desiredState")
        self.current_state = _optional_text(data, "currentState")
        self.load_state = _optional_text(data, "loadState")
        self.active_state = _optional_text(data, "activeState")
        self.sub_state = _optional_text(data, "subState")
        self.template = _text(data, "template")
        self.ready = _bool(data, "ready")
        self.registered = _bool(data, "registered")
        self.restarts = _int(data, "restarts")


def _units(data: Any) -> list[UnitStatus]:
    return [UnitStatus(u) for u in _list(data, "units")]


RESTART_PHASES = frozenset({"failed", "destroyed", "created"})
RESTART_CAUSES = frozenset({"failed", "unscheduled"})


def _check_restart(data: Any) -> None:
    """A crash-loop record: not shown, but the models read it (a bad one makes the status unreadable)."""
    for name in ("unit", "instance", "role", "lastFailure", "nextTry", "state", "machine"):
        _text(data, name)
    _choice(data, "phase", RESTART_PHASES)
    _choice(data, "cause", RESTART_CAUSES)
    _int(data, "restarts")
    _bool(data, "ran")


def _check_rollback(data: Any) -> None:
    if _field(data, "rollback", dict, type(None)) is not None:
        rollback = data["rollback"]
        for name in ("fromTemplate", "toTemplate", "time"):
            _text(rollback, name)
        _int(rollback, "generation")


def _check_last_available(data: Any) -> None:
    if _field(data, "lastAvailable", dict, type(None)) is not None:
        _text(data["lastAvailable"], "template")
        _field(data["lastAvailable"], "spec", dict)


class Backend:
    __slots__ = ("address", "key")

    def __init__(self, data: Any) -> None:
        self.key = _text(data, "key")
        self.address = _text(data, "address")


class ServiceStatus(light.ServiceStatus):
    """All of a service's status."""

    __slots__ = ("backends", "invalid_registrations", "last_error", "spec_hash", "template", "units")

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.spec_hash = _text(data, "specHash")
        self.units = _units(data)
        self.backends = [Backend(b) for b in _list(data, "backends")]
        self.invalid_registrations = _int(data, "invalidRegistrations")
        self.template = _text(data, "template")
        for restart in _list(data, "restarts"):
            _check_restart(restart)
        _check_rollback(data)
        _check_last_available(data)
        self.last_error = _optional_text(data, "lastError")


class ProxyStatus(light.ProxyStatus):
    """All of a proxy's status."""

    __slots__ = ("generation", "skipped_registrations", "spec_hash", "units")

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.spec_hash = _text(data, "specHash")
        self.generation = _int(data, "generation")
        self.skipped_registrations = _int(data, "skippedRegistrations")
        self.units = _units(data)


StatusEntry: TypeAlias = "light.StatusEntry[ServiceStatus | ProxyStatus]"
"""A status as ``describe`` reads it: a :class:`ServiceStatus` or :class:`ProxyStatus` of this module."""


class Entry(light.JudgedKey):
    """A judged key stored in the models' normal form: its spec document as stored."""

    __slots__ = ("document",)
    raw = b""

    def __init__(self, kind: Kind, name: str, kv: Any, document: dict[str, Any]) -> None:
        super().__init__(kind, name, kv)
        self.document = document


def read_described(kind: Kind, keys: Keys, name: str, kv: Any, status_kv: Any) -> tuple[Entry, StatusEntry]:
    """The spec of ``kv`` and its status, when the status judged this very revision valid and names
    the stored value as the normal form; :class:`Unsure` otherwise."""
    if kv is None or keys.name_of(kv.key, kind) != name:
        raise Unsure("not found")  # the store words that
    if status_kv is None:
        raise Unsure("not judged")
    data = _decode(status_kv.value)
    status = ServiceStatus(data) if kind == "services" else ProxyStatus(data)
    if status.observed_generation != kv.mod_revision:
        raise Unsure("not judged at this revision")
    invalid = status.condition("Invalid")
    if invalid is not None and invalid.status != "False":
        raise Unsure("judged invalid")
    document = _decode(kv.value)
    if not isinstance(document, dict) or not status.spec_hash:
        raise Unsure("no judged form")
    if digest(encode_document(document)) != status.spec_hash:
        raise Unsure("not stored in the normal form")  # the models normalise it
    return Entry(kind, name, kv, document), light.StatusEntry(name, status, status_kv.mod_revision)


EVENT_KINDS = frozenset({"Service", "Proxy"})
EVENT_TYPES = frozenset({"Normal", "Warning"})


class Event:
    __slots__ = ("count", "kind", "message", "name", "reason", "time", "type")

    def __init__(self, data: Any) -> None:
        self.kind = _choice(data, "kind", EVENT_KINDS)
        self.name = _text(data, "name")
        self.type = _choice(data, "type", EVENT_TYPES)
        self.reason = _text(data, "reason")
        self.message = _text(data, "message")
        self.time = _text(data, "time")
        self.count = _int(data, "count")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise Unsure("a duplicate key")  # which one wins is the JSON parser's choice
    return out


def _event(raw: bytes) -> Event:
    try:
        return Event(json.loads(raw.decode("utf-8"), object_pairs_hook=_unique))
    except (ValueError, RecursionError):  # not UTF-8 or not JSON: the models skip it, or not
        raise Unsure("event") from None


def read_events(kvs: list[Any], *, since_revision: int, limit: int) -> list[Event]:
    """The events of ``kvs`` first written after ``since_revision``, oldest first, the last ``limit``
    (as :meth:`fleetop.store.StoreReader.events` reads them)."""
    events = [_event(kv.value) for kv in kvs if kv.create_revision > since_revision]
    events.sort(key=lambda e: e.time)
    return events[-limit:]
