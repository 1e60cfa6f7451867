"""The manifests give each kind of unit its own etcd credentials: the operator passes the sidekicks' and
agents' files on to the units it writes, hand-run agents read the agents' file (never the operator's
secrets), and may write their config only where their own unit says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleetop.cli.manifestrender import MANIFESTS_DIR, load_values, render
from fleetop.errors import InputError
from fleetop.fleet.units import parse_unit_file


def _render(tmp_path: Path, extra: dict[str, object]) -> dict[str, str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(extra))
    return {r.path: r.text for r in render(load_values(MANIFESTS_DIR, path))}


def _options(text: str, name: str) -> list[str]:
    return [o.value for o in parse_unit_file(text) if o.name == name]


def test_credentials_reach_the_operator_and_the_hand_run_agents(tmp_path: Path) -> None:
    rendered = _render(
        tmp_path,
        {
            "etcd": {
                "user": "op",
                "credentials": {"sidekick": "/etc/fleetop/sidekick.env", "agent": "/etc/fleetop/agent.env"},
            },
            "unmanagedProxies": [{"name": "edge", "kind": "nginx", "configPath": "/etc/nginx/nginx.conf"}],
        },
    )
    (start,) = _options(rendered["units/fleetop@1.service"], "ExecStart")
    assert "--sidekick-credentials /etc/fleetop/sidekick.env" in start
    assert "--agent-credentials /etc/fleetop/agent.env" in start
    assert "--proxy-credentials" not in start
    agent = rendered["units/edge-agent.service"]
    assert _options(agent, "EnvironmentFile") == ["-/etc/etcd.environment", "/etc/fleetop/agent.env"]
    (agent_start,) = _options(agent, "ExecStart")
    assert agent_start.endswith("--config-path /etc/nginx/nginx.conf --allow-config-dir /etc/nginx")


def test_without_credentials_nothing_changes(tmp_path: Path) -> None:
    rendered = _render(tmp_path, {"unmanagedProxies": [{"name": "edge", "kind": "nginx"}]})
    (start,) = _options(rendered["units/fleetop@1.service"], "ExecStart")
    assert "credentials" not in start
    assert "-/etc/fleetop/secrets.env" in _options(rendered["units/edge-agent.service"], "EnvironmentFile")


def test_a_credentials_path_that_cannot_be_written_into_a_unit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"credentials\.agent"):
        _render(tmp_path, {"etcd": {"credentials": {"agent": "agent.env"}}})
