"""fleet's API v1 entities as typed, immutable values: Unit, UnitState, Machine.

``to_json`` produces exactly what fleet serves (``fleet-observed.md`` §5): keys in alphabetical order
(Go struct order), every field ``omitempty``. ``from_json`` decodes the way fleet's Go decoder does:
keys match case-insensitively (the last of several spellings wins) and unknown keys are ignored, so the
same functions read real fleet's answers and the bodies clients send to ``fleetop node``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from fleetop.fleet.units import DESIRED_STATES, UnitOption, regroup, unit_hash


def fold_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keys lower-cased, in order; a later spelling of the same key wins (Go's EqualFold matching)."""
    return {str(key).lower(): value for key, value in data.items()}


def _str_field(data: Mapping[str, Any], key: str, entity: str) -> str | None:
    """A string field, interned: states, machine ids and hashes repeat across a cluster's units."""
    value = data.get(key.lower())
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{entity}.{key} must be a string, not {type(value).__name__}")
    return intern(value)


def _object(data: object, entity: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{entity} must be a JSON object, not {type(data).__name__}")
    return fold_keys(data)


def is_desired_state(value: str) -> bool:
    """True for the three states fleet accepts: inactive, loaded, launched."""
    return value in DESIRED_STATES


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit as fleet describes it. ``machine_id`` None means unscheduled (fleet omits the key);
    ``current_state`` None means fleet omitted it (a global unit fetched on its own)."""

    name: str
    options: tuple[UnitOption, ...] = ()
    desired_state: str = ""
    current_state: str | None = None
    machine_id: str | None = None

    @property
    def hash(self) -> str:
        """The unit file's SHA-1, as UnitState.hash reports it."""
        return unit_hash(self.options)

    @property
    def scheduled(self) -> bool:
        return bool(self.machine_id)

    def option_values(self, section: str, name: str) -> list[str]:
        return [o.value for o in self.options if o.section == section and o.name == name]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.current_state:
            out["currentState"] = self.current_state
        if self.desired_state:
            out["desiredState"] = self.desired_state
        if self.machine_id:
            out["machineID"] = self.machine_id
        if self.name:
            out["name"] = self.name
        if self.options:
            out["options"] = [o.to_json() for o in regroup(self.options)]
        return out

    @classmethod
    def from_json(cls, data: object) -> Unit:
        obj = _object(data, "Unit")
        raw_options = obj.get("options") or []
        if not isinstance(raw_options, list):
            raise ValueError("Unit.options must be a JSON array")
        options = []
        for item in raw_options:
            if item is None:
                continue
            options.append(UnitOption.from_json(_object(item, "UnitOption")))
        return cls(
            name=_str_field(obj, "name", "Unit") or "",
            options=tuple(options),
            desired_state=_str_field(obj, "desiredState", "Unit") or "",
            current_state=_str_field(obj, "currentState", "Unit") or None,
            machine_id=_str_field(obj, "machineID", "Unit") or None,
        )


@dataclass(frozen=True, slots=True)
class UnitState:
    """What an agent reports for a unit loaded on its machine (systemd's three states)."""

    name: str
    hash: str
    machine_id: str
    load_state: str
    active_state: str
    sub_state: str

    def to_json(self) -> dict[str, Any]:
        pairs = (
            ("hash", self.hash),
            ("machineID", self.machine_id),
            ("name", self.name),
            ("systemdActiveState", self.active_state),
            ("systemdLoadState", self.load_state),
            ("systemdSubState", self.sub_state),
        )
        return {key: value for key, value in pairs if value}

    @classmethod
    def from_json(cls, data: object) -> UnitState:
        obj = _object(data, "UnitState")

        def get(key: str) -> str:
            return _str_field(obj, key, "UnitState") or ""

        return cls(
            name=get("name"),
            hash=get("hash"),
            machine_id=get("machineID"),
            load_state=get("systemdLoadState"),
            active_state=get("systemdActiveState"),
            sub_state=get("systemdSubState"),
        )


@dataclass(frozen=True, slots=True)
class Machine:
    """A live machine: its id, the address to reach it, and its metadata."""

    id: str
    primary_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.metadata:
            out["metadata"] = {k: self.metadata[k] for k in sorted(self.metadata)}
        if self.primary_ip:
            out["primaryIP"] = self.primary_ip
        return out

    @classmethod
    def from_json(cls, data: object) -> Machine:
        obj = _object(data, "Machine")
        raw_meta = obj.get("metadata") or {}
        if not isinstance(raw_meta, Mapping):
            raise ValueError("Machine.metadata must be a JSON object")
        metadata: dict[str, str] = {}
        for key, value in raw_meta.items():
            if not isinstance(value, str):
                raise ValueError(f"Machine.metadata[{key!r}] must be a string")
            metadata[str(key)] = value
        return cls(
            id=_str_field(obj, "id", "Machine") or "",
            primary_ip=_str_field(obj, "primaryIP", "Machine") or "",
            metadata=metadata,
        )


@dataclass(frozen=True, slots=True)
class MetadataOp:
    """One machine-metadata edit for ``PATCH /machines``: op is add, replace or remove."""

    op: str
    machine_id: str
    key: str
    value: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": f"/{self.machine_id}/metadata/{self.key}"}
        if self.op != "remove":
            out["value"] = {"value": self.value}
        return out


def options_from_pairs(pairs: Sequence[tuple[str, str, str]]) -> tuple[UnitOption, ...]:
    """``[(section, name, value), ...]`` as options; a convenience for callers and tests."""
    return tuple(UnitOption(section, name, value) for section, name, value in pairs)
