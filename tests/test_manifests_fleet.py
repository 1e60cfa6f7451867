"""The fleet endpoints in the manifests' values: one or several, each checked, reaching every unit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fleetop.cli.manifestrender import MANIFESTS_DIR, load_values, render
from fleetop.errors import ConfigError


def _render(tmp_path: Path, endpoint: object) -> dict[str, str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"fleet": {"endpoint": endpoint}}))
    return {r.path: r.text for r in render(load_values(MANIFESTS_DIR, path))}


@pytest.mark.parametrize(
    "endpoint",
    [
        ["unix:///var/run/fleet.sock", "http://10.0.0.2:49153"],
        "unix:///var/run/fleet.sock,http://10.0.0.2:49153",
    ],
)
def test_several_fleet_endpoints_reach_the_operator(tmp_path: Path, endpoint: object) -> None:
    units = _render(tmp_path, endpoint)
    for candidate in ("units/fleetop@1.service", "units/fleetop@2.service"):
        assert "FLEETCTL_ENDPOINT=unix:///var/run/fleet.sock,http://10.0.0.2:49153" in units[candidate]


def test_a_bad_fleet_endpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=re.escape("values fleet.endpoint: '10.0.0.2:49153' is not a fleet")
    ):
        _render(tmp_path, "unix:///var/run/fleet.sock,10.0.0.2:49153")
