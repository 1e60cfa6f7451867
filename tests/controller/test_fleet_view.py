"""The operator's index of a poll (``view_of``) plans exactly what ``plan()`` plans from the raw lists."""

from __future__ import annotations

from fleetop.controller.runtime.informers import build_snapshot
from fleetop.controller.runtime.observe import observe
from fleetop.controller.services.planner import plan, plan_view
from fleetop.controller.services.reconciler import view_of
from fleetop.controller.services.unitrender import render_main, render_sidekick
from fleetop.controller.world import PlanMemory
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


def test_view_of_a_snapshot_plans_like_the_raw_lists() -> None:
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
    observed = observe(snapshot)
    args = ({"8000": True}, 100.0, PlanMemory())
    expected = plan("web", SPEC, 7, observed.units, observed.states, args[0], observed.machines, *args[1:])
    got = plan_view("web", SPEC, 7, view_of(snapshot), *args)
    assert got == expected
    assert got.actions  # a replica is missing and web@8002 is taken by a stranger: there is work to do
    assert view_of(snapshot).claimed.keys() == {"web", "api"}
