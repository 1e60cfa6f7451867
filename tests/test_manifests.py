"""Rendered manifests: every spec validates against crds/ and the models, every unit against fleet's rules."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from fleetop.cli.main import app
from fleetop.errors import InputError
from fleetop.fleet.units import check_option_values, parse_unit_file, parse_unit_name
from fleetop.manifests import MANIFESTS_DIR, load_values, render
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
        "units/fleetop@.service",
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


def test_values_with_newlines_are_refused(tmp_path: Path) -> None:
    override = _values(tmp_path, {"install": {"path": "/opt/fleetop\nExecStartPre=/bin/evil"}})
    with pytest.raises(InputError, match=r"\$\.install\.path"):
        load_values(MANIFESTS_DIR, override)


def test_cli_writes_the_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["manifests", "render", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/units/fleetop@.service").is_file()
    assert (tmp_path / "out/specs/004-registrator-haproxy.yaml").is_file()
