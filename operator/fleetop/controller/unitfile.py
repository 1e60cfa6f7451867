"""What every unit fleetop writes has in common, services' and managed proxies' alike.

fleet units are immutable and fleet has no templates of its own (``fleet-observed.md`` §9): every
instance is PUT with its full options. Both renderers (:mod:`fleetop.controller.services.unitrender`,
:mod:`fleetop.controller.proxies.units`) build a body of options and hand it to :func:`finish_unit`,
which adds the ownership mark (:mod:`fleetop.fleet.ownership`), orders the options as fleet stores
them, and refuses values a unit file cannot carry.

What the units take from the installation rather than from a spec is one :class:`UnitSettings`:
fleetop's absolute path on the machines, the key root, and the credentials file of each kind of unit
(sidekick, proxy agent, proxy instance: ``EnvironmentFile=`` read after the shared environment files,
so each kind connects to etcd as its own user with its own role, never with one user holding the
union of every role). systemd looks a bare program name up only in its own fixed search path, so a
unit that says ``fleetop register`` fails with 203/EXEC wherever fleetop lives in a virtualenv; units
name fleetop by its path instead. The settings are rendered into the units like everything else, so
changing them is a new template (a rolling update).

``Template=`` is a short sha256 of the unit's options without the ownership section and with the
instance written as ``%i``, so all instances of one spec share it and a changed spec is a new
template (a rolling update).

Quoting follows systemd's command-line and ``Environment=`` parsers: arguments that need it are
double-quoted with ``\\`` and ``"`` escaped. ``${VAR}`` and ``%`` specifiers are left alone on
purpose: they expand in the unit (``%i`` is the instance), exactly as in a hand-written unit file;
write ``$$`` and ``%%`` for literal characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fleetop.errors import RenderError
from fleetop.fleet.ownership import OWNER_SECTION, owner_options
from fleetop.fleet.units import UnitOption, check_option_values, regroup, serialize
from fleetop.models.service import Placement, ServiceSpec

INSTANCE_SPECIFIER = "%i"
TEMPLATE_LENGTH = 12
"""Hex digits of sha256 kept in ``Template=``: short enough to read in ``fleetctl cat``, and a
collision between two specs of one service is negligible."""
DEFAULT_FLEETOP = "/opt/fleetop/bin/fleetop"
"""The fleetop the renderers name when nothing else is said (the README's install, a virtualenv in
``/opt/fleetop``). ``fleetop run`` always says: the fleetop that runs it, or ``--fleetop-path``."""
SIDEKICK_ENVIRONMENT_FILES = ("-/etc/environment", "-/etc/etcd.environment")
_BARE_ARG = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@%+")
_PROGRAM_PATH = _BARE_ARG - {"%", ":", "=", ","}
"""Characters of a program path written bare as the first word of ``ExecStart``: nothing systemd
would split on, unquote, or expand (``%`` specifiers, ``$`` variables)."""
PROGRAM_PATH_MAX = 4095


def program_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name the program of an ``ExecStart``, or None when it can."""
    if not path.startswith("/"):
        return "must be an absolute path (systemd looks a bare name up only in its own fixed PATH)"
    if len(path) > PROGRAM_PATH_MAX:
        return f"longer than {PROGRAM_PATH_MAX} characters"
    bad = sorted({c for c in path if c not in _PROGRAM_PATH})
    if bad:
        return "must not contain " + " ".join(repr(c) for c in bad)
    if path.endswith("/") or "/../" in f"{path}/" or "/./" in f"{path}/":
        return "must name a file, without '.' or '..' components"
    return None


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """What every unit the operator writes takes from the installation rather than from a spec.

    Both values are rendered into the units (the sidekicks' and the managed proxies'), so changing one
    changes their ``Template=``: the operator replaces what it wrote before with a rolling update.
    Raises :class:`RenderError` for a path that cannot be written into a unit.
    """

    fleetop: str = DEFAULT_FLEETOP
    """Absolute path of the fleetop program, the same on every machine (``fleetop run --fleetop-path``,
    ``FLEETOP_PATH``; by default the fleetop that runs the operator)."""
    key_root: str = ""
    """The installation's key root (``--prefix``): sidekicks register under it, agents read under it."""
    sidekick_credentials: str = ""
    """Environment file with the sidekicks' ``ETCDCTL_*`` (user, password, certificate), mode 0600
    (``fleetop run --sidekick-credentials``); empty: only the shared environment files."""
    agent_credentials: str = ""
    """The same for the proxy agents (``--agent-credentials``)."""
    proxy_credentials: str = ""
    """The same for the proxy instances, which read their published config at start
    (``--proxy-credentials``; empty: the agents' file, whose role reads the same keys)."""

    def __post_init__(self) -> None:
        problem = program_path_problem(self.fleetop)
        if problem is not None:
            raise RenderError(f"fleetop path {self.fleetop!r}: {problem}")
        for name, path in (
            ("sidekick", self.sidekick_credentials),
            ("agent", self.agent_credentials),
            ("proxy", self.proxy_credentials),
        ):
            problem = program_path_problem(path) if path else None
            if problem is not None:
                raise RenderError(f"{name} credentials file {path!r}: {problem}")

    def environment_files(self, kind: Literal["sidekick", "agent", "proxy"]) -> list[str]:
        """``EnvironmentFile=`` values of a unit of ``kind`` (sidekick, agent, proxy): the shared
        files (optional), then the kind's credentials (required: a missing file is a clear failure
        to start, not a TLS or permission error later)."""
        credentials = {
            "sidekick": self.sidekick_credentials,
            "agent": self.agent_credentials,
            "proxy": self.proxy_credentials or self.agent_credentials,
        }[kind]
        return [*SIDEKICK_ENVIRONMENT_FILES, *([credentials] if credentials else [])]

    def command(self, verb: str) -> str:
        """The start of an ``ExecStart`` running ``fleetop <verb>``."""
        return f"{self.fleetop} {verb}"


DEFAULT_UNITS = UnitSettings()


def systemd_quote(value: str) -> str:
    """One argument for systemd's command-line parser: bare when safe, else double-quoted."""
    if value and all(c in _BARE_ARG for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def environment_assignment(key: str, value: str) -> str:
    """``Environment="K=V"`` value, quoted so spaces, quotes and backslashes survive systemd."""
    return systemd_quote(f"{key}={value}")


def template_hash(options: Iterable[UnitOption]) -> str:
    """Short sha256 of the serialized options, leaving out the ownership section."""
    body = [o for o in options if o.section != OWNER_SECTION]
    return hashlib.sha256(serialize(body).encode("utf-8")).hexdigest()[:TEMPLATE_LENGTH]


def placement_options(placement: Placement, service: str) -> list[UnitOption]:
    """``[X-Fleet]`` options of a placement (services and proxies alike); ``spread`` conflicts with
    the other ``<service>@*`` units."""
    out: list[UnitOption] = []
    if placement.spread:
        out.append(UnitOption("X-Fleet", "Conflicts", f"{service}@*.service"))
    for key, values in placement.machine_metadata.items():
        out.extend(UnitOption("X-Fleet", "MachineMetadata", f"{key}={value}") for value in values)
    if placement.machine_of:
        out.append(UnitOption("X-Fleet", "MachineOf", placement.machine_of))
    if placement.machine_id:
        out.append(UnitOption("X-Fleet", "MachineID", placement.machine_id))
    if placement.global_:
        out.append(UnitOption("X-Fleet", "Global", "true"))
    return out


def companion_placement(placement: Placement, main: str) -> list[UnitOption]:
    """``[X-Fleet]`` of a unit that must run beside ``main`` (a sidekick, a proxy's agent).

    A global unit has no machine of its own, so MachineOf could never be met: the companion is global
    too, on the same machines, and BindsTo ties it to the main unit on each of them."""
    if not placement.global_:
        return [UnitOption("X-Fleet", "MachineOf", main)]
    out = [UnitOption("X-Fleet", "Global", "true")]
    for key, values in placement.machine_metadata.items():
        out.extend(UnitOption("X-Fleet", "MachineMetadata", f"{key}={value}") for value in values)
    return out


def finish_unit(body: list[UnitOption], service: str, role: str, template: str) -> list[UnitOption]:
    """Add the ``[X-Fleetop]`` ownership section, order the options as fleet stores them, and refuse
    values a unit file cannot carry (:class:`RenderError`)."""
    options = regroup([*body, *owner_options(service, role, template)])
    try:
        check_option_values(options)
    except ValueError as exc:
        raise RenderError(str(exc)) from exc
    return options


def needs_sidekick(spec: ServiceSpec) -> bool:
    """Whether ``spec``'s instances register through fleetop's sidekick: the service gets a discovery
    unit per instance, and a proxy routing to it keeps only the instances fleet holds as launched."""
    return spec.discovery.sidekick
