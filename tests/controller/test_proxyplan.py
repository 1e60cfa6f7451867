"""The proxy units: what they say (proxyunits) and the pure planner's decisions (proxyplan), as tables."""

from __future__ import annotations

from typing import Any

import pytest

from fleetop.controller.proxies.plan import plan_units
from fleetop.controller.proxies.units import ProxyLayout, agent_unit_name, desired_units, proxy_unit_name
from fleetop.controller.unitfile import DEFAULT_FLEETOP, UnitSettings
from fleetop.controller.world import (
    CreateUnit,
    DestroyUnit,
    FleetIndex,
    ObservedState,
    ObservedUnit,
    SetDesiredState,
)
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import UnitOption, option_values, unit_hash
from fleetop.models import ProxySpec

P = "edge"


def spec(**extra: Any) -> ProxySpec:
    return ProxySpec.model_validate(
        {"kind": "nginx", "listen": 8080, "routes": [{"service": "web"}], **extra}
    )


def desired(replicas: int = 2, **extra: Any) -> list[Any]:
    s = spec(replicas=replicas, **extra)
    return desired_units(P, s, ProxyLayout.of(P, s, "/run/fleetop"))


def observed(
    units: list[Any], *, drop: set[str] = frozenset(), state: str = "active", desired_state: str = "launched"
) -> tuple[list[ObservedUnit], list[ObservedState]]:
    found = [
        ObservedUnit(u.name, u.options, desired_state, "launched", "m1") for u in units if u.name not in drop
    ]
    states = [ObservedState(u.name, unit_hash(u.options), "m1", "loaded", state, "running") for u in found]
    return found, states


def test_units_say_what_runs_where() -> None:
    units = {u.name: u for u in desired(2)}
    assert sorted(units) == [
        agent_unit_name(P, 1),
        agent_unit_name(P, 2),
        proxy_unit_name(P, 1),
        proxy_unit_name(P, 2),
    ]
    proxy, agent = units["edge@1.service"].options, units["edge-agent@1.service"].options
    assert option_values(proxy, "X-Fleet", "Conflicts") == ["edge@*.service"]
    assert (
        f"{DEFAULT_FLEETOP} proxy-instance --proxy edge --kind nginx"
        in option_values(proxy, "Service", "ExecStart")[0]
    )
    assert "/run/fleetop/edge/nginx.conf" in option_values(proxy, "Service", "ExecStart")[0]
    start = option_values(agent, "Service", "ExecStart")[0]
    assert start.startswith(f"{DEFAULT_FLEETOP} proxy-agent --proxy edge --machine %m")
    assert option_values(agent, "X-Fleet", "MachineOf") == ["edge@1.service"]
    assert option_values(agent, "Unit", "BindsTo") == ["edge@1.service"]
    assert owned_by(proxy) is not None and owned_by(proxy).role == "proxy"  # type: ignore[union-attr]
    assert owned_by(agent) is not None and owned_by(agent).role == "agent"  # type: ignore[union-attr]
    # instances of one spec share their templates, and the proxy unit its whole content
    assert units["edge@1.service"].options == units["edge@2.service"].options
    assert owned_by(agent) == owned_by(units["edge-agent@2.service"].options)


def test_global_proxy_is_one_instance_with_a_global_agent() -> None:
    units = desired(3, placement={"global": True})
    assert [u.name for u in units] == ["edge@1.service", "edge-agent@1.service"]
    assert option_values(units[0].options, "X-Fleet", "Conflicts") == []
    assert option_values(units[1].options, "X-Fleet", "Global") == ["true"]


def _names(actions: list[Any], kind: type) -> list[str]:
    return [a.name for a in actions if isinstance(a, kind)]


@pytest.mark.parametrize(
    ("case", "want", "have", "creates", "destroys"),
    [
        (
            "fresh",
            2,
            0,
            ["edge@1.service", "edge-agent@1.service", "edge@2.service", "edge-agent@2.service"],
            [],
        ),
        ("converged", 2, 2, [], []),
        ("scale up", 2, 1, ["edge@2.service", "edge-agent@2.service"], []),
        ("scale down", 1, 2, [], ["edge-agent@2.service", "edge@2.service"]),
        (
            "unmanaged",
            0,
            2,
            [],
            ["edge-agent@1.service", "edge-agent@2.service", "edge@1.service", "edge@2.service"],
        ),
    ],
)
def test_counts(case: str, want: int, have: int, creates: list[str], destroys: list[str]) -> None:
    units, states = observed(desired(have)) if have else ([], [])
    plan = plan_units(P, desired(want) if want else [], FleetIndex.build(units, states))
    assert _names(plan.actions, CreateUnit) == creates, case
    assert _names(plan.actions, DestroyUnit) == destroys, case


def test_changed_spec_replaces_proxy_and_agent_on_a_later_pass() -> None:
    units, states = observed(desired(1))
    plan = plan_units(P, desired(1, listen=9090), FleetIndex.build(units, states))
    assert _names(plan.actions, DestroyUnit) == ["edge-agent@1.service", "edge@1.service"]
    assert _names(plan.actions, CreateUnit) == []  # the names are still taken this pass
    assert {a.reason for a in plan.actions if isinstance(a, DestroyUnit)} >= {"spec changed"}


def test_failed_unit_is_destroyed_and_not_recreated_while_its_state_lingers() -> None:
    units, states = observed(desired(1), state="failed")
    plan = plan_units(P, desired(1), FleetIndex.build(units, states))
    assert _names(plan.actions, DestroyUnit) == ["edge-agent@1.service", "edge@1.service"]
    gone = plan_units(P, desired(1), FleetIndex.build([], states))
    assert _names(gone.actions, CreateUnit) == []
    later = plan_units(P, desired(1), FleetIndex.build([], []))
    assert _names(later.actions, CreateUnit) == ["edge@1.service", "edge-agent@1.service"]


def test_missing_proxy_takes_its_agent_down_so_they_are_scheduled_together() -> None:
    units, states = observed(desired(1), drop={"edge@1.service"})
    plan = plan_units(P, desired(1), FleetIndex.build(units, states))
    assert _names(plan.actions, CreateUnit) == ["edge@1.service"]
    assert _names(plan.actions, DestroyUnit) == ["edge-agent@1.service"]


def test_unowned_units_are_never_touched() -> None:
    foreign = ObservedUnit("edge@1.service", (UnitOption("Service", "ExecStart", "/bin/true"),))
    other = ObservedUnit("edge@9.service", (UnitOption("Service", "ExecStart", "/bin/true"),))
    plan = plan_units(P, desired(1), FleetIndex.build([foreign, other], []))
    assert plan.blocked == ["edge@1.service"]
    assert _names(plan.actions, DestroyUnit) == []
    assert _names(plan.actions, CreateUnit) == []


def test_stopped_unit_is_launched_again() -> None:
    units, states = observed(desired(1), desired_state="inactive")
    plan = plan_units(P, desired(1), FleetIndex.build(units, states))
    assert _names(plan.actions, SetDesiredState) == ["edge@1.service", "edge-agent@1.service"]
    assert [u.ready for u in plan.units] == [False, False]


def test_an_installation_root_reaches_the_agent_and_the_bootstrap() -> None:
    s = spec(replicas=1)
    plain = desired_units(P, s, ProxyLayout.of(P, s, "/run/fleetop"))
    rooted = desired_units(P, s, ProxyLayout.of(P, s, "/run/fleetop", UnitSettings(key_root="/team-a")))
    for unit in rooted:
        [command] = option_values(unit.options, "Service", "ExecStart")
        assert command.endswith("--prefix /team-a")
    for unit in plain:
        assert "--prefix" not in option_values(unit.options, "Service", "ExecStart")[0]


def test_proxy_units_name_fleetop_by_its_path_and_a_new_path_is_a_new_template() -> None:
    s = spec(replicas=1)
    before = desired_units(P, s, ProxyLayout.of(P, s, "/run/fleetop", UnitSettings("/opt/a/bin/fleetop")))
    after = desired_units(P, s, ProxyLayout.of(P, s, "/run/fleetop", UnitSettings("/opt/b/bin/fleetop")))
    for unit in before:
        [command] = option_values(unit.options, "Service", "ExecStart")
        assert command.split()[0] == "/opt/a/bin/fleetop"
    for old, new in zip(before, after, strict=True):
        assert old.name == new.name
        assert owned_by(old.options).template != owned_by(new.options).template  # type: ignore[union-attr]
    # like any changed spec: the old units go, and new ones come on a later pass
    units, states = observed(before)
    plan = plan_units(P, after, FleetIndex.build(units, states))
    assert _names(plan.actions, DestroyUnit) == ["edge-agent@1.service", "edge@1.service"]
    assert {a.reason for a in plan.actions if isinstance(a, DestroyUnit)} >= {"spec changed"}
