"""The fleetop the units run: found, overridden, validated, and rolled out like any other change.

systemd looks a bare program name up only in its own fixed PATH, so every unit the operator writes
names fleetop by an absolute path; these tests pin how ``fleetop run`` settles that path and that a
new path is a rolling update of the sidekicks, never a surprise.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetop.cli.main import app
from fleetop.controller.runtime.settings import OperatorSettings, fleetop_path_problem, own_fleetop
from fleetop.controller.services.memory import Plan, PlanMemory
from fleetop.controller.services.planner import plan
from fleetop.controller.services.unitrender import render_main, render_sidekick
from fleetop.controller.unitfile import UnitSettings
from fleetop.controller.world import (
    CreateUnit,
    DestroyUnit,
    FleetIndex,
    ObservedMachine,
    ObservedState,
    ObservedUnit,
)
from fleetop.errors import ConfigError
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import unit_hash
from fleetop.models import ServiceSpec

NAME = "web"
NOW = 1_700_000_000.0
MACHINES = [ObservedMachine(f"m{i}", f"10.0.0.{i}", {}) for i in (1, 2, 3)]
SPEC = ServiceSpec.model_validate(
    {
        "replicas": 2,
        "ports": {"base": 8001},
        "unit": {"execStart": "/usr/bin/app %i"},
        "discovery": {"sidekick": True},
    }
)
OLD = UnitSettings("/opt/fleetop/bin/fleetop")
NEW = UnitSettings("/opt/fleetop-2/bin/fleetop")


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


# -- a new path is a rolling update ----------------------------------------------------------------------


def running_world(settings: UnitSettings) -> tuple[list[ObservedUnit], list[ObservedState], dict[str, bool]]:
    """Two ready instances whose sidekicks were written with ``settings``."""
    units: list[ObservedUnit] = []
    states: list[ObservedState] = []
    for slot, machine in ((8001, "m1"), (8002, "m2")):
        for name, options in (
            (f"{NAME}@{slot}.service", tuple(render_main(SPEC, NAME, slot))),
            (f"{NAME}-discovery@{slot}.service", tuple(render_sidekick(SPEC, NAME, slot, settings))),
        ):
            units.append(ObservedUnit(name, options, "launched", "launched", machine))
            states.append(ObservedState(name, unit_hash(options), machine, "loaded", "active", "running"))
    return units, states, {"8001": True, "8002": True}


def plan_over(settings: UnitSettings, world_settings: UnitSettings) -> Plan:
    """One pass with ``settings`` over instances running as ``world_settings`` rendered them."""
    units, states, registrations = running_world(world_settings)
    index = FleetIndex.build(units, states, MACHINES)
    return plan(NAME, SPEC, 3, index, registrations, NOW, PlanMemory(), settings=settings)


def plan_with(settings: UnitSettings, world_settings: UnitSettings) -> tuple[list[str], list[str]]:
    result = plan_over(settings, world_settings)
    created = [a.name for a in result.actions if isinstance(a, CreateUnit)]
    destroyed = [a.name for a in result.actions if isinstance(a, DestroyUnit)]
    return created, destroyed


def test_the_same_path_changes_nothing() -> None:
    assert plan_with(OLD, OLD) == ([], [])


def test_a_new_path_surges_a_new_instance_before_any_old_one_goes() -> None:
    created, destroyed = plan_with(NEW, OLD)
    assert destroyed == [], "maxUnavailable 0: nothing ready goes before its replacement is ready"
    assert sorted(created) == [f"{NAME}-discovery@8003.service", f"{NAME}@8003.service"]
    units, _, _ = running_world(NEW)
    assert owned_by(units[1].options) != owned_by(running_world(OLD)[0][1].options)


def test_the_new_sidekick_runs_the_new_path() -> None:
    result = plan_over(NEW, OLD)
    [sidekick] = [a for a in result.actions if isinstance(a, CreateUnit) and "discovery" in a.name]
    [command] = [o.value for o in sidekick.options if o.name == "ExecStart"]
    assert command.startswith(f"{NEW.fleetop} register ")


# -- finding the fleetop that runs the operator ------------------------------------------------------------


def test_the_console_script_that_runs_the_operator_is_found_first(tmp_path: Path) -> None:
    script = executable(tmp_path / "opt/fleetop/bin/fleetop")
    other = executable(tmp_path / "venv/bin/fleetop")
    assert own_fleetop(str(script), str(other.parent / "python")) == str(script)


def test_a_relative_argv0_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(tmp_path / "bin/fleetop")
    monkeypatch.chdir(tmp_path)
    assert own_fleetop("bin/fleetop", "") == str(tmp_path / "bin/fleetop")


def test_python_dash_m_finds_the_script_next_to_the_interpreter(tmp_path: Path) -> None:
    script = executable(tmp_path / "venv/bin/fleetop")
    assert own_fleetop("/somewhere/fleetop/cli/main.py", str(tmp_path / "venv/bin/python")) == str(script)


def test_in_process_the_venvs_fleetop_is_found() -> None:
    """The tests run the operator inside pytest: argv[0] is pytest, the interpreter is the venv's."""
    found = own_fleetop()
    assert found == os.path.join(os.path.dirname(sys.executable), "fleetop")
    assert os.access(found, os.X_OK)


def test_a_symlinked_install_keeps_its_stable_name(tmp_path: Path) -> None:
    real = executable(tmp_path / "opt/fleetop-1.2/bin/fleetop")
    link = tmp_path / "usr/local/bin/fleetop"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    assert own_fleetop(str(link), "") == str(link)


def test_fleetop_on_path_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = executable(tmp_path / "bin/fleetop")
    monkeypatch.setenv("PATH", str(script.parent))
    assert own_fleetop("/x/pytest", str(tmp_path / "nowhere/python")) == str(script)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="--fleetop-path or FLEETOP_PATH"):
        own_fleetop("/x/pytest", str(tmp_path / "nowhere/python"))


# -- the setting: flags, environment, validation ---------------------------------------------------------


def test_the_flag_wins_over_the_environment_and_both_over_the_default(tmp_path: Path) -> None:
    flag, env = executable(tmp_path / "a/fleetop"), executable(tmp_path / "b/fleetop")
    environ = {"FLEETOP_PATH": str(env), "FLEETOP_PREFIX": "/team-a"}
    assert OperatorSettings.from_flags({"fleetop_path": str(flag)}, environ).install.fleetop_path == str(flag)
    config = OperatorSettings.from_flags({}, environ)
    assert config.unit_settings == UnitSettings(str(env), "/team-a")
    assert OperatorSettings.from_flags({}, {}).install.fleetop_path == own_fleetop()


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("fleetop", "absolute path"),
        ("/opt/my fleetop/bin/fleetop", "must not contain ' '"),
        ("/opt/%i", "'%'"),
    ],
)
def test_a_path_that_cannot_be_written_into_a_unit_is_a_config_error(path: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"--fleetop-path: .*{problem}"):
        OperatorSettings.from_flags({"fleetop_path": path}, {})
    with pytest.raises(ConfigError, match=f"FLEETOP_PATH: .*{problem}"):
        OperatorSettings.from_flags({}, {"FLEETOP_PATH": path})


def test_a_path_missing_here_is_reported_not_refused(tmp_path: Path) -> None:
    """The operator may run where the machines' fleetop is not: it warns (at start), it does not refuse."""
    missing = str(tmp_path / "nowhere/fleetop")
    assert OperatorSettings.from_flags({"fleetop_path": missing}, {}).install.fleetop_path == missing
    assert fleetop_path_problem(missing) == f"--fleetop-path {missing} does not exist on this machine"
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert "not an executable file" in (fleetop_path_problem(str(plain)) or "")
    assert fleetop_path_problem(own_fleetop()) is None


def test_the_cli_refuses_a_relative_path_before_connecting() -> None:
    result = CliRunner().invoke(app, ["run", "--fleetop-path", "bin/fleetop", "--metrics-address", "off"])
    assert result.exit_code == 2
    assert "--fleetop-path" in result.output and "absolute path" in result.output
