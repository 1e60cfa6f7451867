"""Instances whose machine left the cluster.

fleet says nothing when a machine goes: the machine drops out of ``/machines`` and its units are
rescheduled where they fit or become unscheduled (``fleet-observed.md`` §10, machine loss). Without
memory, a rescheduled instance looks like a fresh one and an unscheduled one like a placement
problem. So the planner remembers the machine each main unit was last seen on
(``PlanMemory.placed``, kept while the unit has none) and reads a remembered machine that fleet no
longer lists as a lost machine: one Warning event per machine, and ``Degraded=True, MachineLost``
while one of its instances is not ready again. A fleet that lists no machine at all is not read as
every machine lost (it is reported as unschedulable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleetop.controller.services.instances import Instance, Scene
from fleetop.controller.services.memory import PlanEvent


@dataclass(frozen=True, slots=True)
class Losses:
    placed: dict[str, str]
    reported: frozenset[str]
    troubles: list[str]
    events: list[PlanEvent]


def _where(instance: Instance, before: str) -> str:
    now_on = instance.unit.machine_id
    if now_on is None:
        return "unscheduled"
    if now_on == before:
        return "not rescheduled yet"
    return f"now on {now_on}, not ready yet"


def observe_losses(
    scene: Scene, instances: list[Instance], placed: Mapping[str, str], reported: frozenset[str]
) -> Losses:
    machines = {m.id for m in scene.machines}
    new_placed: dict[str, str] = {}
    lost: dict[str, list[str]] = {}
    troubles: list[str] = []
    for instance in instances:
        before = placed.get(instance.name)
        now_on = instance.unit.machine_id
        gone = bool(machines) and before is not None and before not in machines
        if gone and before is not None:
            lost.setdefault(before, []).append(instance.name)
            if not instance.ready_now:
                where = _where(instance, before)
                troubles.append(f"{instance.name} was on machine {before}, which left the cluster: {where}")
        if now_on is not None and now_on in machines and (instance.ready_now or not gone):
            new_placed[instance.name] = now_on
        elif before is not None:
            new_placed[instance.name] = before
        elif now_on is not None:
            new_placed[instance.name] = now_on
    events = [
        PlanEvent("MachineLost", f"machine {machine} left the cluster with {', '.join(sorted(units))}")
        for machine, units in sorted(lost.items())
        if machine not in reported
    ]
    still = frozenset(m for m in new_placed.values() if machines and m not in machines)
    return Losses(new_placed, frozenset(reported | lost.keys()) & still, troubles, events)
