"""The informer's index of a poll holds exactly what the planners' own index of the same observations
holds, and the planner decides the same from both."""

from __future__ import annotations

from fleetop.controller.runtime.informers import build_snapshot
from fleetop.controller.services.memory import PlanMemory
from fleetop.controller.services.planner import plan
from fleetop.controller.services.unitrender import render_main, render_sidekick
from fleetop.controller.world import FleetIndex, ObservedMachine, ObservedState, ObservedUnit
from fleetop.fleet.model import Machine, Unit, UnitState
from fleetop.fleet.units import UnitOption, unit_hash
from fleetop.models import ServiceSpec

SPEC = ServiceSpec.model_validate(
    {
        "replicas": 3,
        "ports": {"base": 8000},
        "unit": {"execStart": "/bin/sleep 1000"},
        "discovery": {"sidekick": True},
    }
)
MACHINES = [Machine("a" * 32, "127.0.1.1"), Machine("b" * 32, "127.0.1.2")]


def unit(name: str, options: list[UnitOption], machine: str | None) -> Unit:
    return Unit(name, tuple(options), "launched", "launched" if machine else "inactive", machine)


def test_a_snapshots_index_is_the_index_of_its_observations() -> None:
    units = [
        unit("web@8000.service", render_main(SPEC, "web", 8000), MACHINES[0].id),
        unit("web-discovery@8000.service", render_sidekick(SPEC, "web", 8000), MACHINES[0].id),
        unit("web@8001.service", render_main(SPEC, "web", 8001), None),
        unit("api@8000.service", render_main(SPEC, "api", 8000), MACHINES[1].id),  # another service's
        unit(
            "web@8002.service", [UnitOption("Service", "ExecStart", "/bin/true")], MACHINES[1].id
        ),  # not ours
    ]
    states = [
        UnitState(u.name, unit_hash(u.options), u.machine_id, "loaded", "active", "running")
        for u in units
        if u.machine_id is not None
    ]
    snapshot = build_snapshot(units, states, MACHINES, started=1.0)
    built = FleetIndex.build(
        [ObservedUnit(u.name, u.options, u.desired_state, u.current_state, u.machine_id) for u in units],
        [
            ObservedState(s.name, s.hash, s.machine_id, s.load_state, s.active_state, s.sub_state)
            for s in states
        ],
        [ObservedMachine(m.id, m.primary_ip, dict(m.metadata)) for m in MACHINES],
    )
    index = snapshot.index
    assert index == built
    assert index.owned.keys() == {"services/web", "services/api"}
    assert [u.name for u in index.owned_by("services/web")] == [
        "web-discovery@8000.service",
        "web@8000.service",
        "web@8001.service",
    ]
    assert snapshot.index is index  # built once per poll
    args = ({"8000": True}, 100.0, PlanMemory())
    got = plan("web", SPEC, 7, index, *args)
    assert got == plan("web", SPEC, 7, built, *args)
    assert got.actions  # a replica is missing and web@8002 is taken by a stranger: there is work to do
