"""The planner: (spec, fleet's units, states, registrations, machines, now, memory) → (actions, status).

Pure: no I/O, no clock (``now`` is an argument), no randomness, so it is tested with tables and
property tests and the operator around it stays thin. Level-based: every pass decides from scratch
from what is observed, with :class:`PlanMemory` holding only the times fleet does not report.

One pass:

1. ownership: only units whose ``[X-Fleetop]`` section names this service are touched (``instances``);
2. readiness of each instance (``readiness``, ``instances``);
3. which instances to destroy and how many to create (``rollout``), after deciding which broken
   instances are worth replacing: a failed one always (it runs nowhere; systemd gave up), one stuck
   unscheduled only when an eligible machine is free for its replacement, since otherwise a new unit
   would be just as stuck;
4. repairs that need no arithmetic: a missing sidekick, a sidekick no longer wanted, an owned unit
   whose desiredState drifted, owned units that fit no slot;
5. status, conditions and the new memory (``report``, ``conditions``).

Semantics chosen where the design is silent:

- a global service is one unit ``<svc>@<base or 1>`` that fleet runs on every eligible machine; it is
  running when at least one machine runs it, it is replaced in place only (a second global copy would
  double every machine), and a failure on some machine is reported, never answered by destroying the
  unit everywhere;
- ``paused`` stops replacing instances of an old template; scaling and repairs continue, and new
  instances always get the current spec (the only one fleetop can render);
- a unit is never recreated under a name whose old state, with the same file hash, still lingers:
  fleet could not tell the two apart (``fleet-observed.md`` §13.11), so such a slot is skipped;
- an instance is the pair main + sidekick: a failed sidekick (it restarts itself, so failed means
  systemd's start limit) fails its instance, which is replaced whole; a sidekick stuck unscheduled
  next to a scheduled main unit is destroyed and created again; a sidekick whose template is stale
  makes its instance an old one, replaced by the rollout with its main unit;
- a replacement is created on a later pass than the destroy of the unit it replaces when it needs
  the same name, because the executor creates before it destroys. There is no crash-loop back-off:
  an instance that fails at once is replaced on every pass, within the surge budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetop.controller.conditions import invalid_condition
from fleetop.controller.instances import (
    UNSCHEDULED_GRACE,
    Desired,
    FleetView,
    Instance,
    Ownership,
    Scene,
    read_instances,
    read_ownership,
)
from fleetop.controller.readiness import eligible_machines, free_machines
from fleetop.controller.report import build_report
from fleetop.controller.rollout import Decision, Limits, Member, decide
from fleetop.controller.unitrender import (
    DEFAULT_UNITS,
    RenderError,
    UnitSettings,
    main_unit_name,
    sidekick_unit_name,
)
from fleetop.controller.world import (
    LAUNCHED,
    Action,
    CreateUnit,
    DestroyUnit,
    ObservedMachine,
    ObservedState,
    ObservedUnit,
    Plan,
    PlanMemory,
    SetDesiredState,
)
from fleetop.fleet.units import unit_hash
from fleetop.models.service import ServiceSpec
from fleetop.models.status import ServiceStatus

__all__ = ["UNSCHEDULED_GRACE", "plan", "plan_view"]


def plan(
    name: str,
    spec: ServiceSpec | None,
    generation: int,
    units: Sequence[ObservedUnit],
    states: Sequence[ObservedState],
    registrations: Mapping[str, bool],
    machines: Sequence[ObservedMachine],
    now: float,
    memory: PlanMemory,
    *,
    settings: UnitSettings = DEFAULT_UNITS,
) -> Plan:
    """Decide one reconcile pass for service ``name``. ``spec`` None means the service was deleted.
    ``settings`` are the installation's settings the units it writes carry (fleetop's path, key root).

    ``units`` are all of fleet's units (owned or not: names taken by others matter), ``states`` all
    UnitStates, ``registrations`` maps an instance ("8001") to whether it is registered.
    """
    view = FleetView.index(units, states, machines)
    return plan_view(name, spec, generation, view, registrations, now, memory, settings=settings)


def plan_view(
    name: str,
    spec: ServiceSpec | None,
    generation: int,
    view: FleetView,
    registrations: Mapping[str, bool],
    now: float,
    memory: PlanMemory,
    *,
    settings: UnitSettings = DEFAULT_UNITS,
) -> Plan:
    """:func:`plan` over fleet as indexed once per poll: what the operator calls on every pass."""
    ownership = read_ownership(name, view.claimed.get(name, ()))
    world = Scene(name, view.units, view.states, registrations, view.machines, ownership, now)
    if spec is None:
        return Plan(_destroy_everything(ownership), None, PlanMemory(), None)
    try:
        desired = Desired.build(spec, name, settings)
    except RenderError as exc:
        return _invalid(world, generation, str(exc), memory)
    return _plan_service(world, desired, generation, memory)


def _destroy_everything(ownership: Ownership) -> list[Action]:
    sidekicks = [DestroyUnit(u.name, "service deleted") for _, u in sorted(ownership.sidekicks.items())]
    mains = [DestroyUnit(u.name, "service deleted") for _, u in sorted(ownership.mains.items())]
    strays = [DestroyUnit(u.name, "service deleted") for u in ownership.strays]
    return [*sidekicks, *strays, *mains]


def _invalid(world: Scene, generation: int, message: str, memory: PlanMemory) -> Plan:
    condition, transition = invalid_condition(message, memory.transitions, world.now)
    status = ServiceStatus(observed_generation=generation, conditions=[condition], last_error=message)
    transitions = {**memory.transitions, "Invalid": transition}
    kept = PlanMemory(memory.ready_since, memory.unscheduled_since, memory.progress, transitions)
    return Plan([], status, kept, None)


def _replaceable(instances: list[Instance], desired: Desired, world: Scene) -> set[int]:
    """Slots worth replacing: failed ones, and stuck unscheduled ones while a machine is free."""
    if desired.global_:
        return set()
    chosen = {i.slot for i in instances if i.failed}
    stuck = sorted((i for i in instances if i.stuck), key=lambda i: i.slot)
    if stuck:
        eligible, _ = eligible_machines(desired.spec, world.machines, world.units)
        free = free_machines(desired.spec, world.service, eligible, world.units)
        chosen.update(i.slot for i in stuck[:free])
    return chosen


def _limits(desired: Desired) -> Limits:
    replicas = min(desired.spec.replicas, 1) if desired.global_ else desired.spec.replicas
    return Limits.from_spec(desired.spec, replicas=replicas, in_place_only=desired.global_)


def _plan_service(world: Scene, desired: Desired, generation: int, memory: PlanMemory) -> Plan:
    instances = read_instances(
        desired,
        world.ownership,
        world.states,
        world.registrations,
        memory.ready_since,
        memory.unscheduled_since,
        world.now,
    )
    replace = _replaceable(instances, desired, world)
    members = [
        Member(i.slot, i.updated, i.ready, i.health.unscheduled, i.failed, i.slot in replace)
        for i in instances
    ]
    limits = _limits(desired)
    decision = decide(members, limits)
    actions = _actions(world, desired, instances, decision)
    report = build_report(world, desired, instances, replace, limits, generation, memory)
    return Plan(actions, report.status, report.memory, report.requeue_after)


def _free_slots(world: Scene, desired: Desired, count: int) -> list[int]:
    """The lowest ``count`` slots whose names are unused and hold no same-hash leftover state."""
    found: list[int] = []
    for slot in desired.slots():
        if len(found) >= count:
            break
        main, side = main_unit_name(world.service, slot), sidekick_unit_name(world.service, slot)
        if main in world.units or side in world.units:
            continue
        if any(s.hash == desired.main_hash for s in world.states.get(main, ())):
            continue
        if desired.sidekick_template is not None and world.states.get(side):
            side_hash = unit_hash(desired.sidekick_options(slot))
            if any(s.hash == side_hash for s in world.states[side]):
                continue
        found.append(slot)
    return found


def _actions(world: Scene, desired: Desired, instances: list[Instance], decision: Decision) -> list[Action]:
    creates: list[Action] = []
    repairs: list[Action] = []
    side_destroys: list[Action] = []
    main_destroys: list[Action] = []
    gone = dict(decision.destroy)
    for slot in _free_slots(world, desired, decision.create):
        creates.append(CreateUnit(main_unit_name(world.service, slot), desired.main_options))
        if desired.sidekick_template is not None:
            creates.append(
                CreateUnit(sidekick_unit_name(world.service, slot), desired.sidekick_options(slot))
            )
    for instance in instances:
        if instance.slot in gone:
            main_destroys.append(DestroyUnit(instance.name, gone[instance.slot]))
            continue
        if instance.unit.desired_state != LAUNCHED:
            repairs.append(SetDesiredState(instance.name, LAUNCHED))
        if instance.sidekick is not None and instance.sidekick_stuck:
            # next to a scheduled main unit nothing else holds it back: recreate it on a later pass
            side_destroys.append(DestroyUnit(instance.sidekick.name, "sidekick stuck unscheduled"))
            continue
        creates.extend(_sidekick_create(world, desired, instance))
    mains = world.ownership.mains
    stuck = {i.slot for i in instances if i.sidekick_stuck and i.slot not in gone}
    for slot, sidekick in sorted(world.ownership.sidekicks.items()):
        if slot in stuck:
            continue
        if slot in gone:
            side_destroys.append(DestroyUnit(sidekick.name, f"with its main unit ({gone[slot]})"))
        elif slot not in mains:
            side_destroys.append(DestroyUnit(sidekick.name, "its main unit is gone"))
        elif desired.sidekick_template is None:
            side_destroys.append(DestroyUnit(sidekick.name, "discovery sidekick turned off"))
        elif sidekick.desired_state != LAUNCHED:
            repairs.append(SetDesiredState(sidekick.name, LAUNCHED))
    strays = [
        DestroyUnit(u.name, "owned unit with a name fleetop does not write") for u in world.ownership.strays
    ]
    return [*creates, *repairs, *side_destroys, *strays, *main_destroys]


def _sidekick_create(world: Scene, desired: Desired, instance: Instance) -> list[Action]:
    if desired.sidekick_template is None or instance.sidekick is not None:
        return []
    name = sidekick_unit_name(world.service, instance.slot)
    if name in world.units:
        return []  # taken by a unit that is not this service's: never overwrite it
    return [CreateUnit(name, desired.sidekick_options(instance.slot))]
