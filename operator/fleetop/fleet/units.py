"""Units as fleet stores them: options, the serialized unit file, its hash, and the name rules.

fleet keeps a unit as a unit file and parses options back from it, so options come back regrouped by
section (in order of each section's first appearance) and an empty value loses its ``value`` key.
The unit hash is the SHA-1 of that serialized file (``fleet-observed.md`` §5). Both the client and
``fleetop node`` use these functions, so they agree on hashes byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from sys import intern

UNIT_TYPES = frozenset(
    {
        "automount",
        "busname",
        "device",
        "mount",
        "path",
        "scope",
        "service",
        "slice",
        "snapshot",
        "socket",
        "swap",
        "target",
        "timer",
    }
)
TEMPLATE_TYPES = frozenset({"path", "service", "socket", "target", "timer"})
DESIRED_STATES = ("inactive", "loaded", "launched")
MAX_NAME_LENGTH = 256
MAX_LINE_BYTES = 2048
_VALID_CHARS = re.compile(r"[A-Za-z0-9:_.@\-]")


@dataclass(frozen=True, slots=True)
class UnitOption:
    """One ``Name=Value`` line of a unit file, in ``[section]``."""

    section: str
    name: str
    value: str

    def to_json(self) -> dict[str, str]:
        """fleet's wire form: key order name, section, value; empty values lose ``value``."""
        out: dict[str, str] = {"name": self.name}
        if self.section:
            out["section"] = self.section
        if self.value:
            out["value"] = self.value
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> UnitOption:
        """Read an option the way fleet's Go decoder does: keys matched case-insensitively."""
        lowered = {str(k).lower(): v for k, v in data.items()}
        fields: dict[str, str] = {}
        for key in ("section", "name", "value"):
            value = lowered.get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"option field {key!r} must be a string")
            fields[key] = value
        # interned: the operator keeps every unit of a large cluster, and their sections, names and
        # most values (one command line for all of a service's instances) repeat
        return cls(intern(fields["section"]), intern(fields["name"]), intern(fields["value"]))


def regroup(options: Iterable[UnitOption]) -> list[UnitOption]:
    """Options in stored order: grouped by section, sections in order of first appearance."""
    order: list[str] = []
    groups: dict[str, list[UnitOption]] = {}
    for option in options:
        if option.section not in groups:
            groups[option.section] = []
            order.append(option.section)
        groups[option.section].append(option)
    return [option for section in order for option in groups[section]]


def serialize(options: Iterable[UnitOption]) -> str:
    """The unit file fleet stores: ``[Section]`` headers, ``Name=Value`` lines, blank line between."""
    blocks: list[str] = []
    current: str | None = None
    lines: list[str] = []
    for option in regroup(options):
        if option.section != current:
            if current is not None:
                blocks.append("\n".join(lines) + "\n")
            current = option.section
            lines = [f"[{option.section}]"]
        lines.append(f"{option.name}={option.value}")
    if current is not None:
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def unit_hash(options: Iterable[UnitOption]) -> str:
    """The SHA-1 of the serialized unit file, as fleet reports it in UnitState.hash."""
    return hashlib.sha1(serialize(options).encode("utf-8"), usedforsecurity=False).hexdigest()


def parse_unit_file(text: str) -> list[UnitOption]:
    """Parse a unit file (``fleetctl submit`` style) into options. Comments and blank lines are skipped;
    a trailing backslash continues a line, as systemd does."""
    options: list[UnitOption] = []
    section = ""
    pending = ""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"line {lineno}: malformed section header {line!r}")
            section = line[1:-1]
            continue
        if "=" not in line:
            raise ValueError(f"line {lineno}: expected Name=Value, got {line!r}")
        name, _, value = line.partition("=")
        options.append(UnitOption(section, name.strip(), value.strip()))
    return options


@dataclass(frozen=True, slots=True)
class UnitName:
    """A parsed unit name: ``prefix@instance.type`` (``instance`` is None for a plain unit)."""

    full: str
    prefix: str
    instance: str | None
    type: str

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)


def parse_unit_name(name: str) -> UnitName:
    """Validate a unit name with fleet's rules and messages; raises ValueError with fleet's text."""
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"unit name exceeds maximum length ({MAX_NAME_LENGTH})")
    if "." not in name:
        raise ValueError('unit name must contain "."')
    if name.startswith("@"):
        raise ValueError('unit name cannot start in "@"')
    if name.endswith("."):
        raise ValueError('unit name cannot end in "."')
    for char in name:
        if not _VALID_CHARS.fullmatch(char):
            raise ValueError(f"invalid character {char!r} in unit name")
    base, _, unit_type = name.rpartition(".")
    if "@" in base:
        prefix, _, instance = base.partition("@")
        if instance == "" and unit_type not in TEMPLATE_TYPES:
            if unit_type not in UNIT_TYPES:
                raise ValueError(f'invalid unit type: "{unit_type}"')
            raise ValueError(f'invalid unit type for template: "{unit_type}"')
    else:
        prefix, instance = base, None
    if unit_type not in UNIT_TYPES:
        raise ValueError(f'invalid unit type: "{unit_type}"')
    return UnitName(name, prefix, instance, unit_type)


def template_name(name: str) -> str | None:
    """``web@8001.service`` → ``web@.service``; None when the name is not an instance."""
    parsed = parse_unit_name(name)
    if not parsed.is_instance:
        return None
    return f"{parsed.prefix}@.{parsed.type}"


def check_option_values(options: Sequence[UnitOption]) -> None:
    """Refuse what would break the unit file apart: newlines in any field, over-long lines,
    brackets or ``=`` in names. Raises ValueError naming the option."""
    for option in options:
        for field_name, text in (("section", option.section), ("name", option.name), ("value", option.value)):
            if "\n" in text or "\r" in text or "\x00" in text:
                raise ValueError(f"option {option.section}.{option.name}: {field_name} contains a newline")
        if any(c in option.name for c in "=[]") or not option.name.strip():
            raise ValueError(f"option name {option.name!r} is not a valid unit file key")
        if any(c in option.section for c in "[]"):
            raise ValueError(f"option section {option.section!r} is not a valid section name")
        if len(f"{option.name}={option.value}".encode()) > MAX_LINE_BYTES:
            raise ValueError(f"line too long (max {MAX_LINE_BYTES} bytes)")


def option_values(options: Iterable[UnitOption], section: str, name: str) -> list[str]:
    """All values of ``[section] name`` in order."""
    return [o.value for o in options if o.section == section and o.name == name]
