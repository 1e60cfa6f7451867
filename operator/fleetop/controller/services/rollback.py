"""``rollout.autoRollback``: a new template that crash-loops until its progress deadline goes back to
the last template that was fully available.

Kubernetes stops at ``Progressing=False, ProgressDeadlineExceeded`` and leaves the rollback to
``kubectl rollout undo``; fleetop can go one step further because it remembers the last template
that was complete (every replica updated and ready: :class:`~fleetop.controller.services.memory.Stable`). When
the spec asks for it, a rollout whose deadline passes while its new units are failing (a restart
record with a failure in any phase) is rolled back: the planner renders the stable template's
unit, placement, discovery and ports with the written spec's replicas, rollout settings and
``paused``, exactly as ``rollout undo`` restores only the pod template. The spec in etcd stays as
written; the rollback holds until it is written again (a new ``generation``), and status says so:
``Progressing=False, RolledBack`` with both template hashes.
"""

from __future__ import annotations

from fleetop.controller.services.memory import PlanMemory, Restart, Rollback, Stable
from fleetop.models.service import ServiceSpec

_TEMPLATE_FIELDS = ("unit", "ports", "placement", "discovery")


def rolled_back_spec(written: ServiceSpec, stable: Stable) -> ServiceSpec | None:
    """The stable template's fields with the written spec's scale and rollout settings, or None
    when the two do not combine into a valid spec (then there is nothing safe to roll back to)."""
    document = written.model_dump(mode="json", by_alias=True, exclude_none=True)
    old = stable.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name in _TEMPLATE_FIELDS:
        document.pop(name, None)
        if name in old:
            document[name] = old[name]
    try:
        return ServiceSpec.model_validate(document)
    except ValueError:
        return None


def holding(memory: PlanMemory, written: ServiceSpec, generation: int) -> Rollback | None:
    """The rollback in force for this generation of the spec, if any."""
    rollback = memory.rollback
    stable = memory.stable
    if rollback is None or stable is None or not written.rollout.auto_rollback:
        return None
    if rollback.generation != generation or stable.template != rollback.to_template:
        return None
    return rollback


def crash_looping(records: dict[str, Restart], updated_slots: set[int]) -> bool:
    """Some unit of the new template has failed and is (or was) in back-off."""
    return any(r.cause == "failed" and r.slot in updated_slots for r in records.values())


def next_stable(memory: PlanMemory, template: str, spec: ServiceSpec, complete: bool) -> Stable | None:
    """Remember ``template`` once it is complete; keep the previous one otherwise."""
    if not complete:
        return memory.stable
    if memory.stable is not None and memory.stable.template == template and memory.stable.spec == spec:
        return memory.stable
    return Stable(template, spec)


def message(rollback: Rollback, deadline: float) -> str:
    return (
        f"template {rollback.from_template} crash-looped until the progress deadline ({deadline:g}s):"
        f" rolled back to template {rollback.to_template}, the last one fully available; the stored"
        " spec is unchanged, write it again to retry"
    )
