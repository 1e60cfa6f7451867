"""Crash-loop back-off: when a failed unit is replaced, and under which name.

Kubernetes' CrashLoopBackOff is the model. A unit that fails is not replaced at once: it is kept,
failed, for a delay (10 s, doubling with every restart of the same unit up to 5 min), so its state
and journal stay visible; then it is destroyed and created again **under the same name**, so the
instance keeps its number and its port. A unit ready for ten minutes starts again from the shortest
delay. Each unit has its own record (:class:`~fleetop.controller.services.memory.Restart`): a sidekick that
fails next to a running main unit is restarted alone, with its own back-off, and the main unit is
left alone.

Re-creating a name respects fleet's rule that a unit must not be created under a name whose old
state with the same file hash still lingers (``fleet-observed.md`` §13.11): after the destroy the
slot is *reserved* (a placeholder the rollout arithmetic counts, so nothing else is created for it)
and the unit is created again only once fleet shows no such state. The drain comes after the delay
(the failed unit is kept during the delay, as Kubernetes keeps a crashed container to show): on an
idle cluster it adds a second or two, under load (stale states linger for minutes) the slot waits
and status says so.

Pure: every function takes ``now`` and returns new records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from fleetop.controller.services.instances import Desired, Instance, Scene
from fleetop.controller.services.memory import BackoffPolicy, Restart, RestartCause, Seen
from fleetop.controller.services.readiness import Health, assess
from fleetop.controller.services.unitrender import main_unit_name, sidekick_unit_name
from fleetop.controller.world import ObservedState
from fleetop.fleet.ownership import ROLE_DISCOVERY, ROLE_MAIN
from fleetop.fleet.units import unit_hash


@dataclass(frozen=True, slots=True)
class Book:
    """The records after observing one pass, and what they ask for now."""

    records: dict[str, Restart]
    due: frozenset[int]
    """Slots whose failed main unit is to be destroyed now (it is re-created on a later pass)."""
    sidekicks_due: frozenset[int]
    """Slots whose failed sidekick alone is to be destroyed now."""
    reserved: frozenset[int]
    """Slots whose main unit the planner destroyed and is to create again under the same name."""


def state_text(state: ObservedState | None) -> str:
    """``loaded/failed/failed``: systemd's three states as fleet reports them."""
    if state is None:
        return "no state"
    return f"{state.load_state}/{state.active_state}/{state.sub_state}"


def _failure(
    previous: Restart | None,
    slot: int,
    role: str,
    health: Health,
    machine: str,
    ran: bool,
    now: float,
    policy: BackoffPolicy,
) -> Restart:
    """A failure seen now: kept until a delay that grows with the restarts before it."""
    if previous is not None and previous.phase == "failed" and previous.cause == "failed":
        return previous
    count = previous.count if previous is not None else 0
    state = state_text(health.state)
    return Restart(slot, role, "failed", count, now, now + policy.delay(count), state, machine, ran)


def _healthy(
    previous: Restart, ready_now: bool, ready_since: Seen | None, now: float, policy: BackoffPolicy
) -> Restart | None:
    """A unit of a record that is not failed (now): watched, or forgotten once ready long enough."""
    record = previous
    if record.phase == "failed":
        record = replace(record, phase="created")  # it recovered by itself (fleetctl, systemd)
    if ready_now and not record.ran:
        record = replace(record, ran=True)
    if record.phase == "created" and ready_since is not None and now - ready_since.since >= policy.reset:
        return None
    return record


def _main(
    previous: Restart | None, instance: Instance, started: bool, now: float, policy: BackoffPolicy
) -> Restart | None:
    if previous is not None and previous.phase == "destroyed":
        return previous  # our destroy has not shown yet (or failed): it is done again
    if instance.health.failed:
        machine = instance.unit.machine_id or (
            instance.health.state.machine_id if instance.health.state else ""
        )
        ran = started or (previous is not None and previous.ran)
        return _failure(previous, instance.slot, ROLE_MAIN, instance.health, machine, ran, now, policy)
    if previous is None:
        return None
    return _healthy(previous, instance.ready_now, instance.ready_since, now, policy)


def _sidekick(
    previous: Restart | None, instance: Instance, scene: Scene, now: float, policy: BackoffPolicy
) -> Restart | None:
    """A sidekick's record. Its failure counts only next to a running main unit: a sidekick stopped
    or failed because its main unit is down (``BindsTo=``) is not the sidekick's fault."""
    sidekick = instance.sidekick
    if sidekick is None:
        return previous if previous is not None and previous.phase == "destroyed" else None
    if previous is not None and previous.phase == "destroyed":
        return previous
    if instance.sidekick_failed and instance.health.running:
        health = assess(sidekick, unit_hash(sidekick.options), scene.states, False)
        machine = sidekick.machine_id or ""
        ran = previous is not None and previous.ran
        return _failure(previous, instance.slot, ROLE_DISCOVERY, health, machine, ran, now, policy)
    if previous is None:
        return None
    return _healthy(previous, instance.registered, instance.ready_since, now, policy)


def observe(
    scene: Scene,
    desired: Desired,
    instances: list[Instance],
    previous: Mapping[str, Restart],
    started: Mapping[str, str],
    policy: BackoffPolicy,
) -> Book:
    """Advance every record by what this pass observes. A global service has none: its one unit
    runs everywhere and is never destroyed because some machine reports it failed."""
    if desired.global_:
        return Book({}, frozenset(), frozenset(), frozenset())
    now = scene.now
    records: dict[str, Restart] = {}
    due: set[int] = set()
    sidekicks_due: set[int] = set()
    for instance in instances:
        started_here = started.get(instance.name) == instance.file_hash
        main = _main(previous.get(instance.name), instance, started_here, now, policy)
        if main is not None:
            records[instance.name] = main
            if main.phase == "destroyed" or (main.phase == "failed" and now >= main.next_try):
                due.add(instance.slot)
        side_name = sidekick_unit_name(scene.service, instance.slot)
        side = _sidekick(previous.get(side_name), instance, scene, now, policy)
        if side is not None and instance.slot not in due:
            records[side_name] = side
            if instance.sidekick is not None and (
                side.phase == "destroyed" or (side.phase == "failed" and now >= side.next_try)
            ):
                sidekicks_due.add(instance.slot)
    present = {i.slot for i in instances}
    reserved: set[int] = set()
    for name, record in previous.items():
        pending = record.role == ROLE_MAIN and record.phase == "destroyed" and record.slot not in present
        if pending and name == main_unit_name(scene.service, record.slot):
            records[name] = record
            reserved.add(record.slot)
    return Book(records, frozenset(due), frozenset(sidekicks_due), frozenset(reserved))


def clear(scene: Scene, desired: Desired, slot: int) -> bool:
    """May this slot's units be created now? Their names must be free in fleet and no state of the
    same file may linger under them (fleet could not tell the old unit from the new one)."""
    main, side = main_unit_name(scene.service, slot), sidekick_unit_name(scene.service, slot)
    if main in scene.units or side in scene.units:
        return False
    if any(s.hash == desired.main_hash for s in scene.states.get(main, ())):
        return False
    return desired.sidekick_template is None or sidekick_clear(scene, desired, slot)


def sidekick_clear(scene: Scene, desired: Desired, slot: int) -> bool:
    """No state of the sidekick's own file lingers under its name."""
    name = sidekick_unit_name(scene.service, slot)
    states = scene.states.get(name, ())
    if not states:
        return True
    side_hash = unit_hash(desired.sidekick_options(slot))
    return not any(s.hash == side_hash for s in states)


def destroyed(
    record: Restart | None, slot: int, role: str, cause: RestartCause, now: float, state: str
) -> Restart:
    """The record of a unit the planner destroys now to create it again under the same name."""
    if record is not None:
        return replace(record, phase="destroyed")
    # a unit replaced because it was stuck unscheduled: no back-off, only the name is kept
    return Restart(slot, role, "destroyed", 0, now, now, state, "", False, cause)


def created(record: Restart) -> Restart | None:
    """The record of a unit created again now; a slot that was only unscheduled keeps none."""
    if record.cause == "unscheduled":
        return None
    return replace(record, phase="created", count=record.count + 1)
