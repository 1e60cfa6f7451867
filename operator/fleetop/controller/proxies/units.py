"""Render a managed ProxySpec into the fleet units that run it: a proxy and its agent per instance.

For ``managed: true`` (the default) the operator runs the proxy itself, as the articles ran nginx and
confd side by side, but as one pair per instance ``n`` (1..replicas):

- ``<proxy>@<n>.service`` runs nginx or HAProxy in the foreground through ``fleetop proxy-instance``,
  which writes a valid config first (the published one when it passes its check, else a config with
  no routes) and then replaces itself with the proxy, so the unit's main process *is* the proxy;
- ``<proxy>-agent@<n>.service`` runs ``fleetop proxy-agent`` next to it (``MachineOf=``, bound with
  ``BindsTo``/``After``), applying every published config into the same directory and reloading
  that proxy.

One config is published per proxy and every instance applies the same bytes, so the paths a config
names (pid file, logs, temp dirs) are per proxy: ``<proxy root>/<proxy>``. Every instance listens on
the same address, so instances always conflict with each other (``Conflicts=<proxy>@*.service``):
at most one per machine, which also makes the directory unique per machine. (``fleetop node`` models
its machines on one host, sharing one filesystem and one network: there, run one instance per proxy.)

Units carry the same ``[X-Fleetop]`` ownership section as service units (``Role=proxy|agent``), and
name fleetop by the same absolute path (:class:`~fleetop.controller.unitfile.UnitSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetop.controller.unitfile import (
    DEFAULT_UNITS,
    INSTANCE_SPECIFIER,
    UnitSettings,
    companion_placement,
    finish_unit,
    placement_options,
    systemd_quote,
    template_hash,
)
from fleetop.fleet.ownership import ROLE_AGENT, ROLE_PROXY
from fleetop.fleet.units import UnitOption
from fleetop.models.proxy import ProxySpec
from fleetop.proxy.render import DEFAULT_PROXY_ROOT, default_runtime_dir


@dataclass(frozen=True, slots=True)
class ProxyLayout:
    """Where a proxy keeps its files on every machine that runs it, and the installation's settings
    (fleetop's path, the key root the agent and the bootstrap read under)."""

    runtime_dir: str
    config_path: str
    settings: UnitSettings = DEFAULT_UNITS

    @classmethod
    def of(
        cls,
        proxy: str,
        spec: ProxySpec,
        root: str = DEFAULT_PROXY_ROOT,
        settings: UnitSettings = DEFAULT_UNITS,
    ) -> ProxyLayout:
        runtime = default_runtime_dir(proxy, root)
        return cls(runtime, spec.config_path or f"{runtime}/{spec.kind}.conf", settings)


@dataclass(frozen=True, slots=True)
class DesiredUnit:
    """One unit the operator wants for a proxy. ``instance`` pairs a proxy unit with its agent."""

    name: str
    role: str
    instance: int
    options: tuple[UnitOption, ...]


def proxy_unit_name(proxy: str, instance: int | str) -> str:
    return f"{proxy}@{instance}.service"


def agent_unit_name(proxy: str, instance: int | str) -> str:
    return f"{proxy}-agent@{instance}.service"


def instance_command(proxy: str, spec: ProxySpec, layout: ProxyLayout) -> str:
    """The proxy unit's ``ExecStart``: bootstrap a valid config, then become nginx / HAProxy."""
    args = [layout.settings.command("proxy-instance"), "--proxy", proxy, "--kind", spec.kind]
    args += ["--listen", systemd_quote(str(spec.listen))]
    args += [
        "--runtime-dir",
        systemd_quote(layout.runtime_dir),
        "--config",
        systemd_quote(layout.config_path),
    ]
    if layout.settings.key_root:
        args += ["--prefix", systemd_quote(layout.settings.key_root)]
    return " ".join(args)


def agent_command(proxy: str, layout: ProxyLayout) -> str:
    """The agent's ``ExecStart``: follow the published config, install it where the proxy reads it."""
    args = [layout.settings.command("proxy-agent"), "--proxy", proxy, "--machine", "%m"]
    args += ["--runtime-dir", systemd_quote(layout.runtime_dir)]
    args += ["--config-path", systemd_quote(layout.config_path)]
    if layout.settings.key_root:
        args += ["--prefix", systemd_quote(layout.settings.key_root)]
    return " ".join(args)


def _service_lines(command: str, environment_files: list[str]) -> list[UnitOption]:
    out = [UnitOption("Service", "EnvironmentFile", f) for f in environment_files]
    out += [
        UnitOption("Service", "ExecStart", command),
        UnitOption("Service", "Restart", "always"),
        UnitOption("Service", "RestartSec", "1"),
    ]
    return out


def _proxy_body(proxy: str, spec: ProxySpec, layout: ProxyLayout) -> list[UnitOption]:
    description = f"{spec.kind} proxy {proxy} instance {INSTANCE_SPECIFIER} (fleetop)"
    out = [UnitOption("Unit", "Description", description)]
    out += _service_lines(instance_command(proxy, spec, layout), layout.settings.environment_files("proxy"))
    # every instance binds the same listen address: never two on one machine
    placement = spec.placement.model_copy(update={"spread": not spec.placement.global_})
    out += placement_options(placement, proxy)
    return out


def _agent_body(proxy: str, spec: ProxySpec, layout: ProxyLayout, instance: int | str) -> list[UnitOption]:
    main = proxy_unit_name(proxy, instance)
    out = [
        UnitOption("Unit", "Description", f"{proxy} instance {INSTANCE_SPECIFIER} config agent (fleetop)"),
        UnitOption("Unit", "BindsTo", main),
        UnitOption("Unit", "After", main),
    ]
    out += _service_lines(agent_command(proxy, layout), layout.settings.environment_files("agent"))
    return out + companion_placement(spec.placement, main)


def render_proxy_unit(proxy: str, spec: ProxySpec, layout: ProxyLayout) -> list[UnitOption]:
    """All options of ``<proxy>@<n>.service`` (the same for every instance). Raises RenderError."""
    body = _proxy_body(proxy, spec, layout)
    return finish_unit(body, proxy, ROLE_PROXY, template_hash(body))


def render_agent_unit(
    proxy: str, spec: ProxySpec, layout: ProxyLayout, instance: int | str
) -> list[UnitOption]:
    """All options of ``<proxy>-agent@<n>.service``; its template is computed with ``%i``."""
    template = template_hash(_agent_body(proxy, spec, layout, INSTANCE_SPECIFIER))
    return finish_unit(_agent_body(proxy, spec, layout, instance), proxy, ROLE_AGENT, template)


def desired_units(proxy: str, spec: ProxySpec, layout: ProxyLayout) -> list[DesiredUnit]:
    """Every unit a managed proxy should have: proxy and agent for instances 1..replicas (a global
    proxy is one instance that fleet runs on every eligible machine)."""
    count = min(spec.replicas, 1) if spec.placement.global_ else spec.replicas
    proxy_options = tuple(render_proxy_unit(proxy, spec, layout))
    out: list[DesiredUnit] = []
    for instance in range(1, count + 1):
        out.append(DesiredUnit(proxy_unit_name(proxy, instance), ROLE_PROXY, instance, proxy_options))
        agent = tuple(render_agent_unit(proxy, spec, layout, instance))
        out.append(DesiredUnit(agent_unit_name(proxy, instance), ROLE_AGENT, instance, agent))
    return out
