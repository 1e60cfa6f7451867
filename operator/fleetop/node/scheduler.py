"""fleet's scheduling rules as a pure function: units, machines and current placements in, placements out.

No I/O, no clock, no randomness: the same inputs always give the same placements, so the engine can call
it on every change and the rules can be tested with large tables. The rules are fleet's
(``unit-files-and-scheduling.md``, ``fleet-observed.md`` §10):

- ``[X-Fleet]`` values are parsed like fleet's ``parseMultivalueLine`` (``"a=b" "c=d"`` is two values)
  and get the specifiers %n %N %p %i substituted. The pre-0.8 ``X-Condition*`` / ``X-Conflicts`` names
  still work.
- MachineID pins; MachineOf follows a scheduled (non-global) target; MachineMetadata is AND across keys,
  OR within a key; Conflicts are globs (Go ``path.Match``) checked in both directions, against global
  units too; Replaces avoids the replaced unit's machine, and evicts it only when nowhere else fits.
- A placed unit stays where it is while its machine lives and its requirements still hold; otherwise it
  is unscheduled and placed again. New placements go to the least-loaded eligible machine (fewest
  non-global units, ties by machine id), in unit-name order, repeated until nothing changes.
- Global units run on every live machine that matches their MachineMetadata and has no conflict.
- Units that cannot be placed stay unscheduled, silently, as in fleet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain

from fleetop.fleet.units import UnitOption, parse_unit_name

FLEET_SECTION = "X-Fleet"
SCHEDULED_STATES = frozenset({"loaded", "launched"})
_DEPRECATED = {
    "X-ConditionMachineID": "MachineID",
    "X-ConditionMachineOf": "MachineOf",
    "X-ConditionMachineMetadata": "MachineMetadata",
    "X-Conflicts": "Conflicts",
}


def parse_multivalue(line: str) -> list[str]:
    """fleet's ``parseMultivalueLine``: a line of quoted values separated by spaces, else one value."""
    if not (line.startswith('"') and line.endswith('"')):
        return [line]
    values: list[str] = []
    current: list[str] = []
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
            continue
        if char == " " and not quoted:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def expand_specifiers(value: str, unit_name: str) -> str:
    """fleet's ``unitPrintf``: %n full name, %N name without type, %p prefix, %i instance."""
    base, dot, _ = unit_name.rpartition(".")
    if not dot:
        return value
    prefix, at, instance = base.partition("@")
    if not at:
        prefix, instance = base, ""
    out = value.replace("%n", unit_name)
    out = out.replace("%N", base)
    out = out.replace("%p", prefix)
    return out.replace("%i", instance)


def go_quote(text: str) -> str:
    """Go's ``%q`` for the printable names that reach error messages."""
    return json.dumps(text, ensure_ascii=False)


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """Go ``path.Match`` syntax as a regex; None for a malformed pattern (which never matches)."""
    out: list[str] = []
    i, n = 0, len(pattern)

    def read_char(pos: int) -> tuple[str, int] | None:
        if pos >= n or pattern[pos] in "-]":
            return None
        if pattern[pos] == "\\":
            pos += 1
            if pos >= n:
                return None
        if pos + 1 >= n:  # a class must still be closed after this character
            return None
        return pattern[pos], pos + 1

    while i < n:
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "\\":
            if i + 1 >= n:
                return None
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            i += 1 if negated else 0
            ranges: list[str] = []
            count = 0
            while not (i < n and pattern[i] == "]" and count > 0):
                lo = read_char(i)
                if lo is None:
                    return None
                low, i = lo
                high = low
                if pattern[i] == "-":
                    hi = read_char(i + 1)
                    if hi is None:
                        return None
                    high, i = hi
                if low <= high:
                    ranges.append(f"\\U{ord(low):08x}-\\U{ord(high):08x}")
                count += 1
            i += 1
            if ranges:
                out.append(("[^" if negated else "[") + "".join(ranges) + "]")
            else:
                out.append("(?s:.)" if negated else "(?!)")
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match(pattern, name)``; a malformed pattern matches nothing."""
    regex = _glob_regex(pattern)
    return regex is not None and regex.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Requirements:
    """A unit's ``[X-Fleet]`` requirements with specifiers expanded."""

    machine_id: str | None = None
    peers: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    metadata: Mapping[str, frozenset[str]] = field(default_factory=dict)
    is_global: bool = False


def requirements(name: str, options: Iterable[UnitOption]) -> Requirements:
    """Read ``[X-Fleet]`` the way fleet's Job does (multi-values, deprecated names, specifiers)."""
    values: dict[str, list[str]] = {}
    for option in options:
        if option.section != FLEET_SECTION:
            continue
        key = _DEPRECATED.get(option.name, option.name)
        values.setdefault(key, []).extend(expand_specifiers(v, name) for v in parse_multivalue(option.value))
    metadata: dict[str, set[str]] = {}
    for pair in values.get("MachineMetadata", []):
        parts = pair.split("=")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            continue
        metadata.setdefault(parts[0], set()).add(parts[1])
    globals_ = values.get("Global", [])
    machine_ids = values.get("MachineID", [])
    return Requirements(
        machine_id=machine_ids[0] if machine_ids else None,
        peers=tuple(values.get("MachineOf", [])),
        conflicts=tuple(values.get("Conflicts", [])),
        replaces=tuple(values.get("Replaces", [])),
        metadata={k: frozenset(v) for k, v in metadata.items()},
        is_global=bool(globals_) and globals_[-1].lower() == "true",
    )


def validate_requirements(name: str, options: Iterable[UnitOption]) -> None:
    """fleet's ``ValidateRequirements``: raise ValueError with fleet's exact message."""
    req = requirements(name, options)
    if req.machine_id is not None:
        for present, what in (
            (req.peers, "Peers"),
            (req.conflicts, "Conflicts"),
            (req.is_global, "Global"),
            (req.replaces, "Replaces"),
        ):
            if present:
                raise ValueError(f"MachineID cannot be used with {what}")
    if req.is_global:
        if req.peers:
            raise ValueError("Global cannot be used with Peers")
        if req.replaces:
            raise ValueError("Global cannot be used with Replaces")
    if req.conflicts and req.replaces:
        raise ValueError("Conflicts cannot be used with Replaces")
    for peer in req.peers:
        for conflict in req.conflicts:
            if glob_match(conflict, peer):
                raise ValueError(
                    f"unresolvable requirements: peer {go_quote(peer)} matches conflict {go_quote(conflict)}"
                )
        for replace in req.replaces:
            if glob_match(replace, peer):
                raise ValueError(
                    f"unresolvable requirements: peer {go_quote(peer)} matches replace {go_quote(replace)}"
                )


@dataclass(frozen=True, slots=True)
class SchedUnit:
    """What the scheduler needs of a unit."""

    name: str
    options: tuple[UnitOption, ...]
    desired_state: str


@dataclass(frozen=True, slots=True)
class SchedMachine:
    """What the scheduler needs of a live machine."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The decision: one machine per placed non-global unit, the machines of each global unit, and the
    names of units that want a machine but have none."""

    placements: Mapping[str, str]
    global_placements: Mapping[str, tuple[str, ...]]
    unscheduled: tuple[str, ...]


def _schedulable(unit: SchedUnit) -> Requirements | None:
    """Requirements of a unit that wants a machine; None for inactive, templates and invalid units."""
    if unit.desired_state not in SCHEDULED_STATES:
        return None
    return _requirements_of(unit.name, unit.options)


@lru_cache(maxsize=1 << 16)
def _requirements_of(name: str, options: tuple[UnitOption, ...]) -> Requirements | None:
    """Parsed once per unit file rather than on every pass: a pass reads every unit."""
    try:
        if parse_unit_name(name).is_template:
            return None
        validate_requirements(name, options)
    except ValueError:
        return None
    return requirements(name, options)


class _Cluster:
    """Mutable working state of one ``schedule`` call."""

    def __init__(self, reqs: Mapping[str, Requirements], machines: Sequence[SchedMachine]) -> None:
        self.reqs = reqs
        self.machines = {m.id: m for m in machines}
        self.on: dict[str, set[str]] = {m.id: set() for m in machines}
        self.global_on: dict[str, set[str]] = {m.id: set() for m in machines}
        self.placement: dict[str, str] = {}
        # Units that can object to a neighbour (Conflicts or Replaces of their own).
        self.constrained = frozenset(u for u, r in reqs.items() if r.conflicts or r.replaces)

    def place(self, unit: str, machine: str) -> None:
        self.placement[unit] = machine
        self.on[machine].add(unit)

    def remove(self, unit: str) -> None:
        machine = self.placement.pop(unit, None)
        if machine is not None:
            self.on[machine].discard(unit)

    def conflicts(self, unit: str, machine: str) -> bool:
        """Whether ``unit`` conflicts with anything on ``machine``, in either direction.

        Only units with Conflicts or Replaces of their own can object to a neighbour, so a unit without
        them is checked against those few only: with thousands of plain units per machine, checking
        every pair on every pass would make scheduling quadratic."""
        mine = self.reqs[unit]
        if mine.conflicts:
            others: Iterable[str] = chain(self.on[machine], self.global_on[machine])
        else:
            others = (o for o in self.constrained if self._is_on(o, machine))
        for other in others:
            if other == unit:
                continue
            if any(glob_match(p, other) for p in mine.conflicts):
                return True
            if any(glob_match(p, unit) for p in self.reqs[other].conflicts):
                return True
            if any(glob_match(p, unit) for p in self.reqs[other].replaces):
                return True
        return False

    def _is_on(self, unit: str, machine: str) -> bool:
        return unit in self.on[machine] or unit in self.global_on[machine]

    def able(self, unit: str, machine: str) -> bool:
        """fleet's ``AbleToRun`` minus Replaces: pin, metadata, peers, conflicts (both ways)."""
        req = self.reqs[unit]
        if req.machine_id is not None and req.machine_id != machine:
            return False
        metadata = self.machines[machine].metadata
        if any(metadata.get(key) not in allowed for key, allowed in req.metadata.items()):
            return False
        if any(peer not in self.on[machine] or peer == unit for peer in req.peers):
            return False
        return not self.conflicts(unit, machine)

    def replaced_on(self, unit: str, machine: str) -> list[str]:
        patterns = self.reqs[unit].replaces
        return sorted(o for o in self.on[machine] if o != unit and any(glob_match(p, o) for p in patterns))

    def load_order(self) -> list[str]:
        return sorted(self.machines, key=lambda m: (len(self.on[m]), m))


def _revalidate(cluster: _Cluster) -> bool:
    changed = False
    for unit in sorted(cluster.placement):
        machine = cluster.placement[unit]
        cluster.on[machine].discard(unit)
        if cluster.able(unit, machine):
            cluster.on[machine].add(unit)
        else:
            del cluster.placement[unit]
            changed = True
    return changed


def _place_globals(cluster: _Cluster, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    for machine in cluster.global_on:
        cluster.global_on[machine] = set()
    result: dict[str, tuple[str, ...]] = {}
    for unit in names:
        chosen = []
        for machine in sorted(cluster.machines):
            if cluster.able(unit, machine):
                cluster.global_on[machine].add(unit)
                chosen.append(machine)
        result[unit] = tuple(chosen)
    return result


def _place_new(cluster: _Cluster, names: Sequence[str]) -> bool:
    changed = False
    for unit in names:
        if unit in cluster.placement:
            continue
        candidates = [m for m in cluster.load_order() if cluster.able(unit, m)]
        free = [m for m in candidates if not cluster.replaced_on(unit, m)]
        if free:
            cluster.place(unit, free[0])
        elif candidates:
            for evicted in cluster.replaced_on(unit, candidates[0]):
                cluster.remove(evicted)
            cluster.place(unit, candidates[0])
        else:
            continue
        changed = True
    return changed


def schedule(
    units: Iterable[SchedUnit],
    machines: Iterable[SchedMachine],
    current: Mapping[str, str] | None = None,
) -> Schedule:
    """Decide where every unit that wants a machine runs. ``current`` maps unit name to the machine it
    was placed on before; placements on machines that are gone or no longer suitable are redone."""
    reqs = {u.name: r for u in units if (r := _schedulable(u)) is not None}
    cluster = _Cluster(reqs, sorted(machines, key=lambda m: m.id))
    regular = sorted(name for name, r in reqs.items() if not r.is_global)
    globals_ = sorted(name for name, r in reqs.items() if r.is_global)
    placeable = set(regular)
    for unit, machine in sorted((current or {}).items()):
        if unit in placeable and machine in cluster.machines:
            cluster.place(unit, machine)
    global_placements: dict[str, tuple[str, ...]] = {}
    for _ in range(2 * len(regular) + 2):
        changed = _revalidate(cluster)
        global_placements = _place_globals(cluster, globals_)
        changed = _place_new(cluster, regular) or changed
        if not changed:
            break
    unscheduled = tuple(u for u in regular if u not in cluster.placement)
    unscheduled += tuple(g for g in globals_ if not global_placements.get(g))
    return Schedule(dict(cluster.placement), global_placements, unscheduled)


PLAIN = Requirements()
"""The requirements of a unit without ``[X-Fleet]`` options."""


def is_plain(unit: SchedUnit) -> bool:
    """Whether ``unit`` is irrelevant to every other unit's placement and needs nothing of a machine:
    it does not want one, or it wants one with no ``[X-Fleet]`` requirements."""
    req = _schedulable(unit)
    return req is None or req == PLAIN


def place_plain(
    current: Mapping[str, str],
    changed: Mapping[str, SchedUnit | None],
    machines: Iterable[SchedMachine],
) -> dict[str, str] | None:
    """:func:`schedule`'s placements after a change of a few units, without revisiting the others,
    for a cluster whose units are all plain (:func:`is_plain`).

    ``current`` is the schedule of the same live machines before the change and ``changed`` the units
    changed since (None: deleted). Plain units stay where they are, those that no longer want a machine
    leave it, and new ones go, in name order, to the least-loaded machine, as :func:`schedule` would
    place them. None if a changed unit is not plain: the caller runs :func:`schedule`."""
    placements = dict(current)
    new = []
    for name, unit in changed.items():
        req = None if unit is None else _schedulable(unit)
        if req is None:
            placements.pop(name, None)
        elif req != PLAIN:
            return None
        elif name not in placements:
            new.append(name)
    ids = sorted(m.id for m in machines)
    if new and ids:
        load = dict.fromkeys(ids, 0)
        for machine in placements.values():
            if machine not in load:
                return None
            load[machine] += 1
        for name in sorted(new):
            chosen = min(ids, key=lambda m: (load[m], m))
            placements[name] = chosen
            load[chosen] += 1
    return placements
