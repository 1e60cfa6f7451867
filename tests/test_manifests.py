"""Rendered manifests: every spec validates against crds/ and the models, every unit against fleet's rules."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from fleetop.cli.main import app
from fleetop.cli.manifestrender import MANIFESTS_DIR, load_values, render
from fleetop.controller.runtime.settings import OperatorSettings
from fleetop.errors import InputError
from fleetop.fleet.units import check_option_values, parse_unit_file, parse_unit_name
from fleetop.models import parse_spec
from fleetop.node.scheduler import validate_requirements

CRDS = Path(__file__).resolve().parent.parent / "crds"


def _values(tmp_path: Path, extra: dict[str, object]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(extra))
    return path


@pytest.fixture
def rendered(tmp_path: Path) -> dict[str, str]:
    override = _values(
        tmp_path,
        {
            "etcd": {
                "endpoints": ["10.0.0.1:2379", "10.0.0.2:2379"],
                "cacert": "/etc/fleetop/ca.pem",
                "user": "op",
            },
            "unmanagedProxies": [{"name": "edge", "kind": "nginx", "machineMetadata": {"role": "lb"}}],
            "prefix": "/team-a",
        },
    )
    return {r.path: r.text for r in render(load_values(MANIFESTS_DIR, override))}


def test_every_spec_validates_against_crds_and_models(rendered: dict[str, str]) -> None:
    schemas = {
        kind: json.loads((CRDS / f"{kind.lower()}spec.schema.json").read_text())
        for kind in ("Service", "Proxy")
    }
    specs = [p for p in rendered if p.startswith("specs/")]
    assert len(specs) == 4
    count = 0
    for path in specs:
        for document in yaml.safe_load_all(rendered[path]):
            jsonschema.validate(document["spec"], schemas[document["kind"]])
            parse_spec(document, where=path)
            count += 1
    assert count >= 9


def test_every_unit_follows_fleets_rules(rendered: dict[str, str]) -> None:
    units = [p for p in rendered if p.endswith(".service")]
    assert {
        "units/fleetop@1.service",
        "units/fleetop@2.service",
        "units/edge-agent.service",
    } <= set(units)
    for path in units:
        name = path.removeprefix("units/")
        parse_unit_name(name)
        options = parse_unit_file(rendered[path])
        check_option_values(options)
        validate_requirements(name, options)
    operator = rendered["units/fleetop@1.service"]
    assert "EnvironmentFile=-/etc/etcd.environment" in operator
    assert "Environment=ETCDCTL_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379" in operator
    assert "Environment=FLEETOP_PREFIX=/team-a" in operator
    assert "Conflicts=fleetop@*.service" in operator
    assert "PASSWORD" not in operator
    assert "MachineMetadata=role=lb" in rendered["units/edge-agent.service"]


def operator_config(text: str) -> OperatorSettings:
    """The configuration ``fleetop run`` would build from a rendered operator unit: its ExecStart flags
    over its Environment= lines (what systemd would give it; TLS files, which exist only on the
    machines, are left out)."""
    options = parse_unit_file(text)
    environ = dict(
        o.value.strip('"').split("=", 1) for o in options if (o.section, o.name) == ("Service", "Environment")
    )
    for variable in ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"):
        environ.pop(variable, None)
    files = [o.value for o in options if (o.section, o.name) == ("Service", "EnvironmentFile")]
    assert "-/etc/fleetop/secrets.env" in files
    environ["ETCDCTL_PASSWORD"] = "what-the-secrets-file-holds"
    [exec_start] = [o.value for o in options if (o.section, o.name) == ("Service", "ExecStart")]
    program, verb, *words = exec_start.split()
    assert verb == "run"
    flags = {words[i].removeprefix("--").replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}
    config = OperatorSettings.from_flags(flags, environ)
    assert program == config.install.fleetop_path, "the operator names the fleetop that runs it"
    return config


def test_the_operators_units_configure_it(rendered: dict[str, str]) -> None:
    assert "units/fleetop@.service" not in rendered, "one file per candidate, each with its own address"
    configs = [operator_config(rendered[f"units/fleetop@{i}.service"]) for i in (1, 2)]
    assert [c.metrics.address for c in configs] == ["127.0.0.1:9464", "127.0.0.1:9465"]
    for config in configs:
        assert config.install.fleetop_path == "/opt/fleetop/bin/fleetop"
        assert config.proxies.root == "/var/lib/fleetop/proxies"
        assert config.fleet.endpoint == "unix:///var/run/fleet.sock"
        assert config.etcd.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
        assert config.unit_settings.key_root == "/team-a"


def test_install_path_proxy_root_and_addresses_reach_every_candidate(tmp_path: Path) -> None:
    values = {
        "install": {"path": "/srv/fleetop-2/bin/fleetop"},
        "managedProxies": {"root": "/srv/proxies"},
        "operator": {"replicas": 3, "metricsAddress": "0.0.0.0:9500"},
        "fleet": {"endpoint": "http://127.0.0.1:49153"},
    }
    rendered = {r.path: r.text for r in render(load_values(MANIFESTS_DIR, _values(tmp_path, values)))}
    configs = [operator_config(rendered[f"units/fleetop@{i}.service"]) for i in (1, 2, 3)]
    assert [c.metrics.address for c in configs] == ["0.0.0.0:9500", "0.0.0.0:9501", "0.0.0.0:9502"]
    assert {(c.install.fleetop_path, c.proxies.root, c.fleet.endpoint) for c in configs} == {
        ("/srv/fleetop-2/bin/fleetop", "/srv/proxies", "http://127.0.0.1:49153")
    }


def test_metrics_off_is_off_for_every_candidate(tmp_path: Path) -> None:
    override = _values(tmp_path, {"operator": {"metricsAddress": "off"}})
    rendered = {r.path: r.text for r in render(load_values(MANIFESTS_DIR, override))}
    assert [operator_config(rendered[f"units/fleetop@{i}.service"]).metrics.address for i in (1, 2)] == [
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"install": {"path": "fleetop"}}, r"\$\.install\.path"),
        ({"install": {"path": "/opt/my fleetop/bin/fleetop"}}, r"\$\.install\.path"),
        ({"install": {"path": "/opt/fleetop/bin/fleetop --evil"}}, r"\$\.install\.path"),
        ({"managedProxies": {"root": "relative/proxies"}}, r"\$\.managedProxies\.root"),
        ({"managedProxies": {"root": "/var/lib/a b"}}, r"\$\.managedProxies\.root"),
        ({"operator": {"metricsAddress": "127.0.0.1:65535"}}, r"\$\.operator\.metricsAddress"),
        ({"operator": {"metricsAddress": "9464"}}, r"\$\.operator\.metricsAddress"),
    ],
)
def test_values_a_unit_line_cannot_carry_are_refused(
    tmp_path: Path, values: dict[str, object], path: str
) -> None:
    override = _values(tmp_path, values)
    with pytest.raises(InputError, match=path):
        render(load_values(MANIFESTS_DIR, override))


def test_values_with_newlines_are_refused(tmp_path: Path) -> None:
    override = _values(tmp_path, {"install": {"path": "/opt/fleetop\nExecStartPre=/bin/evil"}})
    with pytest.raises(InputError, match=r"\$\.install\.path"):
        load_values(MANIFESTS_DIR, override)


def test_cli_writes_the_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["manifests", "render", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/units/fleetop@2.service").is_file()
    assert (tmp_path / "out/specs/004-registrator-haproxy.yaml").is_file()
