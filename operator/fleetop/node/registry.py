"""The node's durable state, playing the part fleet gives etcd: units (name, options, desired state),
where each unit is scheduled, machine metadata overrides, and which machines are stopped.

Each unit is one JSON file under ``units/`` (its options, desired state and machine), and the machine
state is ``registry.json``; every file is rewritten atomically (temporary file, fsync, rename, fsync
of the directory; once for all the files a scheduling pass changed, which are written side by side), so
a node killed at any moment restarts from either the old or the new state of each file and never from
half a file. A change writes only what it changed: with thousands of units,
rewriting everything on every change would make creating them quadratic. Files are 0600 and
directories 0700: unit options can hold secrets.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetop.errors import ConfigError
from fleetop.filemodes import make_dir
from fleetop.fleet.units import UnitOption, unit_hash

FORMAT_VERSION = 2
SAVE_THREADS = 8
"""Unit files written at the same time when one change (a scheduling pass) saves several."""
REGISTRY_FILE = "registry.json"
UNITS_DIR = "units"


@dataclass(frozen=True, slots=True)
class StoredUnit:
    """A unit as the node keeps it: options in stored (regrouped) order, desired state, hash."""

    name: str
    options: tuple[UnitOption, ...]
    desired_state: str
    hash: str = field(init=False, compare=False, repr=False)
    """SHA-1 of the serialized unit file, computed once: every engine pass reads it for every unit."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", unit_hash(self.options))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "desiredState": self.desired_state,
            "options": [[o.section, o.name, o.value] for o in self.options],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredUnit:
        options = tuple(UnitOption(str(s), str(n), str(v)) for s, n, v in data["options"])
        return cls(str(data["name"]), options, str(data["desiredState"]))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; tighten it if it already exists."""
    return make_dir(path)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir
    (``sync_dir=False``: the caller fsyncs the directory once after several writes, :func:`sync_dir`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the renames into ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Registry:
    """In-memory state with write-through persistence. Every mutator saves what it changed."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / REGISTRY_FILE
        self.units_dir = state_dir / UNITS_DIR
        self.units: dict[str, StoredUnit] = {}
        self.placements: dict[str, str] = {}
        self.metadata_overrides: dict[str, dict[str, str | None]] = {}
        self.stopped_machines: set[str] = set()

    # -- persistence -------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the registry; a missing one is empty. A version-1 registry (one file) is converted."""
        ensure_private_dir(self.state_dir)
        ensure_private_dir(self.units_dir)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.save()
            return
        try:
            data = json.loads(raw)
            version = data.get("version")
            if version not in (1, FORMAT_VERSION):
                raise ValueError(f"unsupported format version {version!r}")
            self.metadata_overrides = {
                str(m): {str(k): (None if v is None else str(v)) for k, v in keys.items()}
                for m, keys in data.get("metadataOverrides", {}).items()
            }
            self.stopped_machines = {str(m) for m in data.get("stoppedMachines", [])}
            if version == 1:
                self._convert(data)
                return
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path}: unreadable node registry: {exc}") from exc
        for path in sorted(self.units_dir.glob("*.json")):
            self._load_unit(path)

    def _load_unit(self, path: Path) -> None:
        try:
            data = json.loads(path.read_bytes())
            unit = StoredUnit.from_json(data)
            machine = data.get("machine")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: unreadable unit record: {exc}") from exc
        self.units[unit.name] = unit
        if machine:
            self.placements[unit.name] = str(machine)

    def _convert(self, data: Mapping[str, Any]) -> None:
        units = [StoredUnit.from_json(u) for u in data.get("units", [])]
        self.units = {u.name: u for u in units}
        self.placements = {str(k): str(v) for k, v in data.get("placements", {}).items()}
        for unit in units:
            self._save_unit(unit.name)
        self.save()

    def save(self) -> None:
        """The machine part (metadata overrides, stopped machines)."""
        data = {
            "version": FORMAT_VERSION,
            "metadataOverrides": self.metadata_overrides,
            "stoppedMachines": sorted(self.stopped_machines),
        }
        ensure_private_dir(self.state_dir)
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=False).encode("utf-8") + b"\n")

    def _unit_path(self, name: str) -> Path:
        # Unit names are [A-Za-z0-9:_.@-] (checked before they get here): safe as file names.
        return self.units_dir / f"{name}.json"

    def _save_unit(self, name: str, *, sync_dir: bool = True) -> None:
        record = {**self.units[name].to_json(), "machine": self.placements.get(name)}
        ensure_private_dir(self.units_dir)
        data = json.dumps(record, separators=(",", ":")).encode("utf-8")
        atomic_write(self._unit_path(name), data, sync_dir=sync_dir)

    def _save_units(self, names: Sequence[str]) -> None:
        """Save several units: their files written side by side (the file system commits concurrent
        fsyncs together) and the directory fsynced once, not once per file. Returns when all are
        durable, as one save each would."""
        if len(names) < 2:
            for name in names:
                self._save_unit(name)
            return
        ensure_private_dir(self.units_dir)
        with ThreadPoolExecutor(min(SAVE_THREADS, len(names)), thread_name_prefix="registry") as pool:
            for _ in pool.map(functools.partial(self._save_unit, sync_dir=False), names):
                pass
        fsync_dir(self.units_dir)

    # -- units -------------------------------------------------------------------------------------

    def get(self, name: str) -> StoredUnit | None:
        return self.units.get(name)

    def sorted_units(self) -> list[StoredUnit]:
        return [self.units[name] for name in sorted(self.units)]

    def put_unit(self, unit: StoredUnit) -> None:
        self.units[unit.name] = unit
        self._save_unit(unit.name)

    def set_desired_state(self, name: str, state: str) -> None:
        unit = self.units[name]
        self.units[name] = StoredUnit(unit.name, unit.options, state)
        self._save_unit(name)

    def delete_unit(self, name: str) -> bool:
        if self.units.pop(name, None) is None:
            return False
        self.placements.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            self._unit_path(name).unlink()
        return True

    def set_placements(self, placements: Mapping[str, str]) -> None:
        """Replace the schedule; saves the units whose machine changed."""
        changed = {
            n
            for n in self.placements.keys() | placements.keys()
            if self.placements.get(n) != placements.get(n)
        }
        self.placements = dict(placements)
        self._save_units([name for name in sorted(changed) if name in self.units])

    # -- machines ----------------------------------------------------------------------------------

    def apply_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        """Set (``value``) or hide (None) a metadata key of a machine, known or not."""
        self.metadata_overrides.setdefault(machine_id, {})[key] = value

    def apply_metadata_ops(self, ops: Sequence[tuple[str, str, str | None]]) -> None:
        """Several (machine, key, value-or-None) edits, saved once."""
        for machine_id, key, value in ops:
            self.apply_metadata(machine_id, key, value)
        self.save()

    def effective_metadata(self, machine_id: str, base: Mapping[str, str]) -> dict[str, str]:
        """A machine's configured metadata with the API's overrides applied."""
        merged = dict(base)
        for key, value in self.metadata_overrides.get(machine_id, {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def set_machine_stopped(self, machine_id: str, stopped: bool) -> None:
        if stopped:
            self.stopped_machines.add(machine_id)
        else:
            self.stopped_machines.discard(machine_id)
        self.save()
