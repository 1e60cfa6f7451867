"""The unit supervisor of ``fleetop node``: runs units as real processes with systemd's semantics.

fleet only asks a machine to load, start, stop and unload units and then reports what systemd says, so
the states here are systemd's own (load, active, sub) triples. The same unit may be loaded on several
modelled machines, so everything is keyed by (unit, machine id).

``Supervisor`` is the face the engine talks to; the work is done next to it:
``fleetop.node.systemd_service`` runs one unit through systemd's state machine, ``fleetop.node.procgroups``
tracks its processes as process groups (and kills what a crashed node left behind), and
``fleetop.node.execenv`` says what those processes are given.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fleetop.errors import NotFound
from fleetop.fleet.units import UnitOption
from fleetop.node import procgroups
from fleetop.node.execenv import DEFAULT_PATH, MachineContext
from fleetop.node.systemd import SpecifierContext, load_service
from fleetop.node.systemd_service import RuntimeState, SystemdService

__all__ = ["DEFAULT_PATH", "MachineContext", "RuntimeState", "Supervisor"]

log = logging.getLogger(__name__)


SHUTDOWN_CONCURRENCY = 32
JOURNAL_CHECK_INTERVAL = 2.0  # how often journal sizes are checked (units write to them directly)


class Supervisor:
    """Every unit loaded on every modelled machine of this node, keyed by (unit, machine id).

    Requests never raise for a unit's own problems: a unit that cannot load is ``bad-setting``, one
    that cannot run is ``failed``, exactly as systemd would show them.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        on_change: Callable[[], None] | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.run_dir = self.state_dir / "run"
        self.journal_dir = self.state_dir / "journal"
        self.on_change = on_change
        if base_env is None:  # systemd's fixed PATH, not the node's own (see execenv)
            base_env = {k: os.environ[k] for k in ("LANG", "HOME") if k in os.environ}
            base_env["PATH"] = DEFAULT_PATH
        self.base_env: dict[str, str] = dict(base_env)
        self.base_env.setdefault("PATH", DEFAULT_PATH)
        self.sequence = itertools.count(1)
        self._units: dict[tuple[str, str], SystemdService] = {}
        self._journal_keeper: asyncio.Task[None] | None = None
        self._changes: set[tuple[str, str]] | None = None
        """(unit, machine) whose state changed since :meth:`take_changes`; None: possibly any."""

    # ---- the engine's interface --------------------------------------------------------------------------

    async def load(
        self, unit: str, options: Sequence[UnitOption], machine: MachineContext, unit_hash: str
    ) -> None:
        """fleet "loaded": known, not started (loaded/inactive/dead, or bad-setting/inactive/dead).
        Loading the same hash again does nothing; a new hash replaces the configuration."""
        key = (unit, machine.machine_id)
        current = self._units.get(key)
        if current is not None and current.hash == unit_hash:
            return
        loaded = load_service(unit, options, SpecifierContext(unit, machine.machine_id, machine.hostname))
        if current is None:
            current = self._units[key] = SystemdService(self, unit, machine)
            self._keep_journals_bounded()
        current.machine = machine
        current.apply(loaded, unit_hash)
        self.changed(key)

    async def start(
        self, unit: str, options: Sequence[UnitOption], machine: MachineContext, unit_hash: str
    ) -> None:
        """fleet "launched": load if needed, then start. Returns once the start is under way."""
        await self.load(unit, options, machine, unit_hash)
        self._units[(unit, machine.machine_id)].request_start()

    async def stop(self, unit: str, machine_id: str) -> None:
        """launched → loaded: stop and wait until it is inactive (or failed). Unknown units are ignored."""
        current = self._units.get((unit, machine_id))
        if current is not None:
            await current.stop()

    async def unload(self, unit: str, machine_id: str) -> None:
        """Stop if running, kill whatever is left of it, and forget it."""
        key = (unit, machine_id)
        current = self._units.get(key)
        if current is None:
            return
        await current.close()
        if self._units.get(key) is current:
            del self._units[key]
        self.changed(key)

    def states(self) -> list[RuntimeState]:
        return [self._units[key].state() for key in sorted(self._units)]

    def state(self, unit: str, machine_id: str) -> RuntimeState | None:
        current = self._units.get((unit, machine_id))
        return current.state() if current is not None else None

    async def stop_machine(self, machine_id: str) -> None:
        """The machine went away: stop and unload all of its units, concurrently."""
        names = [unit for unit, machine in self._units if machine == machine_id]
        await asyncio.gather(*(self.unload(unit, machine_id) for unit in names))

    async def shutdown(self, concurrency: int = SHUTDOWN_CONCURRENCY) -> None:
        """Stop and unload everything, most recently started first, leaving no process behind.

        Stops run ``concurrency`` at a time (started in that order): one at a time, a node with
        thousands of units would take longer to stop than anyone waits for it."""
        gate = asyncio.Semaphore(concurrency)

        async def unload(current: SystemdService) -> None:
            async with gate:
                await self.unload(current.unit, current.machine.machine_id)

        ordered = sorted(self._units.values(), key=lambda u: u.seq, reverse=True)
        await asyncio.gather(*(unload(current) for current in ordered))
        if self._journal_keeper is not None:
            self._journal_keeper.cancel()
            await asyncio.wait([self._journal_keeper])
            self._journal_keeper = None

    def journal_path(self, unit: str, machine_id: str | None = None) -> Path:
        """The journal file of ``unit`` on ``machine_id``; without a machine, of the machine it is
        loaded on (the first by id), else the most recently written one. NotFound if there is none."""
        if "/" in unit or unit.startswith("."):
            raise NotFound(f"no such unit: {unit!r}")
        if machine_id is None:
            loaded = sorted(machine for name, machine in self._units if name == unit)
            if loaded:
                machine_id = loaded[0]
            else:
                found = sorted(self.journal_dir.glob(f"*/{unit}.log"), key=lambda p: p.stat().st_mtime)
                if not found:
                    raise NotFound(f"no journal for unit {unit!r}")
                return found[-1]
        return self.journal_dir / machine_id / f"{unit}.log"

    def cleanup_orphans(self) -> int:
        """At start-up: SIGKILL every process group a previous (crashed) run recorded and that still
        exists, and return how many. A record whose PGID now belongs to another process is dropped."""
        tracked = {pgid for current in self._units.values() for pgid in current.groups}
        return procgroups.cleanup_orphans(self.run_dir, tracked)

    def _keep_journals_bounded(self) -> None:
        if self._journal_keeper is None or self._journal_keeper.done():
            self._journal_keeper = asyncio.create_task(self._bound_journals(), name="fleetop-node-journals")

    async def _bound_journals(self) -> None:
        """Units write their journals directly, so sizes are checked here, every few seconds."""
        while True:
            await asyncio.sleep(JOURNAL_CHECK_INTERVAL)
            for current in list(self._units.values()):
                current.journal.bound()

    # ---- for the units ---------------------------------------------------------------------------------

    def take_changes(self) -> set[tuple[str, str]] | None:
        """The (unit, machine) pairs whose state changed (loaded, unloaded, a new sub-state) since
        the last call; None if any may have (the first call)."""
        changes, self._changes = self._changes, set()
        return changes

    def changed(self, key: tuple[str, str] | None = None) -> None:
        """A unit's state changed (``key``: which; None: any may have)."""
        if key is None:
            self._changes = None
        elif self._changes is not None:
            self._changes.add(key)
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")

    def record_group(self, pgid: int, starttime: int, exact: bool, owner: SystemdService) -> None:
        procgroups.record_group(self.run_dir, pgid, starttime, exact, owner.machine.machine_id, owner.unit)

    def forget_group(self, pgid: int) -> None:
        procgroups.forget_group(self.run_dir, pgid)
