"""The proxy units' planner: (desired units, fleet's units and states) → actions and unit status. Pure.

Proxies need none of a service's rollout arithmetic: an instance is a proxy unit and its agent, the
listen address is shared so two instances can never overlap on one machine, and readiness is what
the agents report about configs, not fleet. So the rules are the few a Deployment would keep:

- ownership by the ``[X-Fleetop]`` section only (``Service=<proxy>``, ``Role=proxy|agent``); a unit
  without it is never changed, destroyed, or replaced, and its name is never taken over;
- create every desired unit that is missing, unless fleet still holds a state for that name with the
  same file hash (fleet could not tell the old unit from the new one; a later pass creates it);
- destroy an owned unit whose content is not the desired one (changed spec: fleet units are
  immutable, so a new unit replaces it on a later pass) or that failed (systemd gave up on it);
  destroying a proxy unit takes its agent with it (bound to it, scheduled next to it);
- destroy owned units nobody wants (fewer replicas, ``managed: false``, proxy deleted), agents first;
- put back ``launched`` on owned units whose desired state drifted (``fleetctl stop``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fleetop.controller.conditions import unit_status
from fleetop.controller.proxies.units import DesiredUnit
from fleetop.controller.world import (
    LAUNCHED,
    Action,
    CreateUnit,
    DestroyUnit,
    FleetIndex,
    ObservedState,
    ObservedUnit,
    SetDesiredState,
)
from fleetop.fleet.ownership import PROXY_ROLES, ROLE_AGENT, ROLE_PROXY, owned_by
from fleetop.fleet.units import unit_hash
from fleetop.models.status import UnitStatus


@dataclass(frozen=True)
class UnitPlan:
    """Actions in the executor's order (creates, repairs, destroys), the owned units' status, and
    the desired names held by units fleetop does not own (reported, never touched)."""

    actions: list[Action]
    units: list[UnitStatus]
    blocked: list[str] = field(default_factory=list)


def _owned(proxy: str, units: Sequence[ObservedUnit]) -> dict[str, ObservedUnit]:
    found: dict[str, ObservedUnit] = {}
    for unit in units:
        owner = owned_by(unit.options)
        if owner is not None and owner.service == proxy and owner.role in PROXY_ROLES:
            found[unit.name] = unit
    return found


def _current_state(unit: ObservedUnit, states: Mapping[str, Sequence[ObservedState]]) -> ObservedState | None:
    """The state of the unit's own file on the unit's machine, if fleet reports one."""
    digest = unit_hash(unit.options)
    for state in states.get(unit.name, []):
        if state.hash == digest and (unit.machine_id is None or state.machine_id == unit.machine_id):
            return state
    return None


def _failed(unit: ObservedUnit, states: Mapping[str, Sequence[ObservedState]]) -> bool:
    state = _current_state(unit, states)
    return state is not None and state.active_state == "failed"


def _doomed(
    desired: Mapping[str, DesiredUnit],
    owned: Mapping[str, ObservedUnit],
    states: Mapping[str, Sequence[ObservedState]],
) -> dict[str, str]:
    """Owned units to destroy this pass, with the reason."""
    doomed: dict[str, str] = {}
    for name, unit in sorted(owned.items()):
        want = desired.get(name)
        if want is None:
            doomed[name] = "not wanted any more"
        elif unit_hash(unit.options) != unit_hash(want.options):
            doomed[name] = "spec changed"
        elif _failed(unit, states):
            doomed[name] = "failed"
    proxies = {w.instance: w.name for w in desired.values() if w.role == ROLE_PROXY}
    for want in desired.values():
        main = proxies.get(want.instance)
        if want.role != ROLE_AGENT or want.name not in owned or main is None:
            continue
        if main in doomed:
            doomed.setdefault(want.name, f"with its proxy unit ({doomed[main]})")
        elif main not in owned:
            # its proxy unit is gone: a new one may land elsewhere, and MachineOf must follow it
            doomed.setdefault(want.name, "its proxy unit is gone")
    return doomed


def _unit_status(unit: ObservedUnit, states: Mapping[str, Sequence[ObservedState]]) -> UnitStatus:
    owner = owned_by(unit.options)
    state = _current_state(unit, states)
    instance = unit.name.rpartition("@")[2].removesuffix(".service")
    running = state is not None and state.active_state == "active" and state.sub_state == "running"
    role, template = (owner.role, owner.template) if owner is not None else ("", "")
    return unit_status(
        unit, state, role, instance, template, ready=running and unit.desired_state == LAUNCHED
    )


def plan_units(
    proxy: str,
    desired: Sequence[DesiredUnit],
    index: FleetIndex,
) -> UnitPlan:
    """Decide one pass for the units of ``proxy``. ``desired`` empty: it should have none.

    ``index`` is fleet as indexed once per poll: the proxy's own units, and every name (names taken by
    others matter).
    """
    by_state = index.states
    wanted = {d.name: d for d in desired}
    existing = index.units
    owned = _owned(proxy, index.owned_by(f"proxies/{proxy}"))
    doomed = _doomed(wanted, owned, by_state)
    creates: list[Action] = []
    repairs: list[Action] = []
    blocked: list[str] = []
    held = {
        w.instance for w in desired if w.role == ROLE_PROXY and w.name in existing and w.name not in owned
    }
    for want in desired:
        unit = existing.get(want.name)
        if unit is None and want.role == ROLE_AGENT and want.instance in held:
            continue  # never schedule an agent next to a proxy unit that is not ours
        if unit is None:
            digest = unit_hash(want.options)
            if not any(s.hash == digest for s in by_state.get(want.name, ())):
                creates.append(CreateUnit(want.name, want.options))
        elif want.name not in owned:
            blocked.append(want.name)
        elif want.name not in doomed and unit.desired_state != LAUNCHED:
            repairs.append(SetDesiredState(want.name, LAUNCHED))
    roles = {name: owned_by(owned[name].options) for name in doomed}
    order = sorted(doomed, key=lambda n: (0 if (r := roles[n]) and r.role == ROLE_AGENT else 1, n))
    destroys: list[Action] = [DestroyUnit(name, doomed[name]) for name in order]
    statuses = [_unit_status(unit, by_state) for _, unit in sorted(owned.items())]
    return UnitPlan([*creates, *repairs, *destroys], statuses, blocked)
