"""Render a ServiceSpec into the fleet units fleetop writes for it.

Two units per instance, as in the articles' apache pair:

- the main unit ``<svc>@<instance>.service`` runs the user's command; its options do not depend on
  the instance (commands use ``%i``), so every instance of one spec has the same fleet hash;
- the sidekick ``<svc>-discovery@<instance>.service`` runs ``fleetop register``; it is bound to its
  main unit (``BindsTo``/``After``) and scheduled next to it (``MachineOf``).

Both are finished by :func:`fleetop.controller.unitfile.finish_unit`: the ``[X-Fleetop]`` mark with
roles ``main`` and ``discovery`` (:mod:`fleetop.fleet.ownership`), fleet's option order, and the
check that every value can be written into a unit file.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetop.controller.unitfile import (
    DEFAULT_UNITS,
    INSTANCE_SPECIFIER,
    UnitSettings,
    companion_placement,
    environment_assignment,
    finish_unit,
    placement_options,
    systemd_quote,
    template_hash,
)
from fleetop.errors import RenderError
from fleetop.fleet.ownership import ROLE_DISCOVERY, ROLE_MAIN
from fleetop.fleet.units import UnitOption
from fleetop.models.base import format_duration
from fleetop.models.service import ServiceSpec


def main_unit_name(service: str, instance: int | str) -> str:
    return f"{service}@{instance}.service"


def sidekick_unit_name(service: str, instance: int | str) -> str:
    return f"{service}-discovery@{instance}.service"


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


def _seconds(value: float) -> str:
    return f"{value:g}s"


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
