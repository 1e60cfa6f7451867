"""``fleetop manifests render``: charts-like values + templates → fleet unit files and fleetop specs.

The unit files run fleetop itself on a real fleet cluster (the operator as a fleet unit, agents for
hand-run proxies, the etcd drop-in that writes ``/etc/etcd.environment``); the specs are the articles'
examples as apply documents. Values are merged over ``manifests/values.yaml`` and checked before
rendering: a value with a newline would split a unit file, so it is refused with its path, and so are
paths that would not survive an ``ExecStart`` line.

The operator's candidates are one unit file each (``fleetop@1.service``, ``fleetop@2.service``), not
one template: each gets its own metrics address (the port of ``operator.metricsAddress`` plus the
candidate's number minus one), so two candidates never share an address, whichever machines they run
on. ``install.path`` reaches the operator as ``--fleetop-path``: the units the operator writes name
the same fleetop.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from fleetop.config import parse_fleet_endpoints
from fleetop.controller.unitfile import program_path_problem
from fleetop.errors import InputError, RenderError
from fleetop.proxy.render import RenderPaths

MANIFESTS_DIR = Path(__file__).resolve().parents[3] / "manifests"


def merge(base: Any, override: Any) -> Any:
    """Deep merge of mappings; anything else in ``override`` replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def check_values(value: Any, path: str = "$") -> None:
    """Refuse what would inject lines into a unit file."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_values(item, f"{path}[{index}]")
    elif isinstance(value, str) and any(c in value for c in "\n\r\x00"):
        raise InputError("must not contain newlines", where="values", path=path)


def check_paths(values: dict[str, Any]) -> None:
    """Refuse paths that would not survive the unit line they are written into."""
    problem = program_path_problem(str(values["install"]["path"]))
    if problem is not None:
        raise InputError(problem, where="values", path="$.install.path")
    credentials = values["etcd"].get("credentials") or {}
    if not isinstance(credentials, dict) or not set(credentials) <= {"sidekick", "agent", "proxy"}:
        raise InputError(
            "must be a mapping of sidekick, agent and proxy to credentials files",
            where="values",
            path="$.etcd.credentials",
        )
    for kind, path in credentials.items():
        problem = program_path_problem(str(path)) if path else None
        if problem is not None:
            raise InputError(problem, where="values", path=f"$.etcd.credentials.{kind}")
    for index, proxy in enumerate(values.get("unmanagedProxies") or []):
        config_path = proxy.get("configPath") if isinstance(proxy, dict) else None
        problem = program_path_problem(str(config_path)) if config_path else None
        if problem is not None:
            raise InputError(problem, where="values", path=f"$.unmanagedProxies[{index}].configPath")
    try:
        RenderPaths(str(values["managedProxies"]["root"]))
    except RenderError as exc:
        raise InputError(str(exc), where="values", path="$.managedProxies.root") from None


def _off_or_text(raw: Any) -> str:
    """YAML reads a bare ``off`` as False."""
    return "off" if raw is False else str(raw)


def metrics_addresses(value: str, candidates: int) -> list[str]:
    """The metrics address of candidates 1..``candidates``: ``host:port``, ``host:port+1``, ...
    (``off`` for all when the server is off). Raises InputError."""
    if value.lower() in ("off", "none", ""):
        return ["off"] * candidates
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65536 - candidates:
        raise InputError(
            f"{value!r} must be host:port with room for {candidates} consecutive ports",
            where="values",
            path="$.operator.metricsAddress",
        )
    return [f"{host}:{int(port) + index}" for index in range(candidates)]


def load_values(source: Path, override: Path | None) -> dict[str, Any]:
    values = yaml.safe_load((source / "values.yaml").read_text())
    if override is not None:
        try:
            extra = yaml.safe_load(override.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read values: {exc}", where=str(override)) from exc
        if not isinstance(extra, dict):
            raise InputError("values must be a mapping", where=str(override))
        values = merge(values, extra)
    check_values(values)
    check_paths(values)
    return dict(values)


def env_lines(values: dict[str, Any]) -> list[str]:
    """``Environment=`` values the units get (never the password: that stays in the secrets file)."""
    etcd = values["etcd"]
    fleet = values["fleet"]["endpoint"]
    given = ",".join(str(e) for e in fleet) if isinstance(fleet, list) else str(fleet)
    lines = [f"FLEETCTL_ENDPOINT={','.join(parse_fleet_endpoints(given, 'values fleet.endpoint'))}"]
    if etcd.get("endpoints"):
        lines.append(f"ETCDCTL_ENDPOINTS={','.join(etcd['endpoints'])}")
    for key, variable in (
        ("cacert", "ETCDCTL_CACERT"),
        ("cert", "ETCDCTL_CERT"),
        ("key", "ETCDCTL_KEY"),
        ("user", "ETCDCTL_USER"),
    ):
        if etcd.get(key):
            lines.append(f"{variable}={etcd[key]}")
    if values.get("prefix"):
        lines.append(f"FLEETOP_PREFIX={values['prefix']}")
    return [f'"{line}"' if " " in line else line for line in lines]


@dataclass(frozen=True)
class Rendered:
    path: str
    text: str


def render(values: dict[str, Any], source: Path = MANIFESTS_DIR) -> list[Rendered]:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(source / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    context = {**values, "env_lines": env_lines(values)}
    out = [
        Rendered(
            "units/etcd-environment.conf", env.get_template("units/etcd-environment.conf.j2").render(context)
        )
    ]
    candidates = int(values["operator"]["replicas"])
    operator_unit = env.get_template("units/fleetop@.service.j2")
    for number, address in enumerate(
        metrics_addresses(_off_or_text(values["operator"]["metricsAddress"]), candidates)
    ):
        text = operator_unit.render({**context, "metrics_address": address})
        out.append(Rendered(f"units/fleetop@{number + 1}.service", text))
    for given in values.get("unmanagedProxies") or []:
        proxy = {"configPath": "/etc/nginx/nginx.conf", "machineMetadata": {}, **given}
        proxy["configDir"] = posixpath.dirname(str(proxy["configPath"])) or "/"
        text = env.get_template("units/proxy-agent.service.j2").render({**context, "proxy": proxy})
        out.append(Rendered(f"units/{proxy['name']}-agent.service", text))
    if values.get("examples", {}).get("enabled"):
        for template in sorted((source / "templates" / "specs").glob("*.yaml.j2")):
            name = template.name.removesuffix(".j2")
            out.append(Rendered(f"specs/{name}", env.get_template(f"specs/{template.name}").render(context)))
    return out


def write(rendered: list[Rendered], out_dir: Path) -> list[Path]:
    written = []
    for item in rendered:
        path = out_dir / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text)
        written.append(path)
    return written
