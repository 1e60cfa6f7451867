"""What every kind's pass reads the same way: fleet's poll as the planners' input values, and the pace
of a pass that has to wait for the caches or for fleet.

The planners are pure and take the plain values of :mod:`fleetop.controller.world`, never fleet's
entities (:mod:`fleetop.fleet.model`); :func:`observe` converts one :class:`FleetSnapshot`. Both the
service and the proxy reconciler use it, so it lives below them both.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetop.controller.runtime.informers import FleetSnapshot
from fleetop.controller.world import ObservedMachine, ObservedState, ObservedUnit
from fleetop.fleet.model import Unit, UnitState

SYNC_WAIT = 0.25
"""Seconds to wait before trying again when a cache this key needs has not synced yet."""
CONVERGING_POLL = 30.0
"""Seconds of fast fleet polling asked for after a pass that has not converged."""


@dataclass(frozen=True)
class Observed:
    """One fleet poll as planner values: every unit, every unit state, every machine."""

    units: list[ObservedUnit]
    states: list[ObservedState]
    machines: list[ObservedMachine]


def observed_unit(u: Unit) -> ObservedUnit:
    return ObservedUnit(u.name, tuple(u.options), u.desired_state, u.current_state, u.machine_id)


def observed_state(s: UnitState) -> ObservedState:
    return ObservedState(s.name, s.hash, s.machine_id, s.load_state, s.active_state, s.sub_state)


def observed_machines(snapshot: FleetSnapshot) -> list[ObservedMachine]:
    return [ObservedMachine(m.id, m.primary_ip, dict(m.metadata)) for m in snapshot.machines.values()]


def observe(snapshot: FleetSnapshot) -> Observed:
    """fleet's entities as the planner's input values (all units: names taken by others matter)."""
    units = [observed_unit(u) for u in snapshot.units.values()]
    states = [observed_state(s) for found in snapshot.states.values() for s in found]
    return Observed(units, states, observed_machines(snapshot))
