"""A node started again tells its agents of the units it reads back, rather than leaving them to the
agents' resync: at start the engine and the first machine's agent are due at the same moment, and an
agent pass that ran first (before the engine had placed anything) was the only one until the resync."""

from __future__ import annotations

from pathlib import Path

from fleetop.fleet.units import UnitOption
from fleetop.node.engine import Engine
from fleetop.node.registry import Registry, StoredUnit
from fleetop.node.server import NodeConfig, build_machines
from fleetop.node.supervisor import Supervisor

SLEEP = (UnitOption("Service", "ExecStart", "/bin/sleep 1000"),)


async def test_the_first_pass_after_a_start_wakes_the_agents_of_the_units_read_back(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path, machines=1, pace=0.1)
    machines = build_machines(config)
    before = Registry(tmp_path / "state")
    before.load()
    await before.put_unit(StoredUnit("one.service", SLEEP, "launched"))
    await Engine(before, Supervisor(tmp_path / "sup"), machines, pace=0.1).schedule_once()
    assert before.placements == {"one.service": machines[0].id}  # placed and stored, as a node does

    registry = Registry(tmp_path / "state")  # the next start reads the same placements back
    registry.load()
    assert registry.placements == before.placements
    engine = Engine(registry, Supervisor(tmp_path / "sup"), machines, pace=0.1, resync_interval=600.0)
    agent = engine._agent_loops[machines[0].id]
    assert agent.due is None
    await engine.schedule_once()
    assert agent.due is not None, "the agent was left to find the unit at its resync"
