"""How many instances to create and which to destroy: Kubernetes Deployment arithmetic over slots.

An instance is a main unit (with its sidekick) in a numbered slot. Each pass sees the instances as
they are and decides, from counts alone, what one step toward ``replicas`` ready instances of the
newest template is, with the Deployment guarantees:

- never more than ``replicas + maxSurge`` instances. The executor creates before it destroys, so
  the creations of a pass must fit next to every instance that exists when the pass starts, even
  those the same pass destroys; that holds for a pending slot created again too, which waits while
  the ceiling is full (after a scale-down that lowered it, say);
- never fewer than ``replicas - maxUnavailable`` ready instances because of a destroy the planner
  chose, except when the user asked for fewer replicas (a scale-down is not a rollout);
- an instance whose failure back-off has run out, or that is stuck unscheduled where a replacement
  could land, is destroyed (it is not ready, so this costs no availability) and its slot stays
  *pending*: it is created again under the same number on a later pass. A pending slot counts as a
  new, unready instance, so nothing else is created for it, and it is the first to go on a
  scale-down.

Surge and in-place replacement fall out of the same arithmetic (Kubernetes' ``reconcileNewReplicaSet``
and ``reconcileOldReplicaSets``): with room under ``replicas + maxSurge`` new instances are created in
free slots beyond the current ones; with ``maxUnavailable`` old ones are destroyed first and their
slots reused by later creations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetop.models.service import ServiceSpec, resolve_int_or_percent


@dataclass(frozen=True, slots=True)
class Member:
    """One existing instance as the arithmetic sees it."""

    slot: int
    updated: bool
    ready: bool
    unscheduled: bool = False
    failed: bool = False
    replace: bool = False
    pending: bool = False
    """No unit now: the slot waits to be created again under the same number."""


@dataclass(frozen=True, slots=True)
class Limits:
    replicas: int
    surge: int
    unavailable: int
    paused: bool = False

    @classmethod
    def from_spec(cls, spec: ServiceSpec, *, replicas: int, in_place_only: bool = False) -> Limits:
        """Resolve percentages against ``replicas`` (surge rounds up, unavailable down). If both come
        to 0 the rollout could never move, so unavailable becomes 1, as Kubernetes does.
        ``in_place_only`` (global services) forbids a second copy: surge 0, unavailable at least 1."""
        surge = resolve_int_or_percent(spec.rollout.max_surge, replicas, round_up=True)
        unavailable = resolve_int_or_percent(spec.rollout.max_unavailable, replicas, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        if in_place_only:
            surge, unavailable = 0, max(1, unavailable)
        return cls(replicas, surge, min(unavailable, replicas), spec.paused)

    @property
    def ceiling(self) -> int:
        return self.replicas + self.surge

    @property
    def min_ready(self) -> int:
        return max(0, self.replicas - self.unavailable)


@dataclass(frozen=True, slots=True)
class Decision:
    """Create ``create`` new instances (in free slots); destroy ``destroy`` = ((slot, reason), ...);
    ``reserved``: pending slots that stay, to be created again under their own number, at most
    ``recreate`` of them in this pass (what the ceiling leaves next to the instances that exist when
    the pass starts and the ``create`` new ones)."""

    create: int
    destroy: tuple[tuple[int, str], ...]
    reserved: tuple[int, ...] = ()
    recreate: int = 0


def removal_order(member: Member) -> tuple[int, bool, int]:
    """Who goes first: pending, unscheduled, failed, not ready, then old before new, then the highest
    slot."""
    if member.pending:
        rank = -1
    elif member.unscheduled:
        rank = 0
    elif member.failed:
        rank = 1
    elif not member.ready:
        rank = 2
    else:
        rank = 3
    return (rank, member.updated, -member.slot)


def decide(members: Sequence[Member], limits: Limits) -> Decision:
    """One step toward ``limits.replicas`` ready, updated instances. Pure arithmetic."""
    destroy: dict[int, str] = {}
    for member in members:
        if member.replace:
            destroy[member.slot] = "failed" if member.failed else "unschedulable"
    live = [Member(m.slot, True, False, pending=True) if m.replace else m for m in members]
    room = max(0, limits.ceiling - len(members))
    rolling = not limits.paused and limits.replicas > 0 and any(not m.updated for m in live)
    create = _roll(live, limits, room, destroy) if rolling else _scale(live, limits, room, destroy)
    reserved = tuple(sorted(m.slot for m in live if m.pending and destroy.get(m.slot) != "scale down"))
    existing = sum(1 for m in members if not m.pending)  # units now, even those destroyed below
    recreate = min(len(reserved), max(0, limits.ceiling - existing - create))
    return Decision(create, tuple(sorted(destroy.items())), reserved, recreate)


def _scale(live: list[Member], limits: Limits, room: int, destroy: dict[int, str]) -> int:
    """No rollout to make (or paused): reach ``replicas`` instances, whatever their template."""
    excess = len(live) - limits.replicas
    for member in sorted(live, key=removal_order)[: max(0, excess)]:
        destroy[member.slot] = "scale down"
    return min(room, max(0, -excess))


def _roll(live: list[Member], limits: Limits, room: int, destroy: dict[int, str]) -> int:
    """A rollout step: surge new instances into room, retire old ones as readiness allows."""
    excess = len(live) - limits.ceiling
    if excess > 0:
        victims = sorted(live, key=removal_order)[:excess]
        for member in victims:
            destroy[member.slot] = "scale down"
        live = [m for m in live if m not in victims]
    new = [m for m in live if m.updated]
    old = [m for m in live if not m.updated]
    create = max(0, min(room, limits.replicas - len(new)))
    new_unready = sum(1 for m in new if not m.ready) + create
    max_down = len(live) + create - limits.min_ready - new_unready
    old_unready = sorted((m for m in old if not m.ready), key=removal_order)
    for member in old_unready[: max(0, max_down)]:
        destroy[member.slot] = "rolling update"
        max_down -= 1
    ready_total = sum(1 for m in live if m.ready)
    can = min(max_down, ready_total - limits.min_ready)
    old_ready = sorted((m for m in old if m.ready), key=removal_order)
    for member in old_ready[: max(0, can)]:
        destroy[member.slot] = "rolling update"
    return create
