"""The node's pace setting: ``--pace`` and ``FLEETOP_NODE_PACE``, checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetop.errors import ConfigError
from fleetop.node.engine import PACE, Engine
from fleetop.node.registry import Registry
from fleetop.node.server import PACE_ENV, NodeConfig, build_machines, pace_from_environment
from fleetop.node.supervisor import Supervisor


def test_default_pace_is_fleets_and_the_environment_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PACE_ENV, raising=False)
    assert pace_from_environment() == PACE == 1.0
    monkeypatch.setenv(PACE_ENV, " 0.25 ")
    assert NodeConfig(state_dir=Path("/nonexistent")).pace == 0.25
    assert NodeConfig(state_dir=Path("/nonexistent"), pace=2.0).pace == 2.0


@pytest.mark.parametrize("raw", ["fast", "-1", "61", "nan"])
def test_a_bad_pace_in_the_environment_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(PACE_ENV, raw)
    with pytest.raises(ConfigError, match=f"{PACE_ENV}='{raw}'"):
        NodeConfig(state_dir=Path("/nonexistent"))


def test_agents_of_different_machines_are_not_in_lock_step(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path, machines=4, pace=1.0)
    engine = Engine(Registry(tmp_path), Supervisor(tmp_path / "sup"), build_machines(config), pace=1.0)
    by_index = {m.index: engine.agent_pace[m.id] for m in engine.machines.values()}
    # More than fleetctl's 500 ms poll apart within a cycle of three; never faster than the engine.
    assert by_index == pytest.approx({1: 1.0, 2: 1.75, 3: 2.5, 4: 1.0})
    with pytest.raises(ValueError, match="pace"):
        Engine(Registry(tmp_path), Supervisor(tmp_path / "sup"), build_machines(config), pace=-1.0)
