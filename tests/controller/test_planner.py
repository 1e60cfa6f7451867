"""The planner's decisions, as tables: each row is a world (instances of an old or new template in
slots, in some state) and the actions the planner must answer with.

World tokens read ``<template><slot>:<condition>``: ``n8002:ready`` is an instance of the current
spec in slot 8002 that is ready, ``o8001:failed`` one of the previous spec whose process failed.
Conditions: ready, unregistered (running, no registration), pending (scheduled, not yet running),
unscheduled (fresh, no machine), stuck (unscheduled for longer than the grace), failed (its process
failed and its back-off has run out), crashed (failed, seen for the first time), stopped
(desiredState loaded), stale (only a leftover state of another file is left), elsewhere (its state
is reported by another machine), restarting (activating/auto-restart).

Every table row is also checked for idempotence: the world that results from applying the actions
must not make the planner ask for the same actions again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from fleetop.controller.services.instances import UNSCHEDULED_GRACE
from fleetop.controller.services.memory import Plan, PlanMemory, Restart, Seen
from fleetop.controller.services.planner import plan
from fleetop.controller.services.rollout import Limits
from fleetop.controller.services.unitrender import render_main, render_sidekick
from fleetop.controller.world import (
    Action,
    CreateUnit,
    DestroyUnit,
    FleetIndex,
    ObservedMachine,
    ObservedState,
    ObservedUnit,
    Progress,
    SetDesiredState,
)
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import UnitOption, unit_hash
from fleetop.models import ServiceSpec

NAME = "web"
NOW = 1_700_000_000.0
MACHINES = [ObservedMachine(f"m{i}", f"10.0.0.{i}", {"role": "web"}) for i in range(1, 7)]


def make_spec(
    replicas: int = 3,
    *,
    command: str = "/usr/bin/app v2",
    ports: int | None = 8001,
    sidekick: bool = False,
    prefix: str | None = None,
    spread: bool = False,
    surge: int | str = 1,
    unavailable: int | str = 0,
    min_ready: int = 0,
    deadline: int = 600,
    paused: bool = False,
    placement: dict[str, Any] | None = None,
    check: dict[str, Any] | None = None,
) -> ServiceSpec:
    document: dict[str, Any] = {
        "replicas": replicas,
        "unit": {"execStart": command},
        "placement": {"spread": spread, **(placement or {})},
        "discovery": {"sidekick": sidekick, **({"prefix": prefix} if prefix else {}), "check": check or {}},
        "rollout": {
            "maxSurge": surge,
            "maxUnavailable": unavailable,
            "minReadySeconds": min_ready,
            "progressDeadlineSeconds": deadline,
        },
        "paused": paused,
    }
    if ports is not None:
        document["ports"] = {"base": ports}
    return ServiceSpec.model_validate(document)


def old_of(spec: ServiceSpec) -> ServiceSpec:
    return spec.model_copy(update={"unit": spec.unit.model_copy(update={"exec_start": "/usr/bin/app v1"})})


@dataclass
class World:
    units: list[ObservedUnit] = field(default_factory=list)
    states: list[ObservedState] = field(default_factory=list)
    registrations: dict[str, bool] = field(default_factory=dict)
    machines: list[ObservedMachine] = field(default_factory=lambda: list(MACHINES))
    memory: PlanMemory = field(default_factory=PlanMemory)

    def plan(self, spec: ServiceSpec | None, now: float = NOW, generation: int = 3) -> Plan:
        return plan(
            NAME,
            spec,
            generation,
            FleetIndex.build(self.units, self.states, self.machines),
            self.registrations,
            now,
            self.memory,
        )

    def unit(self, name: str) -> ObservedUnit:
        return next(u for u in self.units if u.name == name)


def _add_instance(world: World, spec: ServiceSpec, slot: int, condition: str, machine: str) -> None:
    options = tuple(render_main(spec, NAME, slot))
    file_hash = unit_hash(options)
    name = f"{NAME}@{slot}.service"
    unscheduled = condition in ("unscheduled", "stuck")
    current = {"pending": "inactive", "stopped": "loaded"}.get(
        condition, "inactive" if unscheduled else "launched"
    )
    desired = "loaded" if condition == "stopped" else "launched"
    world.units.append(ObservedUnit(name, options, desired, current, None if unscheduled else machine))
    states = {
        "ready": ("loaded", "active", "running"),
        "unregistered": ("loaded", "active", "running"),
        "failed": ("loaded", "failed", "failed"),
        "crashed": ("loaded", "failed", "failed"),
        "restarting": ("loaded", "activating", "auto-restart"),
        "stopped": ("loaded", "inactive", "dead"),
        "rejected": ("bad-setting", "inactive", "dead"),
    }
    if condition in states:
        world.states.append(ObservedState(name, file_hash, machine, *states[condition]))
    elif condition == "stale":
        world.states.append(ObservedState(name, "0" * 40, machine))
    elif condition == "elsewhere":
        world.states.append(ObservedState(name, file_hash, "m-other"))
    if condition == "stuck":
        seen = dict(world.memory.unscheduled_since)
        seen[name] = Seen(file_hash, NOW - UNSCHEDULED_GRACE - 5)
        world.memory = replace(world.memory, unscheduled_since=seen)
    if condition == "failed":
        due = Restart(slot, "main", "failed", 0, NOW - 20, NOW - 10, "loaded/failed/failed", machine)
        world.memory = replace(world.memory, restarts={**world.memory.restarts, name: due})
    if condition == "ready":
        world.registrations[str(slot)] = True
    if spec.discovery.sidekick:
        side_options = tuple(render_sidekick(spec, NAME, slot))
        side = f"{NAME}-discovery@{slot}.service"
        world.units.append(
            ObservedUnit(side, side_options, "launched", current, None if unscheduled else machine)
        )
        if not unscheduled and current == "launched":
            world.states.append(ObservedState(side, unit_hash(side_options), machine))


def world_of(spec: ServiceSpec, tokens: str, *, machines: list[ObservedMachine] | None = None) -> World:
    world = World(machines=list(machines if machines is not None else MACHINES))
    old = old_of(spec)
    ids = [m.id for m in world.machines] or ["m1"]
    for index, token in enumerate(tokens.split()):
        head, _, condition = token.partition(":")
        which, slot = head[0], int(head[1:])
        _add_instance(world, spec if which == "n" else old, slot, condition or "ready", ids[index % len(ids)])
    return world


def make_spec_template(spec: ServiceSpec) -> str:
    owner = owned_by(render_main(spec, NAME, 1))
    assert owner is not None
    return owner.template


def names(actions: list[Action], kind: type, role: str = "main") -> list[str]:
    """Instance numbers the actions of ``kind`` touch, for main units or sidekicks."""
    marker = f"{NAME}-discovery@" if role == "sidekick" else f"{NAME}@"
    return [
        a.name.removeprefix(marker).removesuffix(".service")
        for a in actions
        if isinstance(a, kind) and a.name.startswith(marker)
    ]


def apply(world: World, result: Plan) -> World:
    """The world after the executor ran the plan: creates, desired states, destroys (states linger)."""
    units = {u.name: u for u in world.units}
    for action in result.actions:
        if isinstance(action, CreateUnit):
            assert action.name not in units, f"create over an existing unit: {action.name}"
            units[action.name] = ObservedUnit(
                action.name, action.options, action.desired_state, "inactive", None
            )
        elif isinstance(action, SetDesiredState):
            units[action.name] = replace(units[action.name], desired_state=action.state)
        elif isinstance(action, DestroyUnit):
            del units[action.name]
    return replace(world, units=sorted(units.values(), key=lambda u: u.name), memory=result.memory)


def assert_not_repeated(world: World, spec: ServiceSpec | None, result: Plan) -> None:
    again = apply(world, result).plan(spec)
    done = {(type(a), a.name) for a in result.actions}
    repeated = [a for a in again.actions if (type(a), a.name) in done]
    assert not repeated, repeated


def assert_order(actions: list[Action]) -> None:
    """Creates, then desired states, then destroys; sidekicks destroyed before main units."""
    rank = [0 if isinstance(a, CreateUnit) else 1 if isinstance(a, SetDesiredState) else 2 for a in actions]
    assert rank == sorted(rank), actions
    destroys = [a.name for a in actions if isinstance(a, DestroyUnit)]
    sides = [i for i, n in enumerate(destroys) if "-discovery@" in n]
    mains = [i for i, n in enumerate(destroys) if "-discovery@" not in n]
    assert not sides or not mains or max(sides) < min(mains), destroys


# -- scaling and repair ---------------------------------------------------------------------------------

SCALE: list[tuple[str, ServiceSpec, str, list[str], list[str]]] = [
    ("empty to three", make_spec(3), "", ["8001", "8002", "8003"], []),
    ("one to three", make_spec(3), "n8001", ["8002", "8003"], []),
    ("gap filled lowest first", make_spec(3), "n8001 n8003", ["8002"], []),
    ("lowest free slots", make_spec(3), "n8002", ["8001", "8003"], []),
    ("converged", make_spec(3), "n8001 n8002 n8003", [], []),
    ("starting instances count", make_spec(3), "n8001:pending n8002:unscheduled n8003", [], []),
    ("restarting is not failed", make_spec(3), "n8001:restarting n8002 n8003", [], []),
    ("rejected unit file is not replaced", make_spec(3), "n8001:rejected n8002 n8003", [], []),
    ("stale state is only not ready", make_spec(3), "n8001:stale n8002 n8003", [], []),
    ("scale down highest first", make_spec(1), "n8001 n8002 n8003", [], ["8002", "8003"]),
    ("scale down unscheduled first", make_spec(2), "n8001 n8002:unscheduled n8003", [], ["8002"]),
    ("scale down failed first", make_spec(2), "n8001 n8002 n8003:failed", [], ["8003"]),
    ("scale down not ready first", make_spec(2), "n8001:pending n8002 n8003", [], ["8001"]),
    (
        "scale down unregistered first",
        make_spec(2, sidekick=True),
        "n8001 n8002:unregistered n8003",
        [],
        ["8002"],
    ),
    (
        "scale down order: failed, unscheduled, pending",
        make_spec(1),
        "n8001:pending n8002:failed n8003:unscheduled",
        [],
        ["8002", "8003"],
    ),
    ("scale to zero", make_spec(0), "n8001 n8002 o8003", [], ["8001", "8002", "8003"]),
    ("zero stays zero", make_spec(0), "", [], []),
    ("failed replaced in its own slot", make_spec(3), "n8001 n8002:failed n8003", [], ["8002"]),
    ("fresh failure waits for its back-off", make_spec(3), "n8001 n8002:crashed n8003", [], []),
    (
        "failed replaced in place",
        make_spec(3, surge=0, unavailable=1),
        "n8001 n8002:failed n8003",
        [],
        ["8002"],
    ),
    ("freed slot refilled", make_spec(3, surge=0, unavailable=1), "n8001 n8003", ["8002"], []),
    ("two failed, surge 1", make_spec(3), "n8001:failed n8002:failed n8003", [], ["8001", "8002"]),
    (
        "percent surge",
        make_spec(4, surge="25%", unavailable="25%"),
        "n8001 n8002 n8003:failed n8004",
        [],
        ["8003"],
    ),
    ("no ports: slots from 1", make_spec(2, ports=None), "", ["1", "2"], []),
    ("no ports: gap", make_spec(3, ports=None), "n2", ["1", "3"], []),
    ("stopped is relaunched, not replaced", make_spec(3), "n8001:stopped n8002 n8003", [], []),
    ("state elsewhere is not ready, not replaced", make_spec(3), "n8001:elsewhere n8002 n8003", [], []),
    ("stuck replaced in its own slot", make_spec(3), "n8001 n8002:stuck n8003", [], ["8002"]),
    ("fresh unscheduled kept", make_spec(3), "n8001 n8002:unscheduled n8003", [], []),
    ("excess and failed", make_spec(2), "n8001 n8002 n8003 n8004:failed n8005", [], ["8003", "8004", "8005"]),
]


@pytest.mark.parametrize(
    ("spec", "tokens", "creates", "destroys"), [c[1:] for c in SCALE], ids=[c[0] for c in SCALE]
)
def test_scale_and_repair(spec: ServiceSpec, tokens: str, creates: list[str], destroys: list[str]) -> None:
    world = world_of(spec, tokens)
    result = world.plan(spec)
    assert names(result.actions, CreateUnit) == creates
    assert sorted(names(result.actions, DestroyUnit)) == sorted(destroys)
    assert_order(result.actions)
    assert_not_repeated(world, spec, result)


# -- rolling updates -------------------------------------------------------------------------------------

ROLL: list[tuple[str, ServiceSpec, str, list[str], list[str]]] = [
    ("surge: start", make_spec(3), "o8001 o8002 o8003", ["8004"], []),
    ("surge: wait for the new one", make_spec(3), "o8001 o8002 o8003 n8004:pending", [], []),
    (
        "surge: unregistered is not ready",
        make_spec(3, sidekick=True),
        "o8001 o8002 o8003 n8004:unregistered",
        [],
        [],
    ),
    ("surge: new ready, retire one old", make_spec(3), "o8001 o8002 o8003 n8004", [], ["8003"]),
    ("surge: refill freed slot", make_spec(3), "o8001 o8002 n8004", ["8003"], []),
    ("surge: next old", make_spec(3), "o8001 o8002 n8003 n8004", [], ["8002"]),
    ("surge: last old", make_spec(3), "o8001 n8002 n8003 n8004", [], ["8001"]),
    ("surge: done", make_spec(3), "n8002 n8003 n8004", [], []),
    ("in place: start", make_spec(3, surge=0, unavailable=1), "o8001 o8002 o8003", [], ["8003"]),
    ("in place: recreate in the slot", make_spec(3, surge=0, unavailable=1), "o8001 o8002", ["8003"], []),
    ("in place: wait", make_spec(3, surge=0, unavailable=1), "o8001 o8002 n8003:pending", [], []),
    ("in place: next", make_spec(3, surge=0, unavailable=1), "o8001 o8002 n8003", [], ["8002"]),
    ("surge and unavailable", make_spec(3, surge=1, unavailable=1), "o8001 o8002 o8003", ["8004"], ["8003"]),
    ("surge 2: start", make_spec(3, surge=2), "o8001 o8002 o8003", ["8004", "8005"], []),
    ("surge 2: one ready", make_spec(3, surge=2), "o8001 o8002 o8003 n8004 n8005:pending", [], ["8003"]),
    (
        "percentages",
        make_spec(4, surge="25%", unavailable="25%"),
        "o8001 o8002 o8003 o8004",
        ["8005"],
        ["8004"],
    ),
    (
        "small percentages round",
        make_spec(3, surge="10%", unavailable="10%"),
        "o8001 o8002 o8003",
        ["8004"],
        [],
    ),
    (
        "zero percent surge",
        make_spec(4, surge="0%", unavailable="50%"),
        "o8001 o8002 o8003 o8004",
        [],
        ["8003", "8004"],
    ),
    (
        "all at once",
        make_spec(3, surge=0, unavailable="100%"),
        "o8001 o8002 o8003",
        [],
        ["8001", "8002", "8003"],
    ),
    ("old not ready: no room to retire", make_spec(3), "o8001 o8002:pending o8003", ["8004"], []),
    ("old not ready retired first", make_spec(3), "o8001 o8002:pending o8003 n8004", [], ["8002"]),
    ("old failed replaced", make_spec(3), "o8001 o8002:failed o8003", ["8004"], ["8002"]),
    ("old stuck replaced", make_spec(3), "o8001 o8002:stuck o8003", ["8004"], ["8002"]),
    ("new failed replaced", make_spec(3), "o8001 o8002 o8003 n8004:failed", [], ["8004"]),
    ("new crashed waits", make_spec(3), "o8001 o8002 o8003 n8004:crashed", [], []),
    ("replicas lowered mid-rollout", make_spec(1), "o8001 o8002 o8003 n8004", [], ["8001", "8002", "8003"]),
    ("replicas raised mid-rollout", make_spec(5), "o8001 o8002 n8003", ["8004", "8005", "8006"], []),
    ("no ports", make_spec(3, ports=None), "o1 o2 o3", ["4"], []),
    ("paused: no replacement", make_spec(3, paused=True), "o8001 o8002 o8003", [], []),
    ("paused: scale up with current spec", make_spec(3, paused=True), "o8001 o8002", ["8003"], []),
    (
        "paused: failed still replaced",
        make_spec(3, paused=True),
        "o8001 o8002:failed o8003",
        [],
        ["8002"],
    ),
    ("paused: scale down", make_spec(2, paused=True), "o8001 n8002 o8003", [], ["8003"]),
]


@pytest.mark.parametrize(
    ("spec", "tokens", "creates", "destroys"), [c[1:] for c in ROLL], ids=[c[0] for c in ROLL]
)
def test_rolling_update(spec: ServiceSpec, tokens: str, creates: list[str], destroys: list[str]) -> None:
    world = world_of(spec, tokens)
    result = world.plan(spec)
    assert names(result.actions, CreateUnit) == creates
    assert sorted(names(result.actions, DestroyUnit)) == sorted(destroys)
    for action in result.actions:
        if isinstance(action, CreateUnit):
            assert action.options == tuple(render_main(spec, NAME, 0)), "new units get the current spec"
    assert_order(result.actions)
    assert_not_repeated(world, spec, result)


@pytest.mark.parametrize(
    ("spec", "tokens"),
    [(c[1], c[2]) for c in ROLL + SCALE],
    ids=[c[0] for c in ROLL + SCALE],
)
def test_bounds(spec: ServiceSpec, tokens: str) -> None:
    """Creations never pass replicas + maxSurge; destroys never take ready below replicas - maxUnavailable
    unless the user asked for fewer replicas."""
    world = world_of(spec, tokens)
    result = world.plan(spec)
    limits = Limits.from_spec(spec, replicas=spec.replicas)
    mains = [u for u in world.units if "-discovery@" not in u.name]
    created = names(result.actions, CreateUnit)
    if created:
        assert len(mains) + len(created) <= limits.ceiling
    assert result.status is not None
    ready = {f"{NAME}@{u.instance}.service" for u in result.status.units if u.role == "main" and u.ready}
    destroyed = {a.name for a in result.actions if isinstance(a, DestroyUnit)}
    if len(mains) <= limits.ceiling:
        assert len(ready - destroyed) >= min(len(ready), limits.min_ready)


def test_rollout_walkthrough_surge() -> None:
    """A whole rollout on a world where every created unit becomes ready before the next pass."""
    spec = make_spec(3)
    world = world_of(spec, "o8001 o8002 o8003")
    seen_slots: list[list[str]] = []
    for _ in range(12):
        result = world.plan(spec)
        if not result.actions:
            break
        world = apply(world, result)
        tokens = " ".join(
            f"{'n' if u.options == tuple(render_main(spec, NAME, 0)) else 'o'}{u.name[4:-8]}"
            for u in world.units
        )
        seen_slots.append(tokens.split())
        world = replace(world_of(spec, tokens), memory=world.memory)
    assert seen_slots[-1] == ["n8002", "n8003", "n8004"]
    assert all(len(step) <= 4 for step in seen_slots)


# -- sidekicks -------------------------------------------------------------------------------------------


def test_sidekicks_created_with_their_main_units() -> None:
    spec = make_spec(2, sidekick=True)
    result = World().plan(spec)
    assert [a.name for a in result.actions] == [
        "web@8001.service",
        "web-discovery@8001.service",
        "web@8002.service",
        "web-discovery@8002.service",
    ]
    side = next(
        a for a in result.actions if isinstance(a, CreateUnit) and a.name == "web-discovery@8002.service"
    )
    assert side.options == tuple(render_sidekick(spec, NAME, 8002))


def test_sidekicks_destroyed_with_their_main_units() -> None:
    spec = make_spec(1, sidekick=True)
    world = world_of(spec, "n8001 n8002")
    result = world.plan(spec)
    assert [a.name for a in result.actions] == ["web-discovery@8002.service", "web@8002.service"]


def test_sidekick_turned_on_adds_sidekicks() -> None:
    world = world_of(make_spec(2), "n8001 n8002")
    spec = make_spec(2, sidekick=True)
    result = world.plan(spec)
    assert names(result.actions, CreateUnit, "sidekick") == ["8001", "8002"]
    assert names(result.actions, CreateUnit) == []
    assert names(result.actions, DestroyUnit) == []
    assert_not_repeated(world, spec, result)


def test_sidekick_turned_off_removes_sidekicks() -> None:
    world = world_of(make_spec(2, sidekick=True), "n8001 n8002")
    spec = make_spec(2)
    result = world.plan(spec)
    assert names(result.actions, DestroyUnit, "sidekick") == ["8001", "8002"]
    assert names(result.actions, DestroyUnit) == []
    assert_not_repeated(world, spec, result)


def test_changed_check_rolls_instances() -> None:
    world = world_of(make_spec(2, sidekick=True), "n8001 n8002")
    spec = make_spec(2, sidekick=True, check={"http": "/healthz"})
    result = world.plan(spec)
    assert names(result.actions, CreateUnit) == ["8003"]
    assert names(result.actions, CreateUnit, "sidekick") == ["8003"]
    assert result.status is not None and result.status.replicas.updated == 0


def test_orphan_sidekick_is_destroyed() -> None:
    spec = make_spec(1, sidekick=True)
    world = world_of(spec, "n8001 n8002")
    world.units = [u for u in world.units if u.name != "web@8002.service"]
    result = world.plan(spec)
    assert [(type(a), a.name) for a in result.actions] == [(DestroyUnit, "web-discovery@8002.service")]


def _fail_sidekick(world: World, slot: int) -> None:
    side = f"web-discovery@{slot}.service"
    world.states = [
        replace(s, active_state="failed", sub_state="failed") if s.name == side else s for s in world.states
    ]
    world.registrations.pop(str(slot), None)


def test_failed_sidekick_restarts_alone_with_its_own_back_off() -> None:
    spec = make_spec(2, sidekick=True)
    world = world_of(spec, "n8001 n8002")
    _fail_sidekick(world, 8002)
    side = "web-discovery@8002.service"
    first = world.plan(spec)
    assert first.actions == [], "a fresh failure waits for its back-off"
    record = first.memory.restarts[side]
    assert (record.phase, record.role, record.next_try) == ("failed", "discovery", NOW + 10)
    assert "web@8002.service" not in first.memory.restarts
    world.memory = first.memory
    due = world.plan(spec, NOW + 10)
    assert [(type(a), a.name) for a in due.actions] == [(DestroyUnit, side)]
    assert [e.reason for e in due.events] == ["BackOff"]
    assert "web@8002.service keeps running" in due.events[0].message
    gone = apply(world, due)
    lingering = gone.plan(spec, NOW + 11)
    assert lingering.actions == [], "the sidekick's failed state of the same file still lingers"
    gone.states = [s for s in gone.states if s.name != side]
    again = gone.plan(spec, NOW + 12)
    assert [(type(a), a.name) for a in again.actions] == [(CreateUnit, side)]
    assert again.memory.restarts[side].count == 1
    assert all(a.name != "web@8002.service" for a in [*due.actions, *again.actions])


def test_sidekick_of_a_failed_main_unit_is_not_restarted_on_its_own() -> None:
    spec = make_spec(1, sidekick=True)
    world = world_of(spec, "n8001:crashed")
    _fail_sidekick(world, 8001)
    result = world.plan(spec)
    assert set(result.memory.restarts) == {"web@8001.service"}


def test_stuck_sidekick_is_recreated() -> None:
    spec = make_spec(1, sidekick=True)
    world = world_of(spec, "n8001")
    side = world.unit("web-discovery@8001.service")
    world.units = [
        replace(side, machine_id=None, current_state="inactive") if u is side else u for u in world.units
    ]
    world.states = [s for s in world.states if s.name != side.name]
    world.memory = PlanMemory(unscheduled_since={side.name: Seen(unit_hash(side.options), NOW - 60)})
    result = world.plan(spec)
    assert [(type(a), a.name) for a in result.actions] == [(DestroyUnit, side.name)]
    after = apply(world, result).plan(spec)
    assert [(type(a), a.name) for a in after.actions] == [(CreateUnit, side.name)]


def test_sidekick_desired_state_is_repaired() -> None:
    spec = make_spec(1, sidekick=True)
    world = world_of(spec, "n8001")
    world.units = [replace(u, desired_state="loaded") if "discovery" in u.name else u for u in world.units]
    result = world.plan(spec)
    assert result.actions == [SetDesiredState("web-discovery@8001.service", "launched")]


# -- readiness -------------------------------------------------------------------------------------------

READINESS: list[tuple[str, str, dict[str, Any], bool, bool]] = [
    # (id, condition, spec options, running, ready)
    ("running, no discovery", "ready", {}, True, True),
    ("running, no discovery, no registration needed", "unregistered", {}, True, True),
    ("running, registered by sidekick", "ready", {"sidekick": True}, True, True),
    ("running, sidekick, not registered", "unregistered", {"sidekick": True}, True, False),
    ("running, prefix without sidekick, registered", "ready", {"prefix": "/services/web"}, True, True),
    (
        "running, prefix without sidekick, not registered",
        "unregistered",
        {"prefix": "/services/web"},
        True,
        False,
    ),
    ("pending", "pending", {}, False, False),
    ("unscheduled", "unscheduled", {}, False, False),
    ("failed", "failed", {}, False, False),
    ("restarting", "restarting", {}, False, False),
    ("stopped", "stopped", {}, False, False),
    ("rejected unit file", "rejected", {}, False, False),
    ("only a stale state of another file", "stale", {}, False, False),
    ("state from another machine", "elsewhere", {}, False, False),
]


@pytest.mark.parametrize(
    ("condition", "options", "running", "ready"), [c[1:] for c in READINESS], ids=[c[0] for c in READINESS]
)
def test_readiness(condition: str, options: dict[str, Any], running: bool, ready: bool) -> None:
    spec = make_spec(1, **options)
    result = world_of(spec, f"n8001:{condition}").plan(spec)
    assert result.status is not None
    (unit,) = [u for u in result.status.units if u.role == "main"]
    assert (result.status.replicas.running, unit.ready, result.status.replicas.ready) == (
        int(running),
        ready,
        int(ready),
    )


def test_current_state_must_be_launched() -> None:
    spec = make_spec(1)
    world = world_of(spec, "n8001")
    world.units = [replace(u, current_state="loaded") for u in world.units]
    result = world.plan(spec)
    assert result.status is not None and result.status.replicas.ready == 0


def test_lingering_state_of_the_previous_file_is_ignored() -> None:
    """An instance replaced in place: its new unit runs nowhere yet, the old file's state lingers."""
    spec = make_spec(1)
    world = world_of(spec, "n8001:pending")
    old_hash = unit_hash(render_main(old_of(spec), NAME, 8001))
    world.states.append(ObservedState("web@8001.service", old_hash, "m1"))
    result = world.plan(spec)
    assert result.status is not None and result.status.replicas.ready == 0
    assert result.actions == []


@pytest.mark.parametrize(
    ("min_ready", "seen_ago", "ready", "requeue"),
    [
        (0, None, True, None),
        (10, None, False, 10.0),
        (10, 4.0, False, 6.0),
        (10, 10.0, True, None),
        (10, 30.0, True, None),
    ],
)
def test_min_ready_seconds(
    min_ready: int, seen_ago: float | None, ready: bool, requeue: float | None
) -> None:
    spec = make_spec(1, min_ready=min_ready)
    world = world_of(spec, "n8001")
    file_hash = unit_hash(render_main(spec, NAME, 8001))
    if seen_ago is not None:
        world.memory = PlanMemory(ready_since={"web@8001.service": Seen(file_hash, NOW - seen_ago)})
    result = world.plan(spec)
    assert result.status is not None and result.status.replicas.ready == int(ready)
    assert result.requeue_after == requeue
    assert result.memory.ready_since["web@8001.service"].hash == file_hash


def test_min_ready_clock_restarts_for_a_new_file() -> None:
    spec = make_spec(1, min_ready=10)
    world = world_of(spec, "n8001")
    world.memory = PlanMemory(ready_since={"web@8001.service": Seen("old-hash", NOW - 100)})
    result = world.plan(spec)
    assert result.status is not None and result.status.replicas.ready == 0
    assert result.memory.ready_since["web@8001.service"].since == NOW


def test_min_ready_clock_restarts_after_a_dip() -> None:
    spec = make_spec(1, min_ready=10)
    world = world_of(spec, "n8001")
    first = world.plan(spec)
    dipped = replace(world_of(spec, "n8001:restarting"), memory=first.memory).plan(spec, NOW + 20)
    assert "web@8001.service" not in dipped.memory.ready_since
    back = replace(world, memory=dipped.memory).plan(spec, NOW + 25)
    assert back.status is not None and back.status.replicas.ready == 0


# -- unscheduled instances and placement -------------------------------------------------------------------

THREE = MACHINES[:3]
TWO = MACHINES[:2]

PLACEMENT: list[tuple[str, ServiceSpec, str, list[ObservedMachine], list[str], list[str], str | None]] = [
    # (id, spec, tokens, machines, creates, destroys, Degraded reason fragment or None)
    (
        "spread, a machine free: replace",
        make_spec(3, spread=True),
        "n8001 n8002 n8003:stuck",
        THREE,
        [],
        ["8003"],
        None,
    ),
    (
        "spread, no machine free: keep",
        make_spec(3, spread=True),
        "n8001 n8002 n8003:stuck",
        TWO,
        [],
        [],
        "2 eligible",
    ),
    ("no spread, machines: replace", make_spec(3), "n8001 n8002 n8003:stuck", TWO, [], ["8003"], None),
    (
        "metadata nobody has: keep",
        make_spec(1, placement={"machineMetadata": {"role": ["gpu"]}}),
        "n8001:stuck",
        THREE,
        [],
        [],
        "no machine has metadata role=gpu",
    ),
    (
        "machine id not in the cluster",
        make_spec(1, placement={"machineId": "f" * 32}),
        "n8001:stuck",
        THREE,
        [],
        [],
        f"machine {'f' * 32} is not in the cluster",
    ),
    (
        "machineOf target not scheduled",
        make_spec(1, placement={"machineOf": "db.service"}),
        "n8001:stuck",
        THREE,
        [],
        [],
        "machineOf target db.service is not scheduled",
    ),
    ("no machines at all", make_spec(1), "n8001:stuck", [], [], [], "fleet lists no machines"),
    (
        "fresh unscheduled: wait",
        make_spec(3, spread=True),
        "n8001 n8002 n8003:unscheduled",
        THREE,
        [],
        [],
        None,
    ),
    (
        "spread, more replicas than machines",
        make_spec(3, spread=True),
        "",
        TWO,
        ["8001", "8002", "8003"],
        [],
        "3 replicas need 3 machines, 2 eligible",
    ),
    (
        "spread surge needs a machine",
        make_spec(2, spread=True),
        "o8001 o8002 n8003:stuck",
        TWO,
        [],
        [],
        "a surge needs 3 machines, 2 eligible",
    ),
]


@pytest.mark.parametrize(
    ("spec", "tokens", "machines", "creates", "destroys", "degraded"),
    [c[1:] for c in PLACEMENT],
    ids=[c[0] for c in PLACEMENT],
)
def test_unscheduled_and_placement(
    spec: ServiceSpec,
    tokens: str,
    machines: list[ObservedMachine],
    creates: list[str],
    destroys: list[str],
    degraded: str | None,
) -> None:
    world = world_of(spec, tokens, machines=machines)
    result = world.plan(spec)
    assert names(result.actions, CreateUnit) == creates
    assert sorted(names(result.actions, DestroyUnit)) == destroys
    assert result.status is not None
    condition = result.status.condition("Degraded")
    assert condition is not None
    if degraded is None:
        assert condition.status == "False", condition
    else:
        assert (condition.status, condition.reason) == ("True", "Unschedulable")
        assert degraded in condition.message
    assert_not_repeated(world, spec, result)


def test_spread_counts_unowned_units_that_conflict() -> None:
    spec = make_spec(3, spread=True)
    world = world_of(spec, "n8001 n8002 n8003:stuck", machines=THREE)
    world.units.append(
        ObservedUnit(
            "web@9999.service", (UnitOption("Service", "ExecStart", "/x"),), "launched", "launched", "m3"
        )
    )
    result = world.plan(spec)
    assert result.actions == []
    degraded = result.status.condition("Degraded") if result.status else None
    assert degraded is not None and "web@8003.service" in degraded.message


def test_unscheduled_grace_requeues() -> None:
    spec = make_spec(1)
    world = world_of(spec, "n8001:unscheduled")
    result = world.plan(spec)
    assert result.requeue_after == UNSCHEDULED_GRACE
    later = replace(world, memory=result.memory).plan(spec, NOW + UNSCHEDULED_GRACE)
    assert names(later.actions, DestroyUnit) == ["8001"]


def test_failed_instance_is_reported() -> None:
    spec = make_spec(2)
    result = world_of(spec, "n8001 n8002:crashed").plan(spec)
    degraded = result.status.condition("Degraded") if result.status else None
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "FailedToStart")
    assert degraded.message == (
        "web@8002.service loaded/failed/failed on m2, next try in 10s (at 2023-11-14T22:13:30Z)"
    )


# -- deletion and ownership ---------------------------------------------------------------------------------


def _foreign(name: str, section: str = "", service: str = "", role: str = "") -> ObservedUnit:
    options = [UnitOption("Service", "ExecStart", "/bin/other")]
    if section:
        options += [UnitOption(section, "Service", service), UnitOption(section, "Role", role)]
    return ObservedUnit(name, tuple(options), "launched", "launched", "m1")


def test_deletion_destroys_every_owned_unit_and_nothing_else() -> None:
    spec = make_spec(2, sidekick=True)
    world = world_of(spec, "n8001 o8002")
    world.units += [_foreign("web@8003.service"), _foreign("web@9999.service"), _foreign("api@8001.service")]
    result = world.plan(None)
    assert result.status is None
    assert result.memory == PlanMemory()
    assert [a.name for a in result.actions] == [
        "web-discovery@8001.service",
        "web-discovery@8002.service",
        "web@8001.service",
        "web@8002.service",
    ]
    assert all(isinstance(a, DestroyUnit) for a in result.actions)
    assert apply(world, result).plan(None).actions == []


def test_deletion_of_nothing() -> None:
    assert World(units=[_foreign("web@8001.service")]).plan(None).actions == []


OWNERSHIP: list[tuple[str, ServiceSpec, list[ObservedUnit], list[str], list[str]]] = [
    # (id, spec, foreign units, creates (main), destroys (any unit names))
    (
        "unowned name in a slot is skipped",
        make_spec(3),
        [_foreign("web@8001.service")],
        ["8002", "8003", "8004"],
        [],
    ),
    ("unowned units survive scale to zero", make_spec(0), [_foreign("web@8001.service")], [], []),
    (
        "another service's unit is skipped",
        make_spec(1),
        [_foreign("web@8001.service", "X-Fleetop", "api", "main")],
        ["8002"],
        [],
    ),
    (
        "a proxy unit of the same name is not ours",
        make_spec(1),
        [_foreign("web@8001.service", "X-Fleetop", "web", "proxy")],
        ["8002"],
        [],
    ),
    (
        "an unowned sidekick name blocks the slot",
        make_spec(1, sidekick=True),
        [_foreign("web-discovery@8001.service")],
        ["8002"],
        [],
    ),
    (
        "owned stray with a zero-padded name",
        make_spec(0),
        [_foreign("web@08001.service", "X-Fleetop", "web", "main")],
        [],
        ["web@08001.service"],
    ),
    (
        "owned stray with a name that is not a slot",
        make_spec(0),
        [_foreign("web@blue.service", "X-Fleetop", "web", "main")],
        [],
        ["web@blue.service"],
    ),
    (
        "owned main unit named like a sidekick",
        make_spec(0),
        [_foreign("web-discovery@1.service", "X-Fleetop", "web", "main")],
        [],
        ["web-discovery@1.service"],
    ),
    (
        "a section without Service is not ownership",
        make_spec(0),
        [_foreign("web@8001.service", "X-Fleetop", "", "main")],
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("spec", "foreign", "creates", "destroys"), [c[1:] for c in OWNERSHIP], ids=[c[0] for c in OWNERSHIP]
)
def test_ownership(
    spec: ServiceSpec, foreign: list[ObservedUnit], creates: list[str], destroys: list[str]
) -> None:
    world = World(units=list(foreign))
    result = world.plan(spec)
    assert names(result.actions, CreateUnit) == creates
    assert sorted(a.name for a in result.actions if isinstance(a, DestroyUnit)) == destroys
    touched = {a.name for a in result.actions}
    for unit in foreign:
        if unit.name not in destroys:
            assert unit.name not in touched
    assert_not_repeated(world, spec, result)


@pytest.mark.parametrize(
    ("lingering_hash", "creates"),
    [("same", ["8002", "8003", "8004"]), ("other", ["8001", "8002", "8003"])],
)
def test_slot_with_a_lingering_state_of_the_same_file_is_skipped(
    lingering_hash: str, creates: list[str]
) -> None:
    spec = make_spec(3)
    file_hash = unit_hash(render_main(spec, NAME, 8001)) if lingering_hash == "same" else "1" * 40
    world = World(states=[ObservedState("web@8001.service", file_hash, "m1", "loaded", "failed", "failed")])
    assert names(world.plan(spec).actions, CreateUnit) == creates


def test_desired_state_drift_is_repaired() -> None:
    spec = make_spec(3)
    world = world_of(spec, "n8001:stopped n8002 n8003")
    result = world.plan(spec)
    assert result.actions == [SetDesiredState("web@8001.service", "launched")]
    assert_not_repeated(world, spec, result)


# -- status and conditions ---------------------------------------------------------------------------------


def _conditions(result: Plan) -> dict[str, tuple[str, str]]:
    assert result.status is not None
    return {c.type: (c.status, c.reason) for c in result.status.conditions}


CONDITIONS: list[tuple[str, ServiceSpec, str, dict[str, tuple[str, str]]]] = [
    (
        "converged",
        make_spec(3),
        "n8001 n8002 n8003",
        {
            "Available": ("True", "MinimumReplicasAvailable"),
            "Progressing": ("True", "NewReplicaSetAvailable"),
            "Degraded": ("False", "AsExpected"),
        },
    ),
    (
        "starting",
        make_spec(3),
        "",
        {"Available": ("False", "MinimumReplicasUnavailable"), "Progressing": ("True", "ReplicaSetUpdated")},
    ),
    (
        "rolling with surge keeps availability",
        make_spec(3),
        "o8001 o8002 o8003 n8004:pending",
        {"Available": ("True", "MinimumReplicasAvailable"), "Progressing": ("True", "ReplicaSetUpdated")},
    ),
    (
        "one down is still available with maxUnavailable 1",
        make_spec(3, surge=0, unavailable=1),
        "n8001 n8002",
        {"Available": ("True", "MinimumReplicasAvailable")},
    ),
    (
        "one down is unavailable with maxUnavailable 0",
        make_spec(3),
        "n8001 n8002",
        {"Available": ("False", "MinimumReplicasUnavailable")},
    ),
    (
        "too many is not complete",
        make_spec(2),
        "n8001 n8002 n8003",
        {"Progressing": ("True", "ReplicaSetUpdated")},
    ),
    ("paused", make_spec(3, paused=True), "o8001 o8002 o8003", {"Progressing": ("Unknown", "Paused")}),
    (
        "zero replicas",
        make_spec(0),
        "",
        {
            "Available": ("True", "MinimumReplicasAvailable"),
            "Progressing": ("True", "NewReplicaSetAvailable"),
        },
    ),
    ("failed", make_spec(3), "n8001 n8002 n8003:failed", {"Degraded": ("True", "FailedToStart")}),
    ("crashed", make_spec(3), "n8001 n8002 n8003:crashed", {"Degraded": ("True", "FailedToStart")}),
    ("rejected", make_spec(3), "n8001 n8002 n8003:rejected", {"Degraded": ("True", "FailedToStart")}),
]


@pytest.mark.parametrize(
    ("spec", "tokens", "expected"), [c[1:] for c in CONDITIONS], ids=[c[0] for c in CONDITIONS]
)
def test_conditions(spec: ServiceSpec, tokens: str, expected: dict[str, tuple[str, str]]) -> None:
    got = _conditions(world_of(spec, tokens).plan(spec))
    for kind, value in expected.items():
        assert got[kind] == value, (kind, got)


@pytest.mark.parametrize(
    ("tokens", "counts"),
    [
        ("", (3, 0, 0, 0, 0)),
        ("n8001 n8002 n8003", (3, 3, 3, 3, 3)),
        ("n8001:pending n8002:unregistered n8003:failed", (3, 2, 1, 1, 3)),
        ("o8001 o8002 n8003", (3, 3, 3, 3, 1)),
        ("o8001:stale n8002:unscheduled", (3, 1, 0, 0, 1)),
    ],
)
def test_replica_counts(tokens: str, counts: tuple[int, int, int, int, int]) -> None:
    spec = make_spec(3)
    result = world_of(spec, tokens).plan(spec, generation=42)
    assert result.status is not None
    r = result.status.replicas
    assert (r.desired, r.launched, r.running, r.ready, r.updated) == counts
    assert result.status.observed_generation == 42
    assert result.status.template == make_spec_template(spec)


def test_units_are_listed_with_roles_sorted_by_name() -> None:
    spec = make_spec(2, sidekick=True)
    world = world_of(spec, "n8002 n8001:pending")
    result = world.plan(spec)
    assert result.status is not None
    rows = [(u.name, u.role, u.instance, u.machine, u.ready, u.registered) for u in result.status.units]
    assert rows == [
        ("web-discovery@8001.service", "discovery", "8001", "m2", False, False),
        ("web-discovery@8002.service", "discovery", "8002", "m1", True, True),
        ("web@8001.service", "main", "8001", "m2", False, False),
        ("web@8002.service", "main", "8002", "m1", True, True),
    ]
    main = result.status.units[-1]
    assert (main.load_state, main.active_state, main.sub_state) == ("loaded", "active", "running")
    assert (main.desired_state, main.current_state) == ("launched", "launched")


def test_converged_world_is_a_fixed_point() -> None:
    spec = make_spec(3, sidekick=True, min_ready=5)
    world = world_of(spec, "n8001 n8002 n8003")
    world.memory = world.plan(spec, NOW - 100).memory
    first = world.plan(spec)
    assert first.actions == []
    second = replace(world, memory=first.memory).plan(spec, NOW + 3600)
    assert second.actions == []
    assert second.status == first.status
    assert second.memory == first.memory
    assert second.requeue_after is None


def test_transition_time_moves_only_when_status_changes() -> None:
    spec = make_spec(3)
    world = world_of(spec, "n8001 n8002 n8003")
    first = world.plan(spec)
    assert first.status is not None
    times = {c.type: c.last_transition_time for c in first.status.conditions}
    assert set(times.values()) == {"2023-11-14T22:13:20Z"}
    broken = replace(world_of(spec, "n8001 n8002 n8003:restarting"), memory=first.memory).plan(spec, NOW + 60)
    assert broken.status is not None
    after = {c.type: c.last_transition_time for c in broken.status.conditions}
    assert after["Available"] == "2023-11-14T22:14:20Z"
    assert after["Progressing"] == times["Progressing"], "complete → in progress keeps status True"
    assert after["Degraded"] == times["Degraded"]


def _progress(since: float, complete: bool = False, template: str = "") -> Progress:
    return Progress(template, since, best_updated=0, best_ready=0, least_old=3, complete=complete)


@pytest.mark.parametrize(
    ("since_ago", "expected", "requeue"),
    [
        (0.0, ("True", "ReplicaSetUpdated"), 600.0),
        (100.0, ("True", "ReplicaSetUpdated"), 500.0),
        (599.0, ("True", "ReplicaSetUpdated"), 1.0),
        (600.0, ("False", "ProgressDeadlineExceeded"), None),
        (5000.0, ("False", "ProgressDeadlineExceeded"), None),
    ],
)
def test_progress_deadline(since_ago: float, expected: tuple[str, str], requeue: float | None) -> None:
    spec = make_spec(3)
    world = world_of(spec, "o8001 o8002 o8003 n8004:pending")
    template = world.plan(spec).status.template  # type: ignore[union-attr]
    world.memory = PlanMemory(progress=Progress(template, NOW - since_ago, 1, 0, 3, False))
    result = world.plan(spec)
    assert _conditions(result)["Progressing"] == expected
    assert result.requeue_after == requeue


def test_progress_resets_the_deadline() -> None:
    spec = make_spec(3)
    world = world_of(spec, "o8001 o8002 o8003 n8004")
    template = world.plan(spec).status.template  # type: ignore[union-attr]
    world.memory = PlanMemory(progress=Progress(template, NOW - 5000, 1, 0, 3, False))
    result = world.plan(spec)
    assert _conditions(result)["Progressing"] == ("True", "ReplicaSetUpdated")
    assert result.memory.progress is not None and result.memory.progress.since == NOW


def test_churn_is_not_progress() -> None:
    spec = make_spec(3)
    world = world_of(spec, "o8001 o8002 o8003 n8004:pending")
    template = world.plan(spec).status.template  # type: ignore[union-attr]
    world.memory = PlanMemory(progress=Progress(template, NOW - 5000, 2, 1, 3, False))
    assert _conditions(world.plan(spec))["Progressing"] == ("False", "ProgressDeadlineExceeded")


def test_new_template_starts_a_new_deadline() -> None:
    spec = make_spec(3)
    world = world_of(spec, "o8001 o8002 o8003")
    world.memory = PlanMemory(progress=Progress("previous", NOW - 5000, 3, 3, 0, True))
    result = world.plan(spec)
    assert _conditions(result)["Progressing"] == ("True", "ReplicaSetUpdated")
    assert result.memory.progress is not None and result.memory.progress.since == NOW


def test_paused_has_no_deadline() -> None:
    spec = make_spec(3, paused=True)
    world = world_of(spec, "o8001 o8002 o8003")
    world.memory = PlanMemory(progress=Progress("x", NOW - 5000, 0, 0, 3, False))
    result = world.plan(spec)
    assert _conditions(result)["Progressing"] == ("Unknown", "Paused")
    assert result.memory.progress is None
    assert result.requeue_after is None


def test_invalid_unit_is_reported_and_nothing_changes() -> None:
    spec = make_spec(3, command="/bin/echo " + "x" * 2100)
    world = world_of(make_spec(3), "n8001 n8002")
    result = world.plan(spec)
    assert result.actions == []
    assert result.status is not None
    invalid = result.status.condition("Invalid")
    assert invalid is not None and (invalid.status, invalid.reason) == ("True", "UnitRenderFailed")
    assert result.status.last_error is not None and "line too long" in result.status.last_error
    again = replace(world, memory=result.memory).plan(spec, NOW + 10)
    assert again.status == result.status


def test_memory_round_trips_through_json() -> None:
    import json

    spec = make_spec(3, min_ready=10)
    world = world_of(spec, "n8001 n8002:stuck n8003")
    memory = world.plan(spec).memory
    assert memory.ready_since and memory.unscheduled_since and memory.progress and memory.transitions
    assert PlanMemory.from_json(json.loads(json.dumps(memory.to_json()))) == memory


@pytest.mark.parametrize(
    "garbage", [{"readySince": {"a": 1}}, {"progress": {"template": "x"}}, {"transitions": []}]
)
def test_malformed_memory_is_forgotten(garbage: dict[str, Any]) -> None:
    assert PlanMemory.from_json(garbage) == PlanMemory()


# -- global services -------------------------------------------------------------------------------------


def _global_world(spec: ServiceSpec, template_spec: ServiceSpec, states: list[tuple[str, str]]) -> World:
    options = tuple(render_main(template_spec, NAME, 8001))
    unit = ObservedUnit("web@8001.service", options, "launched", "inactive", None)
    file_hash = unit_hash(options)
    observed = [
        ObservedState(
            unit.name, file_hash, machine, "loaded", active, "running" if active == "active" else active
        )
        for machine, active in states
    ]
    return World(units=[unit], states=observed)


def test_global_service_is_one_unit() -> None:
    spec = make_spec(5, placement={"global": True})
    result = World().plan(spec)
    assert [a.name for a in result.actions] == ["web@8001.service"]
    assert result.status is not None and result.status.replicas.desired == 1


@pytest.mark.parametrize(
    ("states", "ready", "degraded"),
    [
        ([], 0, "False"),
        ([("m1", "active")], 1, "False"),
        ([("m1", "active"), ("m2", "active")], 1, "False"),
        ([("m1", "active"), ("m2", "failed")], 1, "True"),
        ([("m1", "failed")], 0, "True"),
    ],
)
def test_global_readiness_and_failures(states: list[tuple[str, str]], ready: int, degraded: str) -> None:
    spec = make_spec(1, placement={"global": True})
    result = _global_world(spec, spec, states).plan(spec)
    assert result.actions == [], "a failure on some machines never destroys the unit everywhere"
    assert result.status is not None and result.status.replicas.ready == ready
    assert _conditions(result)["Degraded"][0] == degraded


def test_global_rollout_replaces_in_place() -> None:
    spec = make_spec(1, placement={"global": True})
    world = _global_world(spec, old_of(spec), [("m1", "active")])
    result = world.plan(spec)
    assert [(type(a), a.name) for a in result.actions] == [(DestroyUnit, "web@8001.service")]
    after = apply(world, result).plan(spec)
    assert [(type(a), a.name) for a in after.actions] == [(CreateUnit, "web@8001.service")]


def test_global_slot_waits_for_a_lingering_state_of_the_same_file() -> None:
    spec = make_spec(1, placement={"global": True})
    file_hash = unit_hash(render_main(spec, NAME, 8001))
    world = World(states=[ObservedState("web@8001.service", file_hash, "m1")])
    assert world.plan(spec).actions == []


def test_a_spec_that_becomes_valid_again_keeps_its_transition_times() -> None:
    good = make_spec(2)
    world = world_of(good, "n8001 n8002")
    first = world.plan(good)
    invalid = replace(world, memory=first.memory).plan(make_spec(2, command="/bin/" + "x" * 2100), NOW + 60)
    back = replace(world, memory=invalid.memory).plan(good, NOW + 120)
    assert back.status is not None and first.status is not None
    assert back.status.conditions == first.status.conditions
    assert back.status.condition("Invalid") is None
    assert "Invalid" not in back.memory.transitions


def test_a_sidekick_without_ports_is_invalid() -> None:
    # The model refuses this combination; a spec that bypassed it (model_copy skips validation) must
    # still never reach fleet.
    plain = make_spec(2, ports=None)
    spec = plain.model_copy(update={"discovery": plain.discovery.model_copy(update={"sidekick": True})})
    world = world_of(make_spec(2, ports=None), "n1 n2")
    result = world.plan(spec)
    assert result.actions == []
    invalid = result.status.condition("Invalid") if result.status else None
    assert invalid is not None and "ports.base" in invalid.message
