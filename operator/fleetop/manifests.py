"""``fleetop manifests render``: charts-like values + templates → fleet unit files and fleetop specs.

The unit files run fleetop itself on a real fleet cluster (the operator as a fleet unit, agents for
hand-run proxies, the etcd drop-in that writes ``/etc/etcd.environment``); the specs are the articles'
examples as apply documents. Values are merged over ``manifests/values.yaml`` and checked before
rendering: a value with a newline would split a unit file, so it is refused with its path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from fleetop.config import parse_fleet_endpoints
from fleetop.errors import InputError

MANIFESTS_DIR = Path(__file__).resolve().parents[2] / "manifests"


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
    operator_unit = env.get_template("units/fleetop@.service.j2").render(context)
    out.append(Rendered("units/fleetop@.service", operator_unit))
    out += [
        Rendered(f"units/fleetop@{i}.service", operator_unit)
        for i in range(1, values["operator"]["replicas"] + 1)
    ]
    for given in values.get("unmanagedProxies") or []:
        proxy = {"configPath": "/etc/nginx/nginx.conf", "machineMetadata": {}, **given}
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
