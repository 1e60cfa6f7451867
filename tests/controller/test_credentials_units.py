"""Each kind of unit the operator writes reads its own credentials file: sidekicks, proxy agents and
proxy instances never share one etcd user holding the union of their roles."""

from __future__ import annotations

import pytest

from fleetop.controller.proxies.units import ProxyLayout, desired_units
from fleetop.controller.runtime.settings import OperatorSettings
from fleetop.controller.services.unitrender import render_sidekick, sidekick_template
from fleetop.controller.unitfile import UnitSettings
from fleetop.errors import ConfigError, RenderError
from fleetop.fleet.units import UnitOption
from fleetop.models import ProxySpec, ServiceSpec

SPEC = ServiceSpec.model_validate(
    {"replicas": 1, "ports": {"base": 8001}, "unit": {"execStart": "x"}, "discovery": {"sidekick": True}}
)
PROXY = ProxySpec.model_validate({"kind": "nginx", "listen": "127.0.0.1:8080", "replicas": 1})
SETTINGS = UnitSettings(
    sidekick_credentials="/etc/fleetop/sidekick.env", agent_credentials="/etc/fleetop/agent.env"
)


def _environment_files(options: list[UnitOption] | tuple[UnitOption, ...]) -> list[str]:
    return [o.value for o in options if o.name == "EnvironmentFile"]


def test_each_unit_kind_reads_its_own_credentials_file_last() -> None:
    shared = ["-/etc/environment", "-/etc/etcd.environment"]
    assert _environment_files(render_sidekick(SPEC, "web", 8001, SETTINGS)) == [
        *shared,
        "/etc/fleetop/sidekick.env",
    ]
    units = {
        u.role: u.options
        for u in desired_units("edge", PROXY, ProxyLayout.of("edge", PROXY, settings=SETTINGS))
    }
    assert _environment_files(units["agent"]) == [*shared, "/etc/fleetop/agent.env"]
    assert _environment_files(units["proxy"]) == [*shared, "/etc/fleetop/agent.env"]  # the agent's by default
    own = UnitSettings(agent_credentials="/etc/fleetop/agent.env", proxy_credentials="/etc/fleetop/proxy.env")
    units = {
        u.role: u.options for u in desired_units("edge", PROXY, ProxyLayout.of("edge", PROXY, settings=own))
    }
    assert _environment_files(units["proxy"]) == [*shared, "/etc/fleetop/proxy.env"]


def test_without_credentials_the_units_and_their_templates_stay_as_before() -> None:
    plain = render_sidekick(SPEC, "web", 8001)
    assert _environment_files(plain) == ["-/etc/environment", "-/etc/etcd.environment"]
    assert sidekick_template(SPEC, "web") != sidekick_template(SPEC, "web", SETTINGS)


@pytest.mark.parametrize("path", ["relative.env", "/etc/fleetop/a b.env", "/etc/%n.env", "/etc/x\n[Service]"])
def test_a_credentials_path_that_cannot_be_written_into_a_unit_is_refused(path: str) -> None:
    with pytest.raises(RenderError, match="credentials file"):
        UnitSettings(sidekick_credentials=path)


def test_run_takes_the_credentials_from_flags_and_environment() -> None:
    environ = {
        "FLEETOP_PATH": "/opt/fleetop/bin/fleetop",
        "FLEETOP_AGENT_CREDENTIALS": "/etc/fleetop/agent.env",
    }
    config = OperatorSettings.from_flags({"sidekick_credentials": "/etc/fleetop/side.env"}, environ)
    settings = config.unit_settings
    assert settings.sidekick_credentials == "/etc/fleetop/side.env"
    assert settings.agent_credentials == "/etc/fleetop/agent.env"
    with pytest.raises(ConfigError, match=r"--agent-credentials: agent credentials file 'agent\.env'"):
        OperatorSettings.from_flags({"agent_credentials": "agent.env"}, environ)
    with pytest.raises(ConfigError, match=r"FLEETOP_AGENT_CREDENTIALS: agent credentials file 'agent\.env'"):
        OperatorSettings.from_flags({}, {**environ, "FLEETOP_AGENT_CREDENTIALS": "agent.env"})
