"""Render a ServiceSpec into the fleet units fleetop writes, and read back who owns a unit.

fleet units are immutable and fleet has no templates of its own (``fleet-observed.md`` §9): every
instance is PUT with its full options. Two units per instance, as in the articles' apache pair:

- the main unit ``<svc>@<instance>.service`` runs the user's command; its options do not depend on
  the instance (commands use ``%i``), so every instance of one spec has the same fleet hash;
- the sidekick ``<svc>-discovery@<instance>.service`` runs ``fleetop register``; it is bound to its
  main unit (``BindsTo``/``After``) and scheduled next to it (``MachineOf``).

What the units take from the installation rather than from a spec is one :class:`UnitSettings`:
fleetop's absolute path on the machines, the key root, and the credentials file of each kind of unit
(sidekick, proxy agent, proxy instance: ``EnvironmentFile=`` read after the shared environment files,
so each kind connects to etcd as its own user with its own role, never with one user holding the
union of every role). systemd looks a bare program name up only
in its own fixed search path, so a unit that says ``fleetop register`` fails with 203/EXEC wherever
fleetop lives in a virtualenv; the sidekick names fleetop by its path instead. The settings are
rendered into the units like everything else, so changing them is a new template (a rolling update).

Every unit carries an ``[X-Fleetop]`` section (``Service=``, ``Role=``, ``Template=``). systemd
ignores ``X-`` sections; fleetop changes and destroys only units that carry one naming the service.
``Template=`` is a short sha256 of the unit's options without that section and with the instance
written as ``%i``, so all instances of one spec share it and a changed spec is a new template (a
rolling update).

Quoting follows systemd's command-line and ``Environment=`` parsers: arguments that need it are
double-quoted with ``\\`` and ``"`` escaped. ``${VAR}`` and ``%`` specifiers are left alone on
purpose: they expand in the unit (``%i`` is the instance), exactly as in a hand-written unit file;
write ``$$`` and ``%%`` for literal characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from fleetop.fleet.units import UnitOption, check_option_values, regroup, serialize
from fleetop.models.base import format_duration
from fleetop.models.service import Placement, ServiceSpec

OWNER_SECTION = "X-Fleetop"
ROLE_MAIN = "main"
ROLE_DISCOVERY = "discovery"
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


class RenderError(ValueError):
    """A spec that cannot be written as a unit file (a line too long, a forbidden character)."""


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


class Owner(NamedTuple):
    """What a unit's ``[X-Fleetop]`` section says: ``(service, role, template)``."""

    service: str
    role: str
    template: str


def main_unit_name(service: str, instance: int | str) -> str:
    return f"{service}@{instance}.service"


def sidekick_unit_name(service: str, instance: int | str) -> str:
    return f"{service}-discovery@{instance}.service"


def needs_sidekick(spec: ServiceSpec) -> bool:
    return spec.discovery.sidekick


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


def _seconds(value: float) -> str:
    return f"{value:g}s"


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


def _main_body(spec: ServiceSpec, service: str) -> list[UnitOption]:
    unit = spec.unit
    description = unit.description or f"{service} instance {INSTANCE_SPECIFIER} (fleetop)"
    out = [UnitOption("Unit", "Description", description)]
    service_lines: list[tuple[str, Sequence[str]]] = [
        ("ExecStartPre", unit.exec_start_pre),
        ("ExecStart", [unit.exec_start]),
        ("ExecStartPost", unit.exec_start_post),
        ("ExecStop", unit.exec_stop),
        ("ExecStopPost", unit.exec_stop_post),
        ("Environment", [environment_assignment(k, v) for k, v in unit.environment.items()]),
        ("EnvironmentFile", unit.environment_file),
        ("Restart", [unit.restart]),
        ("RestartSec", [format_duration(unit.restart_sec)]),
        ("User", [unit.user] if unit.user else []),
    ]
    for name, values in service_lines:
        out.extend(UnitOption("Service", name, value) for value in values)
    out.extend(UnitOption(o.section, o.name, o.value) for o in unit.options)
    out.extend(placement_options(spec.placement, service))
    return out


def register_command(
    spec: ServiceSpec, service: str, instance: int | str, settings: UnitSettings = DEFAULT_UNITS
) -> str:
    """The sidekick's ``ExecStart``: ``fleetop register`` (by its absolute path) with the instance's
    address and check, under the installation's key root (``--prefix``) when there is one.

    The port is the instance, so a sidekick needs ``ports.base``: without it the instance number is
    not a port and there is nothing to register (:class:`RenderError`, reported as ``Invalid``).
    """
    if spec.ports is None:
        raise RenderError(
            "discovery.sidekick needs ports.base: the sidekick registers host:port,"
            " and the port is the instance"
        )
    discovery = spec.discovery
    check = discovery.check
    address = f"${{COREOS_PRIVATE_IPV4}}:{instance}"
    args = [settings.command("register"), "--service", service, "--instance", INSTANCE_SPECIFIER]
    args += ["--address", address]
    if check.http is not None:
        args += ["--http", systemd_quote(check.http)]
    elif check.tcp:
        args.append("--tcp")
    elif check.exec_ is not None:
        args += ["--exec", systemd_quote(check.exec_)]
    args += ["--interval", _seconds(check.interval), "--timeout", _seconds(check.timeout)]
    args += ["--ttl", _seconds(discovery.ttl)]
    if discovery.prefix:
        args += ["--prefix", systemd_quote(discovery.prefix)]
    if settings.key_root:
        args += ["--root", systemd_quote(settings.key_root)]
    return " ".join(args)


def _sidekick_body(
    spec: ServiceSpec, service: str, instance: int | str, settings: UnitSettings
) -> list[UnitOption]:
    main = main_unit_name(service, instance)
    out = [
        UnitOption("Unit", "Description", f"{service} instance {INSTANCE_SPECIFIER} registration (fleetop)"),
        UnitOption("Unit", "BindsTo", main),
        UnitOption("Unit", "After", main),
    ]
    out.extend(UnitOption("Service", "EnvironmentFile", f) for f in settings.environment_files("sidekick"))
    out += [
        UnitOption("Service", "ExecStart", register_command(spec, service, instance, settings)),
        UnitOption("Service", "Restart", "always"),
        UnitOption("Service", "RestartSec", "1"),
    ]
    return out + companion_placement(spec.placement, main)


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
    owner = [
        UnitOption(OWNER_SECTION, "Service", service),
        UnitOption(OWNER_SECTION, "Role", role),
        UnitOption(OWNER_SECTION, "Template", template),
    ]
    options = regroup([*body, *owner])
    try:
        check_option_values(options)
    except ValueError as exc:
        raise RenderError(str(exc)) from exc
    return options


def main_template(spec: ServiceSpec, service: str) -> str:
    """The template hash every main unit of this spec carries."""
    return template_hash(_main_body(spec, service))


def sidekick_template(spec: ServiceSpec, service: str, settings: UnitSettings = DEFAULT_UNITS) -> str:
    """The template hash every sidekick of this spec carries (computed with the instance as ``%i``)."""
    return template_hash(_sidekick_body(spec, service, INSTANCE_SPECIFIER, settings))


def render_main(spec: ServiceSpec, service: str, instance: int | str) -> list[UnitOption]:
    """All options of ``<svc>@<instance>.service``, in the order fleet stores them.

    Raises :class:`RenderError` when a value cannot be written into a unit file.
    """
    del instance  # the main unit refers to its instance only through %i
    return finish_unit(_main_body(spec, service), service, ROLE_MAIN, main_template(spec, service))


def render_sidekick(
    spec: ServiceSpec, service: str, instance: int | str, settings: UnitSettings = DEFAULT_UNITS
) -> list[UnitOption]:
    """All options of ``<svc>-discovery@<instance>.service``, in the order fleet stores them."""
    body = _sidekick_body(spec, service, instance, settings)
    return finish_unit(body, service, ROLE_DISCOVERY, sidekick_template(spec, service, settings))


def owned_by(options: Iterable[UnitOption]) -> Owner | None:
    """Read the ``[X-Fleetop]`` section; None when the unit has none (it is not fleetop's).

    A section without ``Service=`` is treated as not owned: fleetop never acts on a unit it cannot
    attribute to a service.
    """
    fields: dict[str, str] = {}
    for option in options:
        if option.section == OWNER_SECTION and option.name not in fields:
            fields[option.name] = option.value
    service = fields.get("Service", "")
    if not service:
        return None
    return Owner(service, fields.get("Role", ""), fields.get("Template", ""))
