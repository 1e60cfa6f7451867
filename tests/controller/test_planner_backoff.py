"""Crash-loop back-off, lost machines and ``rollout.autoRollback``, decided by the pure planner with an
injected ``now``. Worlds are built with the token language of ``test_planner.py``."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import pytest
from test_planner import NOW, World, apply, make_spec, names, old_of, world_of

from fleetop.controller.services.memory import (
    BackoffPolicy,
    Plan,
    PlanMemory,
    Restart,
    Rollback,
    Seen,
    Stable,
)
from fleetop.controller.services.planner import plan
from fleetop.controller.services.report import memory_from_status
from fleetop.controller.services.rollout import Limits
from fleetop.controller.services.unitrender import render_main
from fleetop.controller.world import CreateUnit, DestroyUnit, FleetIndex, ObservedState
from fleetop.fleet.ownership import owned_by
from fleetop.fleet.units import unit_hash
from fleetop.models import ServiceSpec

MAIN = "web@8001.service"
DEFAULT = BackoffPolicy()


def _degraded(result: Plan) -> tuple[str, str, str]:
    assert result.status is not None
    condition = result.status.condition("Degraded")
    assert condition is not None
    return condition.status, condition.reason, condition.message


def _fleet_step(world: World, *, drain: bool = True) -> World:
    """What fleet does between two passes in a crash loop: every new unit is scheduled on m1 and
    fails at once; states of destroyed units drain (unless ``drain`` is False)."""
    units = [
        replace(u, machine_id="m1", current_state="launched") if u.machine_id is None else u
        for u in world.units
    ]
    present = {u.name for u in units}
    states = [s for s in world.states if s.name in present or not drain]
    stated = {s.name for s in states if s.name in present}
    states += [
        ObservedState(u.name, unit_hash(u.options), "m1", "loaded", "failed", "failed")
        for u in units
        if u.name not in stated
    ]
    return replace(world, units=units, states=states)


def _crash_loop(
    spec: ServiceSpec, seconds: float, policy: BackoffPolicy = DEFAULT
) -> list[tuple[float, str]]:
    """Run the planner once a second against a unit that can never start; return (time, name) of
    every unit it creates."""
    world = world_of(spec, "n8001:crashed")
    created: list[tuple[float, str]] = []
    now = NOW
    while now < NOW + seconds:
        result = _plan(world, spec, now, policy)
        created += [(now, a.name) for a in result.actions if isinstance(a, CreateUnit)]
        world = _fleet_step(apply(world, result))
        now += 1.0
    return created


def _plan(world: World, spec: ServiceSpec, now: float, policy: BackoffPolicy) -> Plan:
    return plan(
        "web",
        spec,
        3,
        FleetIndex.build(world.units, world.states, world.machines),
        world.registrations,
        now,
        world.memory,
        backoff=policy,
    )


# -- back-off ------------------------------------------------------------------------------------------


def test_a_unit_that_cannot_start_is_recreated_with_growing_intervals_under_its_own_name() -> None:
    created = _crash_loop(make_spec(1), 1300)
    assert {name for _, name in created} == {MAIN}, "the instance keeps its number, hence its port"
    times = [t for t, _ in created]
    gaps = [b - a for a, b in pairwise(times)]
    # each gap: one pass to see the failure, the delay, one pass to create again after the destroy
    assert gaps == [20 + 2, 40 + 2, 80 + 2, 160 + 2, 300 + 2, 300 + 2, 300 + 2]
    assert times[0] == NOW + 10 + 1


def test_without_back_off_the_same_loop_would_recreate_every_few_seconds() -> None:
    fast = BackoffPolicy(base=0.0, cap=0.0, reset=600.0)
    assert len(_crash_loop(make_spec(1), 120, fast)) >= 30
    assert len(_crash_loop(make_spec(1), 120)) == 3


def test_scaled_policy_keeps_the_default_shape() -> None:
    assert BackoffPolicy.scaled(10.0) == BackoffPolicy()
    one = BackoffPolicy.scaled(1.0)
    assert [one.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def _with_record(world: World, record: Restart, name: str = MAIN) -> World:
    return replace(world, memory=replace(world.memory, restarts={**world.memory.restarts, name: record}))


def test_back_off_is_forgotten_after_ten_minutes_ready() -> None:
    spec = make_spec(1)
    world = world_of(spec, "n8001")
    record = Restart(8001, "main", "created", 3, NOW - 1000, NOW - 990, "loaded/failed/failed", "m1")
    file_hash = world.states[0].hash
    almost = _with_record(world, record)
    almost.memory = replace(almost.memory, ready_since={MAIN: Seen(file_hash, NOW - 599)})
    kept = almost.plan(spec)
    assert kept.memory.restarts[MAIN].ran, "ready once: a later failure is a crash loop"
    assert kept.requeue_after == pytest.approx(1.0)
    assert kept.status is not None and kept.status.units[0].restarts == 3
    assert _degraded(kept)[0] == "False", "a restarted unit that is ready again is not degraded"
    forgotten = replace(almost, memory=kept.memory).plan(spec, NOW + 1)
    assert forgotten.memory.restarts == {}
    assert forgotten.status is not None and forgotten.status.units[0].restarts == 0


def test_a_failure_after_a_restart_waits_twice_as_long() -> None:
    spec = make_spec(1)
    world = _with_record(
        world_of(spec, "n8001:crashed"),
        Restart(8001, "main", "created", 2, NOW - 100, NOW - 60, "loaded/failed/failed", "m1"),
    )
    result = world.plan(spec)
    record = result.memory.restarts[MAIN]
    assert (record.phase, record.count, record.failed_at, record.next_try) == ("failed", 2, NOW, NOW + 40)
    assert result.actions == []
    assert result.requeue_after == pytest.approx(40.0)


def test_a_reserved_slot_waits_for_its_lingering_state_and_nothing_takes_its_place() -> None:
    spec = make_spec(3)
    world = world_of(spec, "n8001 n8002:failed n8003")
    destroyed = world.plan(spec)
    assert [(type(a), a.name) for a in destroyed.actions] == [(DestroyUnit, "web@8002.service")]
    lingering = apply(world, destroyed)
    waiting = lingering.plan(spec, NOW + 1)
    assert waiting.actions == [], "no other slot is created while 8002 is reserved"
    assert waiting.status is not None
    assert [(r.unit, r.phase) for r in waiting.status.restarts] == [("web@8002.service", "destroyed")]
    lingering.states = [s for s in lingering.states if s.name != "web@8002.service"]
    again = lingering.plan(spec, NOW + 2)
    assert names(again.actions, CreateUnit) == ["8002"]
    assert again.memory.restarts["web@8002.service"].count == 1


def test_a_reserved_slot_goes_first_on_scale_down() -> None:
    spec = make_spec(3)
    world = apply(
        world_of(spec, "n8001 n8002:failed n8003"), world_of(spec, "n8001 n8002:failed n8003").plan(spec)
    )
    result = world.plan(make_spec(2), NOW + 1)
    assert result.actions == []
    assert result.memory.restarts == {}


def _owned_mains(world: World) -> int:
    return sum(1 for u in world.units if owned_by(u.options) is not None and "-discovery@" not in u.name)


@pytest.mark.parametrize(
    ("spec", "tokens", "failed"),
    [
        # a scale-down with a new template, as a property test found it: 4 units, ceiling 3 + 1
        (make_spec(3), "o8002:failed o8003 o8004 o8005", "8002"),
        # a scale-down without a rollout, surge 0: 3 units, ceiling 3
        (make_spec(3, surge=0, unavailable=1), "n8002 n8003 n8004:failed", "8004"),
    ],
    ids=["rollout", "scale"],
)
def test_a_reserved_slot_waits_while_the_units_that_exist_fill_the_ceiling(
    spec: ServiceSpec, tokens: str, failed: str
) -> None:
    """8001's failed unit was destroyed and its back-off is over, but the units that exist already
    fill ``replicas + maxSurge``: as the executor creates before it destroys, 8001 is created again
    only on the pass after the scale-down took the failed unit."""
    limits = Limits.from_spec(spec, replicas=spec.replicas)
    record = Restart(8001, "main", "destroyed", 1, NOW - 30, NOW - 20, "loaded/failed/failed", "m1")
    world = _with_record(world_of(spec, tokens), record, "web@8001.service")
    assert _owned_mains(world) == limits.ceiling
    first = world.plan(spec)
    assert names(first.actions, CreateUnit) == []
    assert names(first.actions, DestroyUnit) == [failed]
    assert first.memory.restarts["web@8001.service"].phase == "destroyed", "8001 keeps its number"
    after = apply(world, first)
    second = after.plan(spec, NOW + 1)
    assert names(second.actions, CreateUnit) == ["8001"]
    assert _owned_mains(after) + 1 <= limits.ceiling


def test_an_instance_replaced_while_stuck_unscheduled_keeps_its_number_without_back_off() -> None:
    spec = make_spec(3)
    world = world_of(spec, "n8001 n8002:stuck n8003")
    destroyed = world.plan(spec)
    assert names(destroyed.actions, DestroyUnit) == ["8002"]
    again = apply(world, destroyed).plan(spec, NOW + 1)
    assert names(again.actions, CreateUnit) == ["8002"]
    assert again.memory.restarts == {}


# -- status: Degraded reasons and messages ---------------------------------------------------------------


def test_degraded_failed_to_start_names_the_unit_state_and_back_off() -> None:
    spec = make_spec(2)
    world = _with_record(
        world_of(spec, "n8001:crashed n8002"),
        Restart(8001, "main", "failed", 3, NOW - 5, NOW + 75, "loaded/failed/failed", "m1"),
    )
    status, reason, message = _degraded(world.plan(spec))
    assert (status, reason) == ("True", "FailedToStart")
    assert message == (
        "web@8001.service loaded/failed/failed on m1, restarted 3 times,"
        " next try in 80s (at 2023-11-14T22:14:35Z)"
    )


def test_degraded_crash_loop_for_a_unit_that_ran() -> None:
    spec = make_spec(1)
    world = world_of(spec, "n8001:crashed")
    world.memory = replace(world.memory, started={MAIN: world.states[0].hash})
    result = world.plan(spec)
    assert _degraded(result)[:2] == ("True", "CrashLoop")
    assert result.memory.restarts[MAIN].ran


def test_degraded_stays_while_a_recreated_unit_is_not_ready_yet() -> None:
    spec = make_spec(1)
    world = _with_record(
        world_of(spec, "n8001:pending"),
        Restart(8001, "main", "created", 1, NOW - 30, NOW - 20, "loaded/failed/failed", "m1"),
    )
    status, reason, message = _degraded(world.plan(spec))
    assert (status, reason) == ("True", "FailedToStart")
    assert "created again after loaded/failed/failed on m1, restarted 1 time, not ready yet" in message


def test_rejected_unit_file_failed_to_start() -> None:
    spec = make_spec(1)
    status, reason, message = _degraded(world_of(spec, "n8001:rejected").plan(spec))
    assert (status, reason) == ("True", "FailedToStart")
    assert "systemd rejected the unit (bad-setting)" in message


def test_degraded_unschedulable_comes_before_failures() -> None:
    spec = make_spec(3, spread=True)
    world = world_of(spec, "n8001:crashed n8002 n8003:stuck", machines=[])
    world.machines = []
    assert _degraded(world.plan(spec))[:2] == ("True", "Unschedulable")


def test_a_lost_machine_is_degraded_and_one_warning_event() -> None:
    spec = make_spec(2)
    world = world_of(spec, "n8001 n8002")
    first = world.plan(spec)
    assert first.memory.placed == {MAIN: "m1", "web@8002.service": "m2"}
    world.memory = first.memory
    world.machines = [m for m in world.machines if m.id != "m1"]
    world.units = [
        replace(u, machine_id=None, current_state="inactive") if u.name == MAIN else u for u in world.units
    ]
    world.states = [s for s in world.states if s.name != MAIN]
    lost = world.plan(spec, NOW + 1)
    status, reason, message = _degraded(lost)
    assert (status, reason) == ("True", "MachineLost")
    assert message == "web@8001.service was on machine m1, which left the cluster: unscheduled"
    assert [(e.reason, e.message, e.warning) for e in lost.events] == [
        ("MachineLost", "machine m1 left the cluster with web@8001.service", True)
    ]
    again = replace(world, memory=lost.memory).plan(spec, NOW + 2)
    assert again.events == [], "one event per lost machine, not one per pass"
    assert _degraded(again)[1] == "MachineLost"
    moved = replace(world, memory=again.memory)
    moved.units = [
        replace(u, machine_id="m3", current_state="launched") if u.name == MAIN else u for u in moved.units
    ]
    moved.states = [*moved.states, ObservedState(MAIN, unit_hash(moved.unit(MAIN).options), "m3")]
    back = moved.plan(spec, NOW + 3)
    assert _degraded(back)[0] == "False"
    assert back.memory.placed[MAIN] == "m3" and back.memory.lost == frozenset()


def test_fleet_listing_no_machine_is_not_every_machine_lost() -> None:
    spec = make_spec(1)
    world = world_of(spec, "n8001")
    world.memory = world.plan(spec).memory
    world.machines = []
    result = world.plan(spec, NOW + 1)
    assert result.events == []
    assert _degraded(result)[1] == "Unschedulable"


# -- events ----------------------------------------------------------------------------------------------


def test_each_replacement_is_one_warning_with_a_stable_message() -> None:
    spec = make_spec(1)
    world = world_of(spec, "n8001:failed")
    first = world.plan(spec)
    assert [(e.reason, e.warning) for e in first.events] == [("BackOff", True)]
    assert first.events[0].message == "Back-off restarting failed web@8001.service (loaded/failed/failed)"
    destroy = next(a for a in first.actions if isinstance(a, DestroyUnit))
    assert destroy.reason == "failed: created again under the same name after its back-off"
    again = apply(world, first).plan(spec, NOW + 1)
    assert again.events == [], "waiting for the state to drain is not another event"


# -- persistence: a new leader continues the back-off ---------------------------------------------------


def test_restart_records_survive_a_new_leader_through_status() -> None:
    spec = make_spec(2)
    world = _with_record(
        world_of(spec, "n8001:crashed n8002"),
        Restart(8001, "main", "failed", 2, NOW - 5, NOW + 35, "loaded/failed/failed", "m1", ran=True),
    )
    result = world.plan(spec)
    assert result.status is not None
    stored = type(result.status).model_validate_json(result.status.model_dump_json(by_alias=True))
    recovered = memory_from_status(stored)
    assert recovered.restarts == result.memory.restarts
    assert recovered.placed == result.memory.placed
    later = replace(world, memory=recovered).plan(spec, NOW + 34)
    assert later.actions == [], "a new leader does not restart early"
    due = replace(world, memory=recovered).plan(spec, NOW + 35)
    assert names(due.actions, DestroyUnit) == ["8001"]


def test_memory_with_restarts_and_rollback_round_trips_through_json() -> None:
    spec = make_spec(1)
    template = owned_by(render_main(spec, "web", 1))
    assert template is not None
    memory = PlanMemory(
        restarts={
            MAIN: Restart(8001, "main", "destroyed", 4, NOW, NOW + 160, "loaded/failed/failed", "m1", True)
        },
        placed={MAIN: "m1"},
        lost=frozenset({"m9"}),
        started={MAIN: "abc"},
        stable=Stable(template.template, spec),
        rollback=Rollback("new", template.template, 7, NOW),
    )
    assert PlanMemory.from_json(json.loads(json.dumps(memory.to_json()))) == memory
    assert PlanMemory.from_json({"restarts": {MAIN: {"phase": "exploded"}}}) == PlanMemory()


# -- rollout.autoRollback --------------------------------------------------------------------------------


def _auto(spec: ServiceSpec, on: bool = True) -> ServiceSpec:
    return spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"auto_rollback": on})})


def _template(spec: ServiceSpec) -> str:
    owner = owned_by(render_main(spec, "web", 1))
    assert owner is not None
    return owner.template


def _crash_looping_rollout(new: ServiceSpec) -> World:
    """Three ready instances of the old template (which was complete), a fourth of the new one that
    has been failing since the rollout began 700 s ago (deadline 600 s)."""
    old = old_of(new)
    complete = world_of(new, "o8001 o8002 o8003")
    stable = complete.plan(old, NOW - 800).memory
    assert stable.stable is not None and stable.stable.template == _template(old)
    world = world_of(new, "o8001 o8002 o8003 n8004:crashed")
    world.memory = stable
    world.memory = world.plan(new, NOW - 700).memory
    return world


def test_auto_rollback_goes_back_to_the_last_available_template() -> None:
    new = _auto(make_spec(3))
    world = _crash_looping_rollout(new)
    result = world.plan(new)
    assert result.events[0].reason == "RolledBack"
    assert result.status is not None
    progressing = result.status.condition("Progressing")
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "RolledBack")
    assert _template(new) in progressing.message and _template(old_of(new)) in progressing.message
    assert result.status.template == _template(old_of(new))
    assert result.status.rollback is not None and result.status.rollback.from_template == _template(new)
    assert names(result.actions, DestroyUnit) == ["8004"]
    assert names(result.actions, CreateUnit) == []
    held = apply(world, result).plan(new, NOW + 60)
    assert held.status is not None and held.status.template == _template(old_of(new))
    assert not any(isinstance(a, CreateUnit) for a in held.actions), "the rollback holds"
    assert held.memory.rollback is not None
    assert held.status.last_available is not None
    recovered = memory_from_status(held.status)
    assert recovered.rollback == held.memory.rollback and recovered.stable is not None


def test_writing_the_spec_again_ends_the_rollback() -> None:
    new = _auto(make_spec(3))
    world = _crash_looping_rollout(new)
    rolled = apply(world, world.plan(new))
    retry = rolled.plan(new, NOW + 60, generation=4)
    assert retry.memory.rollback is None
    creates = [a for a in retry.actions if isinstance(a, CreateUnit)]
    assert creates and all(a.options == tuple(render_main(new, "web", 0)) for a in creates)
    assert retry.status is not None and retry.status.template == _template(new)


def test_without_auto_rollback_the_deadline_is_only_reported() -> None:
    new = _auto(make_spec(3), on=False)
    result = _crash_looping_rollout(new).plan(new)
    assert result.status is not None
    progressing = result.status.condition("Progressing")
    assert progressing is not None and progressing.reason == "ProgressDeadlineExceeded"
    assert result.memory.rollback is None and result.status.rollback is None
    assert result.status.last_available is None


def test_a_rollout_that_is_only_slow_is_not_rolled_back() -> None:
    new = _auto(make_spec(3))
    old = old_of(new)
    world = world_of(new, "o8001 o8002 o8003")
    world.memory = world.plan(old, NOW - 800).memory
    world = replace(world_of(new, "o8001 o8002 o8003 n8004:pending"), memory=world.memory)
    world.memory = world.plan(new, NOW - 700).memory
    result = world.plan(new)
    assert result.memory.rollback is None
    progressing = result.status.condition("Progressing") if result.status else None
    assert progressing is not None and progressing.reason == "ProgressDeadlineExceeded"


def test_auto_rollback_is_in_the_spec_schema() -> None:
    spec = ServiceSpec.model_validate({"unit": {"execStart": "/bin/x"}, "rollout": {"autoRollback": True}})
    assert spec.rollout.auto_rollback
    assert not make_spec(1).rollout.auto_rollback


def test_the_operator_setting_scales_the_back_off() -> None:
    from fleetop.controller.runtime.settings import OperatorSettings
    from fleetop.errors import ConfigError

    assert OperatorSettings.from_flags({}, {}).workers.restart_backoff == 10.0
    assert OperatorSettings.from_flags({}, {"FLEETOP_RESTART_BACKOFF": "2s"}).workers.restart_backoff == 2.0
    flag_wins = OperatorSettings.from_flags({"restart_backoff": 0.5}, {"FLEETOP_RESTART_BACKOFF": "2"})
    assert flag_wins.workers.restart_backoff == 0.5
    with pytest.raises(ConfigError, match="FLEETOP_RESTART_BACKOFF: 'soon' is not a number of seconds"):
        OperatorSettings.from_flags({}, {"FLEETOP_RESTART_BACKOFF": "soon"})
    with pytest.raises(ConfigError, match="--restart-backoff: 'soon' is not a number of seconds"):
        OperatorSettings.from_flags({"restart_backoff": "soon"}, {})
