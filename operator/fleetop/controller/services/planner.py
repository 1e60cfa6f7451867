"""The planner: (spec, fleet's units, states, registrations, machines, now, memory) → (actions, status).

Pure: no I/O, no clock (``now`` is an argument), no randomness, so it is tested with tables and
property tests and the operator around it stays thin. Level-based: every pass decides from scratch
from what is observed, with :class:`PlanMemory` holding only what fleet does not report (times,
restart records, where instances ran, the last available template).

One pass:

1. ownership: only units whose ``[X-Fleetop]`` section names this service are touched (``instances``);
2. readiness of each instance (``readiness``, ``instances``);
3. crash-loop back-off (``restarts``): each failed unit gets a record and is kept until its delay
   has passed; slots whose unit the planner destroyed to create again are reserved;
4. which instances to destroy and how many to create (``rollout``), after deciding which broken
   instances are worth replacing now: a failed one whose back-off ran out (it runs nowhere; systemd
   gave up), one stuck unscheduled only when an eligible machine is free for its replacement, since
   otherwise a new unit would be just as stuck;
5. repairs that need no arithmetic: a missing sidekick, a sidekick no longer wanted, a failed
   sidekick (restarted alone, after its own back-off), an owned unit whose desiredState drifted,
   owned units that fit no slot;
6. status, conditions, events and the new memory (``report``, ``conditions``, ``machineloss``), and
   with ``rollout.autoRollback`` a rollback to the last available template (``rollback``).

Semantics chosen where the design is silent:

- a global service is one unit ``<svc>@<base or 1>`` that fleet runs on every eligible machine; it is
  running when at least one machine runs it, it is replaced in place only (a second global copy would
  double every machine), and a failure on some machine is reported, never answered by destroying the
  unit everywhere (so it has no back-off);
- ``paused`` stops replacing instances of an old template; scaling and repairs continue, and new
  instances always get the current spec (the only one fleetop can render);
- a unit is never recreated under a name whose old state, with the same file hash, still lingers:
  fleet could not tell the two apart (``fleet-observed.md`` §13.11), so such a slot is skipped, and
  a reserved slot waits;
- crash-loop back-off is Kubernetes' CrashLoopBackOff per unit: a failed unit is kept for 10 s, then
  destroyed and created again *under the same name* (same instance number, same port); every
  restart doubles the next delay up to 5 min; ten minutes ready forgets it
  (:class:`~fleetop.controller.services.memory.BackoffPolicy`, ``fleetop run --restart-backoff``). Each
  restart is one ``BackOff`` Warning event whose message is stable, so repeats add to its count;
- an instance is the pair main + sidekick, but each unit fails alone: a failed main unit is
  replaced with its sidekick; a failed sidekick next to a running main unit (it restarts itself, so
  failed means systemd's start limit) is destroyed and created again alone, never touching the main
  unit; a sidekick stuck unscheduled next to a scheduled main unit is destroyed and created again; a
  sidekick whose template is stale makes its instance an old one, replaced by the rollout with its
  main unit;
- a replacement is created on a later pass than the destroy of the unit it replaces, because the
  executor creates before it destroys and the name must be free first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from fleetop.controller.conditions import invalid_condition
from fleetop.controller.services import rollback as rollbacks
from fleetop.controller.services.instances import (
    UNSCHEDULED_GRACE,
    Desired,
    Instance,
    Ownership,
    Scene,
    read_instances,
    read_ownership,
)
from fleetop.controller.services.machineloss import observe_losses
from fleetop.controller.services.memory import (
    BackoffPolicy,
    Plan,
    PlanEvent,
    PlanMemory,
    Restart,
    RestartCause,
    Rollback,
)
from fleetop.controller.services.readiness import eligible_machines, free_machines
from fleetop.controller.services.report import Outcome, build_report
from fleetop.controller.services.restarts import (
    Book,
    clear,
    created,
    destroyed,
    observe,
    sidekick_clear,
    state_text,
)
from fleetop.controller.services.rollout import Decision, Limits, Member, decide
from fleetop.controller.services.unitrender import main_unit_name, sidekick_unit_name
from fleetop.controller.unitfile import DEFAULT_UNITS, UnitSettings
from fleetop.controller.world import LAUNCHED, Action, CreateUnit, DestroyUnit, FleetIndex, SetDesiredState
from fleetop.errors import RenderError
from fleetop.fleet.ownership import ROLE_DISCOVERY, ROLE_MAIN
from fleetop.models.parse import spec_hash
from fleetop.models.service import ServiceSpec
from fleetop.models.status import ServiceStatus

__all__ = ["UNSCHEDULED_GRACE", "plan"]

DEFAULT_BACKOFF = BackoffPolicy()


def plan(
    name: str,
    spec: ServiceSpec | None,
    generation: int,
    index: FleetIndex,
    registrations: Mapping[str, bool],
    now: float,
    memory: PlanMemory,
    *,
    settings: UnitSettings = DEFAULT_UNITS,
    backoff: BackoffPolicy = DEFAULT_BACKOFF,
    judged_hash: str | None = None,
) -> Plan:
    """Decide one reconcile pass for service ``name``. ``spec`` None means the service was deleted.
    ``settings`` are the installation's settings the units it writes carry (fleetop's path, key root).

    ``index`` is fleet as indexed once per poll (every unit, owned or not: names taken by others
    matter), ``registrations`` maps an instance ("8001") to whether it is registered. ``judged_hash``
    is ``spec``'s ``specHash`` when the caller keeps it (the reconciler computes it once per revision);
    without it, it is computed here.
    """
    ownership = read_ownership(name, index.owned_by(f"services/{name}"))
    world = Scene(name, index.units, index.states, registrations, index.machines, ownership, now)
    if spec is None:
        return Plan(_destroy_everything(ownership), None, PlanMemory(), None)
    try:
        desired = Desired.build(spec, name, settings)
    except RenderError as exc:
        return _invalid(world, generation, str(exc), memory)
    holding = rollbacks.holding(memory, spec, generation)
    if holding is not None:
        back = _rolled_back(spec, memory, name, settings)
        if back is not None:
            held = _plan_service(world, _Context(back, generation, memory, backoff, holding))
            return _judged(held, spec, judged_hash)
    first = _plan_service(world, _Context(desired, generation, memory, backoff))
    chosen = _roll_back_if_crash_looping(world, desired, generation, memory, backoff, first) or first
    return _judged(chosen, spec, judged_hash)


def _judged(result: Plan, spec: ServiceSpec, judged_hash: str | None) -> Plan:
    """``result`` with its status naming the spec judged valid (``specHash``: the written spec's, also
    while a rollback runs an older template)."""
    if result.status is None:
        return result
    digest = judged_hash if judged_hash is not None else spec_hash(spec)
    return replace(result, status=result.status.model_copy(update={"spec_hash": digest}))


def _rolled_back(spec: ServiceSpec, memory: PlanMemory, name: str, settings: UnitSettings) -> Desired | None:
    if memory.stable is None:
        return None
    back = rollbacks.rolled_back_spec(spec, memory.stable)
    if back is None:
        return None
    try:
        return Desired.build(back, name, settings)
    except RenderError:
        return None


def _roll_back_if_crash_looping(
    world: Scene, desired: Desired, generation: int, memory: PlanMemory, backoff: BackoffPolicy, first: Plan
) -> Plan | None:
    """With ``rollout.autoRollback``: a rollout past its deadline whose new units crash-loop goes back
    to the last template that was fully available, in this very pass."""
    spec = desired.spec
    progressing = first.status.condition("Progressing") if first.status is not None else None
    stable = memory.stable
    if not spec.rollout.auto_rollback or stable is None or stable.template == desired.main_template:
        return None
    if progressing is None or progressing.reason != "ProgressDeadlineExceeded":
        return None
    updated = (
        {
            int(u.instance)
            for u in first.status.units
            if u.role == ROLE_MAIN and u.template == desired.main_template and u.instance.isdigit()
        }
        if first.status
        else set()
    )
    updated |= {
        r.slot for r in first.memory.restarts.values() if r.role == ROLE_MAIN and r.phase == "destroyed"
    }
    if not rollbacks.crash_looping(dict(first.memory.restarts), updated):
        return None
    back = _rolled_back(spec, memory, world.service, desired.settings)
    if back is None:
        return None
    record = Rollback(desired.main_template, stable.template, generation, world.now)
    second = _plan_service(
        world, _Context(back, generation, replace(memory, rollback=record), backoff, record)
    )
    deadline = float(spec.rollout.progress_deadline_seconds)
    second.events.insert(0, PlanEvent("RolledBack", rollbacks.message(record, deadline)))
    return second


def _destroy_everything(ownership: Ownership) -> list[Action]:
    sidekicks = [DestroyUnit(u.name, "service deleted") for _, u in sorted(ownership.sidekicks.items())]
    mains = [DestroyUnit(u.name, "service deleted") for _, u in sorted(ownership.mains.items())]
    strays = [DestroyUnit(u.name, "service deleted") for u in ownership.strays]
    return [*sidekicks, *strays, *mains]


def _invalid(world: Scene, generation: int, message: str, memory: PlanMemory) -> Plan:
    condition, transition = invalid_condition(message, memory.transitions, world.now)
    status = ServiceStatus(observed_generation=generation, conditions=[condition], last_error=message)
    transitions = {**memory.transitions, "Invalid": transition}
    return Plan([], status, replace(memory, transitions=transitions), None)


def _replaceable(instances: list[Instance], desired: Desired, world: Scene, book: Book) -> set[int]:
    """Slots worth replacing now: failed ones whose back-off ran out, and stuck unscheduled ones
    while a machine is free."""
    if desired.global_:
        return set()
    chosen = {i.slot for i in instances if i.slot in book.due}
    stuck = sorted((i for i in instances if i.stuck and i.slot not in chosen), key=lambda i: i.slot)
    if stuck:
        eligible, _ = eligible_machines(desired.spec, world.machines, world.units)
        free = free_machines(desired.spec, world.service, eligible, world.units)
        chosen.update(i.slot for i in stuck[:free])
    return chosen


def _limits(desired: Desired) -> Limits:
    replicas = min(desired.spec.replicas, 1) if desired.global_ else desired.spec.replicas
    return Limits.from_spec(desired.spec, replicas=replicas, in_place_only=desired.global_)


@dataclass(frozen=True, slots=True)
class _Context:
    """What one pass plans from besides the world: the spec it renders and what it remembers."""

    desired: Desired
    generation: int
    memory: PlanMemory
    policy: BackoffPolicy
    rollback: Rollback | None = None


def _plan_service(world: Scene, context: _Context) -> Plan:
    desired, memory = context.desired, context.memory
    instances = read_instances(
        desired,
        world.ownership,
        world.states,
        world.registrations,
        memory.ready_since,
        memory.unscheduled_since,
        world.now,
    )
    book = observe(world, desired, instances, memory.restarts, memory.started, context.policy)
    replace = _replaceable(instances, desired, world, book)
    members = [
        Member(i.slot, i.updated, i.ready, i.health.unscheduled, i.failed, i.slot in replace)
        for i in instances
    ]
    members += [Member(slot, True, False, pending=True) for slot in sorted(book.reserved)]
    limits = _limits(desired)
    decision = decide(members, limits)
    step = _actions(world, desired, instances, decision, book)
    losses = observe_losses(world, instances, memory.placed, memory.lost)
    outcome = Outcome(instances, replace, step.records, losses, context.rollback)
    report = build_report(world, desired, limits, context.generation, memory, outcome, context.policy)
    events = [*step.events, *losses.events]
    return Plan(step.actions, report.status, report.memory, report.requeue_after, events)


def _free_slots(world: Scene, desired: Desired, count: int, reserved: set[int]) -> list[int]:
    """The lowest ``count`` slots whose names are unused, hold no same-hash leftover state and are
    not reserved for a unit to be created again."""
    found: list[int] = []
    for slot in desired.slots():
        if len(found) >= count:
            break
        if slot not in reserved and clear(world, desired, slot):
            found.append(slot)
    return found


def _slot_creates(world: Scene, desired: Desired, slot: int) -> list[Action]:
    creates: list[Action] = [CreateUnit(main_unit_name(world.service, slot), desired.main_options)]
    if desired.sidekick_template is not None:
        name = sidekick_unit_name(world.service, slot)
        creates.append(CreateUnit(name, desired.sidekick_options(slot)))
    return creates


@dataclass
class _Step:
    """The actions of one pass and the restart records and events they imply."""

    records: dict[str, Restart]
    actions: list[Action] = field(default_factory=list)
    events: list[PlanEvent] = field(default_factory=list)


_REASONS = {
    "failed": "failed: created again under the same name after its back-off",
    "unschedulable": "stuck unscheduled: created again under the same name",
}


def _recreate_reserved(world: Scene, desired: Desired, decision: Decision, step: _Step) -> list[Action]:
    """Create again the reserved slots whose back-off is over and whose names are clear, lowest first,
    as many as the ceiling leaves room for (``decision.recreate``); the others wait."""
    creates: list[Action] = []
    gone = dict(decision.destroy)
    room = decision.recreate
    for slot in decision.reserved:
        name = main_unit_name(world.service, slot)
        record = step.records.get(name)
        if slot in gone or record is None or world.now < record.next_try or not clear(world, desired, slot):
            continue
        if room == 0:
            break
        room -= 1
        creates.extend(_slot_creates(world, desired, slot))
        again = created(record)
        if again is None:
            step.records.pop(name, None)
        else:
            step.records[name] = again
        step.records.pop(sidekick_unit_name(world.service, slot), None)
    for slot, reason in gone.items():
        if reason == "scale down" and slot not in world.ownership.mains:
            step.records.pop(main_unit_name(world.service, slot), None)
    return creates


def _destroy_instance(world: Scene, instance: Instance, reason: str, step: _Step) -> DestroyUnit:
    """Destroy a main unit; a replacement keeps its slot (and its back-off), anything else forgets it."""
    side = sidekick_unit_name(world.service, instance.slot)
    step.records.pop(side, None)
    if reason not in _REASONS:
        step.records.pop(instance.name, None)
        return DestroyUnit(instance.name, reason)
    record = step.records.get(instance.name)
    if record is not None and record.phase == "failed":
        step.events.append(
            PlanEvent("BackOff", f"Back-off restarting failed {instance.name} ({record.state})")
        )
    state = "unscheduled" if reason == "unschedulable" else state_text(instance.health.state)
    cause: RestartCause = "unscheduled" if reason == "unschedulable" else "failed"
    step.records[instance.name] = destroyed(record, instance.slot, ROLE_MAIN, cause, world.now, state)
    return DestroyUnit(instance.name, _REASONS[reason])


def _restart_sidekick(instance: Instance, step: _Step) -> DestroyUnit:
    """Destroy a failed sidekick alone; its main unit keeps running."""
    assert instance.sidekick is not None
    name = instance.sidekick.name
    record = step.records.get(name)
    if record is not None and record.phase == "failed":
        message = f"Back-off restarting failed {name} ({record.state}); {instance.name} keeps running"
        step.events.append(PlanEvent("BackOff", message))
    step.records[name] = destroyed(record, instance.slot, ROLE_DISCOVERY, "failed", 0.0, "")
    return DestroyUnit(name, "failed: restarted alone after its back-off")


def _actions(
    world: Scene, desired: Desired, instances: list[Instance], decision: Decision, book: Book
) -> _Step:
    step = _Step(dict(book.records))
    creates: list[Action] = []
    repairs: list[Action] = []
    side_destroys: list[Action] = []
    main_destroys: list[Action] = []
    gone = dict(decision.destroy)
    reserved = set(decision.reserved) | set(book.reserved)
    for slot in _free_slots(world, desired, decision.create, reserved):
        creates.extend(_slot_creates(world, desired, slot))
    creates.extend(_recreate_reserved(world, desired, decision, step))
    restarted: set[int] = set()
    for instance in instances:
        if instance.slot in gone:
            main_destroys.append(_destroy_instance(world, instance, gone[instance.slot], step))
            continue
        if instance.unit.desired_state != LAUNCHED:
            repairs.append(SetDesiredState(instance.name, LAUNCHED))
        if instance.sidekick is not None and instance.sidekick_stuck:
            # next to a scheduled main unit nothing else holds it back: recreate it on a later pass
            side_destroys.append(DestroyUnit(instance.sidekick.name, "sidekick stuck unscheduled"))
            continue
        if instance.sidekick is not None and instance.slot in book.sidekicks_due:
            side_destroys.append(_restart_sidekick(instance, step))
            restarted.add(instance.slot)
            continue
        creates.extend(_sidekick_create(world, desired, instance, step))
    mains = world.ownership.mains
    stuck = {i.slot for i in instances if i.sidekick_stuck and i.slot not in gone}
    for slot, sidekick in sorted(world.ownership.sidekicks.items()):
        if slot in stuck or slot in restarted:
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
    step.actions = [*creates, *repairs, *side_destroys, *strays, *main_destroys]
    return step


def _sidekick_create(world: Scene, desired: Desired, instance: Instance, step: _Step) -> list[Action]:
    """A missing sidekick next to its main unit: created, after its back-off when it was restarted,
    and never while a state of its own file lingers under its name."""
    if desired.sidekick_template is None or instance.sidekick is not None:
        return []
    name = sidekick_unit_name(world.service, instance.slot)
    if name in world.units:
        return []  # taken by a unit that is not this service's: never overwrite it
    if not sidekick_clear(world, desired, instance.slot):
        return []
    record = step.records.get(name)
    if record is not None and record.phase == "destroyed":
        if world.now < record.next_try:
            return []
        again = created(record)
        if again is None:
            step.records.pop(name, None)
        else:
            step.records[name] = again
    return [CreateUnit(name, desired.sidekick_options(instance.slot))]
