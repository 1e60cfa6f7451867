"""The node's engine and agents in one reconcile loop: schedule, then drive the Supervisor per machine.

fleet splits this between an engine (placement) and one agent per machine (load, start, stop, unload
and reporting). Here both run in one asyncio task, level-triggered like fleet's own reconcilers: every
pass re-reads the registry, re-runs the pure scheduler, and compares what each machine should run with
what the engine has told the Supervisor, then moves each unit one legal step at a time:
inactive → loaded → launched, launched → loaded (stop), → inactive (stop and unload). Content replaced
under a loaded unit is unloaded and loaded again with the new hash, on the same machine.

``current_state`` is fleet's view (what the agent did), not systemd's: a unit that exits or fails stays
``launched``; failure shows only in the systemd states that ``/state`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetop.fleet.model import Machine, UnitState
from fleetop.fleet.units import UnitOption
from fleetop.node.registry import Registry, StoredUnit
from fleetop.node.scheduler import SchedMachine, SchedUnit, requirements, schedule
from fleetop.node.supervisor import MachineContext, RuntimeState

log = logging.getLogger(__name__)
RESYNC_INTERVAL = 5.0
RETRY_DELAY = 1.0
MAX_PASS_GAP = 0.5
"""The longest pause after a pass before the next (a pass that took longer is paused for this)."""


class SupervisorLike(Protocol):
    """The part of ``fleetop.node.supervisor.Supervisor`` the engine drives."""

    async def load(
        self, unit: str, options: Sequence[UnitOption], machine: MachineContext, unit_hash: str
    ) -> None: ...
    async def start(
        self, unit: str, options: Sequence[UnitOption], machine: MachineContext, unit_hash: str
    ) -> None: ...
    async def stop(self, unit: str, machine_id: str) -> None: ...
    async def unload(self, unit: str, machine_id: str) -> None: ...
    def states(self) -> list[RuntimeState]: ...
    async def stop_machine(self, machine_id: str) -> None: ...
    async def shutdown(self) -> None: ...
    def journal_path(self, unit: str, machine_id: str | None = None) -> Path: ...


@dataclass(frozen=True, slots=True)
class NodeMachine:
    """One modelled machine: stable id, loopback address, root with its ``/etc`` files, metadata."""

    index: int
    id: str
    ip: str
    hostname: str
    root: Path
    metadata: Mapping[str, str] = field(default_factory=dict)

    def context(self) -> MachineContext:
        etc = self.root / "etc"
        return MachineContext(
            machine_id=self.id,
            hostname=self.hostname,
            ip=self.ip,
            root=self.root,
            path_map={
                "/etc/environment": etc / "environment",
                "/etc/etcd.environment": etc / "etcd.environment",
            },
        )


@dataclass(slots=True)
class _Agent:
    """What the engine has told the Supervisor about one unit on one machine."""

    hash: str
    state: str  # "loaded" or "launched"


class Engine:
    """Owns the reconcile task. API handlers mutate the registry, then call ``notify()``."""

    def __init__(
        self,
        registry: Registry,
        supervisor: SupervisorLike,
        machines: Sequence[NodeMachine],
        *,
        resync_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.machines = {m.id: m for m in sorted(machines, key=lambda m: m.id)}
        self.resync_interval = resync_interval
        self._agents: dict[tuple[str, str], _Agent] = {}
        self._globals: dict[str, tuple[str, ...]] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failed = False
        self.passes = 0

    # -- views for the API -------------------------------------------------------------------------

    def live_machine_ids(self) -> list[str]:
        return [m for m in self.machines if m not in self.registry.stopped_machines]

    def machine_view(self, machine_id: str) -> Machine:
        machine = self.machines[machine_id]
        metadata = self.registry.effective_metadata(machine_id, machine.metadata)
        return Machine(machine.id, machine.ip, metadata)

    def live_machines(self) -> list[Machine]:
        """fleet's ``/machines``: live machines only, sorted by id."""
        return [self.machine_view(m) for m in self.live_machine_ids()]

    def is_global(self, unit: StoredUnit) -> bool:
        return requirements(unit.name, unit.options).is_global

    def placement(self, name: str) -> str | None:
        """The machine a non-global unit is scheduled to, if any. Like fleet, a unit set to inactive
        keeps its machine until the next pass unschedules it."""
        if self.registry.get(name) is None:
            return None
        return self.registry.placements.get(name)

    def current_state(self, name: str) -> str:
        """fleet's currentState of a non-global unit: what its agent has done with it."""
        machine = self.placement(name)
        agent = self._agents.get((name, machine)) if machine else None
        return agent.state if agent else "inactive"

    def states(self) -> list[UnitState]:
        """UnitStates of units loaded on live machines, sorted by unit then machine."""
        live = set(self.live_machine_ids())
        out = []
        for rs in self.supervisor.states():
            if rs.machine_id in live and (rs.unit, rs.machine_id) in self._agents:
                out.append(
                    UnitState(rs.unit, rs.hash, rs.machine_id, rs.load_state, rs.active_state, rs.sub_state)
                )
        return sorted(out, key=lambda s: (s.name, s.machine_id))

    def resolve_machine(self, ident: str) -> str | None:
        """A machine id from its full id, a unique id prefix, or its 1-based index."""
        if ident in self.machines:
            return ident
        if ident.isdigit():
            for machine in self.machines.values():
                if machine.index == int(ident):
                    return machine.id
        matches = [m for m in self.machines if m.startswith(ident)] if ident else []
        return matches[0] if len(matches) == 1 else None

    def journal_path(self, unit: str, machine_id: str | None = None) -> Path:
        return self.supervisor.journal_path(unit, machine_id)

    # -- the loop ----------------------------------------------------------------------------------

    def notify(self) -> None:
        """Ask for a reconcile pass soon. Safe to call from any code running in the loop."""
        self._wake.set()

    async def run(self) -> None:
        """Reconcile on every notification and every ``resync_interval`` seconds, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.resync_interval)
            self._wake.clear()
            began = time.thread_time()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("node: reconcile pass failed; will retry")
                self._failed = True
            if self._failed:
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()
            # A pass reads every unit. Under a stream of API writes, leave the API at least as much
            # time as the pass computed (CPU time: waiting for a unit to stop costs nothing here);
            # the changes meanwhile are picked up together by the next pass.
            await asyncio.sleep(min(time.thread_time() - began, MAX_PASS_GAP))

    async def reconcile_once(self) -> None:
        async with self._lock:
            self._failed = False
            self.passes += 1
            targets = self._schedule()
            for key in sorted(self._agents):
                unit = targets.get(key)
                if unit is None or unit.hash != self._agents[key].hash:
                    await self._teardown(*key)
            for key, unit in sorted(targets.items()):
                await self._bring_up(unit, key[1])

    def _schedule(self) -> dict[tuple[str, str], StoredUnit]:
        units = self.registry.sorted_units()
        machines = [SchedMachine(m.id, m.metadata) for m in self.live_machines()]
        decision = schedule(
            [SchedUnit(u.name, u.options, u.desired_state) for u in units],
            machines,
            self.registry.placements,
        )
        self.registry.set_placements(decision.placements)
        self._globals = dict(decision.global_placements)
        by_name = {u.name: u for u in units}
        targets = {(name, machine): by_name[name] for name, machine in decision.placements.items()}
        for name, machine_ids in decision.global_placements.items():
            targets.update({(name, machine): by_name[name] for machine in machine_ids})
        return targets

    async def _call(self, what: str, coro: Awaitable[None]) -> bool:
        try:
            await coro
        except Exception:
            log.exception("node: %s failed; will retry", what)
            self._failed = True
            return False
        return True

    async def _teardown(self, unit: str, machine_id: str) -> None:
        """Stop (if launched) and unload; the unit's state disappears from that machine."""
        agent = self._agents.get((unit, machine_id))
        if agent is None:
            return
        if agent.state == "launched":
            if not await self._call(f"stop {unit} on {machine_id}", self.supervisor.stop(unit, machine_id)):
                return
            agent.state = "loaded"
        if await self._call(f"unload {unit} on {machine_id}", self.supervisor.unload(unit, machine_id)):
            del self._agents[(unit, machine_id)]

    async def _bring_up(self, unit: StoredUnit, machine_id: str) -> None:
        """One machine's part of a unit towards its desired state (loaded or launched)."""
        key = (unit.name, machine_id)
        agent = self._agents.get(key)
        if agent is not None and (agent.state == "launched") == (unit.desired_state == "launched"):
            return  # already where it should be: the usual case, on every pass, for every unit
        ctx = self.machines[machine_id].context()
        if agent is None:
            load = self.supervisor.load(unit.name, unit.options, ctx, unit.hash)
            if not await self._call(f"load {unit.name} on {machine_id}", load):
                return
            agent = self._agents[key] = _Agent(unit.hash, "loaded")
        if unit.desired_state == "launched" and agent.state != "launched":
            start = self.supervisor.start(unit.name, unit.options, ctx, unit.hash)
            if await self._call(f"start {unit.name} on {machine_id}", start):
                agent.state = "launched"
        elif unit.desired_state == "loaded" and agent.state == "launched":
            stop = self.supervisor.stop(unit.name, machine_id)
            if await self._call(f"stop {unit.name} on {machine_id}", stop):
                agent.state = "loaded"

    # -- machines and shutdown ---------------------------------------------------------------------

    async def stop_machine(self, machine_id: str) -> None:
        """Take a machine out: its units are stopped and unloaded, then rescheduled elsewhere."""
        if machine_id not in self.machines:
            raise KeyError(machine_id)
        self.registry.set_machine_stopped(machine_id, True)
        async with self._lock:
            for unit, mid in sorted(self._agents):
                if mid == machine_id:
                    await self._teardown(unit, mid)
            await self._call(f"stop machine {machine_id}", self.supervisor.stop_machine(machine_id))
        self.notify()

    async def start_machine(self, machine_id: str) -> None:
        """Bring a stopped machine back; the scheduler may place units on it again."""
        if machine_id not in self.machines:
            raise KeyError(machine_id)
        self.registry.set_machine_stopped(machine_id, False)
        self.notify()

    async def shutdown(self) -> None:
        """Stop every unit the Supervisor runs (desired states stay as they are, for the next start)."""
        async with self._lock:
            await self.supervisor.shutdown()
            self._agents.clear()
