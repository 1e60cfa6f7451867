"""One unit on one modelled machine, driven through systemd's service state machine.

fleet reports what systemd says, so the states here are systemd's own (load, active, sub) triples,
reached by systemd's state machine: start-pre → start → start-post → running/exited → stop (ExecStop,
with ``$MAINPID``) → stop-sigterm → stop-sigkill → stop-post → final-sigterm → final-sigkill →
dead/failed, with ``Restart=`` through auto-restart and the start rate limit. The commands of one
state share one timeout (TimeoutStartSec for the start states, TimeoutStopSec for the stop and kill
states), as in systemd.

A unit's processes are process groups (``fleetop.node.procgroups``); what they are given (user,
environment, working directory) comes from ``fleetop.node.execenv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetop.node import journal
from fleetop.node.execenv import (
    MachineContext,
    RunUser,
    exec_environment,
    find_executable,
    resolve_user,
    working_directory,
)
from fleetop.node.procgroups import (
    Exit,
    Proc,
    SpawnFailed,
    deadline_after,
    has_members,
    remaining,
    signal_group,
    start_group,
    wait_until,
)
from fleetop.node.systemd import ExecCommand, KillMode, LoadResult, RestartPolicy, ServiceConfig, ServiceType

# Logged under the supervisor's name: in the node's log, a unit's failures are the supervisor's.
log = logging.getLogger("fleetop.node.supervisor")
_IDENT = "fleetop-node"
_ACTIVE = {
    "dead": "inactive", "failed": "failed", "start-pre": "activating", "start": "activating",
    "start-post": "activating", "auto-restart": "activating", "running": "active", "exited": "active",
    "stop": "deactivating", "stop-sigterm": "deactivating", "stop-sigkill": "deactivating",
    "stop-post": "deactivating", "final-sigterm": "deactivating", "final-sigkill": "deactivating",
}  # fmt: skip
_CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
_FAILURES = frozenset({"exit-code", "signal", "core-dump", "timeout", "watchdog", "resources"})
_RESTART_ON: dict[RestartPolicy, frozenset[str]] = {
    RestartPolicy.NO: frozenset(),
    RestartPolicy.ALWAYS: _FAILURES | {"success"},
    RestartPolicy.ON_SUCCESS: frozenset({"success"}),
    RestartPolicy.ON_FAILURE: _FAILURES,
    RestartPolicy.ON_ABNORMAL: frozenset({"signal", "core-dump", "timeout", "watchdog"}),
    RestartPolicy.ON_ABORT: frozenset({"signal", "core-dump"}),
    RestartPolicy.ON_WATCHDOG: frozenset({"watchdog"}),
}


@dataclass(frozen=True)
class RuntimeState:
    unit: str
    machine_id: str
    hash: str
    load_state: str
    active_state: str
    sub_state: str


class Host(Protocol):
    """What a unit needs from the supervisor that holds it (``fleetop.node.supervisor.Supervisor``)."""

    @property
    def base_env(self) -> Mapping[str, str]: ...

    @property
    def sequence(self) -> Iterator[int]: ...

    def journal_path(self, unit: str, machine_id: str | None = None) -> Path: ...

    def changed(self, key: tuple[str, str] | None = None) -> None: ...

    def record_group(self, pgid: int, starttime: int, exact: bool, owner: SystemdService) -> None: ...

    def forget_group(self, pgid: int) -> None: ...


class _RateLimit:
    """systemd's start limit: at most ``burst`` starts in a window of ``interval`` seconds."""

    def __init__(self) -> None:
        self.begin: float | None = None
        self.count = 0

    def allow(self, now: float, interval: float, burst: int) -> bool:
        if interval <= 0 or burst <= 0:
            return True
        if self.begin is None or now - self.begin > interval:
            self.begin, self.count = now, 0
        self.count += 1
        return self.count <= burst


class SystemdService:
    """One systemd service on one modelled machine (not a ServiceSpec): its loaded unit configuration
    and systemd's state machine for it."""

    def __init__(self, sup: Host, unit: str, machine: MachineContext) -> None:
        self.sup, self.unit, self.machine = sup, unit, machine
        self.hash, self.load_state, self.load_error = "", "loaded", ""
        self.config: ServiceConfig | None = None
        self.user: RunUser | None = None
        self.sub, self.result = "dead", "success"
        self.journal = journal.JournalFile(sup.journal_path(unit, machine.machine_id), host=machine.hostname)
        self.task: asyncio.Task[None] | None = None
        self.stop_event, self.idle = asyncio.Event(), asyncio.Event()
        self.idle.set()
        self.queued_start = False
        self.main: Proc | None = None
        self.main_cmd: ExecCommand | None = None
        self.main_exit: Exit | None = None
        self.main_noted = True
        self.groups: dict[int, Proc] = {}
        self.limit = _RateLimit()
        self.restarts, self.seq, self.invocation = 0, 0, ""

    @property
    def cfg(self) -> ServiceConfig:
        if self.config is None:
            raise RuntimeError(f"{self.unit} has no loaded configuration")
        return self.config

    @property
    def desc(self) -> str:
        return self.cfg.description or self.unit

    def note(self, message: str) -> None:
        self.journal.write(_IDENT, os.getpid(), message)

    def state(self) -> RuntimeState:
        return RuntimeState(
            self.unit, self.machine.machine_id, self.hash, self.load_state, _ACTIVE[self.sub], self.sub
        )

    def set_sub(self, sub: str) -> None:
        if sub != self.sub:
            self.sub = sub
            if sub in ("dead", "failed"):
                self.idle.set()
            else:
                self.idle.clear()
            self.sup.changed((self.unit, self.machine.machine_id))

    def apply(self, loaded: LoadResult, unit_hash: str) -> None:
        """A (re)load. A running instance keeps running; the new settings apply from its next phase."""
        self.hash = unit_hash
        for warning in loaded.warnings:
            self.note(f"{self.unit}: {warning}")
        config, error, user = loaded.config, loaded.error, None
        if config is not None and config.user:
            resolved = resolve_user(config.user)
            if isinstance(resolved, str):
                config, error = None, f"{self.unit}: {resolved}"
            else:
                user = resolved
        if config is None:
            self.load_state, self.load_error = "bad-setting", error
            self.note(error)
            return
        self.load_state, self.load_error, self.config, self.user = "loaded", "", config, user

    # ---- requests ----------------------------------------------------------------------------------

    def request_start(self) -> None:
        if self.load_state != "loaded" or self.config is None:
            self.note(f"{self.unit}: Unit configuration has fatal error, unit will not be started.")
            return
        self.seq = next(self.sup.sequence)
        self.restarts = 0  # an explicit start flushes the restart counter, as in systemd
        if self.task is not None and not self.task.done():
            if self.stop_event.is_set():
                self.queued_start = True  # start again once the stop in progress has finished
            return
        self.stop_event = asyncio.Event()
        self.set_sub("start-pre" if self.cfg.exec_start_pre else "start")
        self.task = asyncio.create_task(self._lifecycle(), name=f"{self.unit}@{self.machine.hostname}")

    async def stop(self) -> None:
        """Stop and wait until the unit is inactive or failed (a failed unit stays failed)."""
        self.queued_start = False
        if self.task is None or self.task.done():
            return
        if not self.stop_event.is_set():
            if self.sub not in ("dead", "failed", "auto-restart"):
                self.note(f"Stopping {self.desc}...")
            self.stop_event.set()
        await self.idle.wait()

    async def close(self) -> None:
        """Stop, then make sure nothing of the unit is left: leftover groups, the journal's descriptor."""
        await self.stop()
        if self.task is not None:
            await asyncio.wait([self.task])
        self._sweep()
        if self.groups:
            timeout = self.config.timeout_stop if self.config else None
            sig = self.config.kill_signal if self.config else signal.SIGTERM
            for pgid in list(self.groups):
                signal_group(pgid, sig)
            if not await wait_until(self._groups_gone, deadline_after(timeout or 10.0)):
                for pgid in list(self.groups):
                    signal_group(pgid, signal.SIGKILL)
                await wait_until(self._groups_gone, deadline_after(5.0))
        leftovers = [p.waiter for p in self.groups.values() if p.alive]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers)
        self.journal.close()

    # ---- the state machine -----------------------------------------------------------------------------

    async def _lifecycle(self) -> None:
        try:
            while await self._activation():
                self.queued_start = False
                self.stop_event = asyncio.Event()
        except Exception:
            log.exception("supervising %s on %s failed", self.unit, self.machine.hostname)
            self.result = "resources"
            self.set_sub("failed")

    async def _activation(self) -> bool:
        """Start (and restart, per Restart=) until the unit rests; True when a start is queued."""
        cfg = self.cfg
        while not self.stop_event.is_set():
            if not self.limit.allow(time.monotonic(), cfg.start_limit_interval, cfg.start_limit_burst):
                self.note(f"{self.unit}: Start request repeated too quickly.")
                self.result = "start-limit-hit"
                self._rest()
                self.note(f"Failed to start {self.desc}.")
                return False
            self._sweep()
            self.result, self.invocation = "success", secrets.token_hex(16)
            self.note(f"Starting {self.desc}...")
            phase: str | None = "start-pre"
            while phase is not None:
                phase = await self._phase(phase)
            if self.stop_event.is_set() or self.result not in _RESTART_ON[cfg.restart]:
                self._rest()
                return self.queued_start
            if self.result != "success":
                self.note(f"{self.unit}: Failed with result '{self.result}'.")
            self.restarts += 1
            self.set_sub("auto-restart")
            self.note(f"{self.unit}: Scheduled restart job, restart counter is at {self.restarts}.")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), cfg.restart_sec)
        self.set_sub("dead")
        return self.queued_start

    def _rest(self) -> None:
        if self.result == "success":
            self.note(f"{self.unit}: Deactivated successfully.")
        else:
            self.note(f"{self.unit}: Failed with result '{self.result}'.")
        self.set_sub("dead" if self.result == "success" else "failed")
        if self.stop_event.is_set():
            self.note(f"Stopped {self.desc}.")

    async def _phase(self, phase: str) -> str | None:
        """Run one state of systemd's service state machine; return the next one (None: done)."""
        cfg = self.cfg
        if phase == "start-pre":
            self.main, self.main_cmd, self.main_exit, self.main_noted = None, None, None, True
            return await self._commands("start-pre", cfg.exec_start_pre, "start", "stop-sigterm")
        if phase == "start":
            self.set_sub("start")
            if cfg.type == ServiceType.ONESHOT:
                return await self._commands("start", cfg.exec_start, "start-post", "stop-sigterm", main=True)
            self.main_cmd = cfg.exec_start[0]
            self.main, self.main_exit = await self._spawn(self.main_cmd, {})
            self.main_noted = False
            return "start-post"
        if phase == "start-post":
            return await self._commands("start-post", cfg.exec_start_post, "running", "stop")
        if phase == "running":
            return await self._running()
        if phase in ("stop", "stop-post"):
            self._note_main_exit()
            commands = cfg.exec_stop if phase == "stop" else cfg.exec_stop_post
            after = "stop-sigterm" if phase == "stop" else "final-sigterm"
            return await self._commands(phase, commands, after, after, stoppable=False)
        final = phase.startswith("final")
        if phase.endswith("sigterm"):
            return await self._kill_stage(phase, "final-sigkill" if final else "stop-sigkill")
        return await self._kill_stage(phase, None)

    async def _running(self) -> str:
        cfg = self.cfg
        if cfg.type == ServiceType.SIMPLE:
            self.note(f"Started {self.desc}.")
            if self.main is not None and self.main.alive:
                self.set_sub("running")
                if await self._wait(self.main.waiter, None) == "stopped":
                    return "stop"
        self._note_main_exit()
        if self.result != "success":
            return "stop-sigterm"
        if cfg.type == ServiceType.ONESHOT:
            self.note(f"Finished {self.desc}.")
        if cfg.remain_after_exit:
            self.set_sub("exited")
            await self.stop_event.wait()
        return "stop"

    async def _commands(
        self, phase: str, cmds: Sequence[ExecCommand], ok: str, bad: str, *, main: bool = False,
        stoppable: bool = True,
    ) -> str:  # fmt: skip
        """Run ``cmds`` one after another in state ``phase`` under one timeout, as systemd does."""
        if not cmds:
            return ok
        self.set_sub(phase)
        stopping = phase in ("stop", "stop-post")
        deadline = deadline_after(self.cfg.timeout_stop if stopping else self.cfg.timeout_start)
        for cmd in cmds:
            extra = self._stop_env() if stopping else self._mainpid_env()
            proc, ended = await self._spawn(cmd, extra)
            if main:
                self.main, self.main_cmd = proc, cmd
            if proc is not None:
                outcome = await self._wait(proc.waiter, deadline, stoppable=stoppable)
                if outcome == "stopped":
                    return "stop-sigterm"
                if outcome == "timeout":
                    self.note(f"{self.unit}: {phase} operation timed out. Terminating.")
                    self._fail("timeout")
                    return bad
                ended = Exit.of(proc.waiter.result())
            assert ended is not None
            if main:
                self.main_exit = ended
            if self._clean(ended, main=main):
                continue
            self.note(f"{self.unit}: {'Main' if main else 'Control'} process exited, {ended.describe()}")
            if not cmd.ignore_failure or ended.code == "resources":
                self._fail(ended.result)
                return bad
        return ok

    async def _kill_stage(self, phase: str, on_timeout: str | None) -> str | None:
        """A *-sigterm or *-sigkill state: signal per KillMode, wait up to TimeoutStopSec."""
        self._note_main_exit()
        cfg, main = self.cfg, self.main
        after = None if phase.startswith("final") else "stop-post"
        sig = cfg.kill_signal if on_timeout else signal.SIGKILL
        deadline = deadline_after(cfg.timeout_stop)
        if cfg.kill_mode == KillMode.NONE:
            return after
        if cfg.kill_mode == KillMode.PROCESS or (cfg.kill_mode == KillMode.MIXED and on_timeout):
            gone = True
            if main is not None and main.alive:
                self.set_sub(phase)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(main.pid, sig)  # still our unreaped child: the PID is ours
                gone = await wait_until(lambda: not main.alive, deadline)
            if gone and cfg.kill_mode == KillMode.MIXED:
                gone = await self._kill_groups(phase, signal.SIGKILL, deadline)
        else:
            gone = await self._kill_groups(phase, sig, deadline)
        if gone:
            return after
        if on_timeout is None:
            self.note(f"{self.unit}: Processes still around after SIGKILL. Ignoring.")
            return after
        self.note(f"{self.unit}: State '{phase}' timed out. {'Killing' if cfg.send_sigkill else 'Skipping'}.")
        self._fail("timeout")
        return on_timeout if cfg.send_sigkill else after

    async def _kill_groups(self, phase: str, sig: int, deadline: float | None) -> bool:
        self._sweep()
        if not self.groups:
            return True
        self.set_sub(phase)
        for pgid in list(self.groups):
            signal_group(pgid, sig)
        return await wait_until(self._groups_gone, deadline)

    # ---- helpers ---------------------------------------------------------------------------------------

    def _fail(self, result: str) -> None:
        if self.result == "success":
            self.result = result

    def _clean(self, ended: Exit, *, main: bool) -> bool:
        """systemd's is_clean_exit: 0 (or SuccessExitStatus=); a daemon killed by HUP/INT/TERM/PIPE."""
        cfg = self.cfg
        if ended.code == "exited":
            return ended.status == 0 or (main and ended.status in cfg.success_exit_status)
        if ended.code == "killed" and main:
            daemon = cfg.type == ServiceType.SIMPLE
            return (daemon and ended.status in _CLEAN_SIGNALS) or ended.status in cfg.success_signals
        return False

    def _note_main_exit(self) -> None:
        """Account for the main process of a simple service once it has ended."""
        if self.main_noted or (self.main is not None and self.main.alive):
            return
        if self.main is not None:
            self.main_exit = Exit.of(self.main.waiter.result())
        self.main_noted = True
        if self.main_exit is None or self._clean(self.main_exit, main=True):
            return
        self.note(f"{self.unit}: Main process exited, {self.main_exit.describe()}")
        if not (self.main_cmd and self.main_cmd.ignore_failure) or self.main_exit.code == "resources":
            self._fail(self.main_exit.result)

    def _sweep(self) -> None:
        """Forget groups whose leader has been reaped and that have no members left."""
        for pgid, proc in list(self.groups.items()):
            if not proc.alive and not has_members(pgid):
                del self.groups[pgid]
                self.sup.forget_group(pgid)

    def _groups_gone(self) -> bool:
        self._sweep()
        return not self.groups

    async def _wait(
        self, waiter: asyncio.Task[int], deadline: float | None, *, stoppable: bool = True
    ) -> str:
        """Wait for a process: "done", "timeout", or "stopped" (a stop was requested meanwhile)."""
        stopper = asyncio.create_task(self.stop_event.wait()) if stoppable else None
        waits: set[asyncio.Task[int] | asyncio.Task[bool]] = {waiter}
        if stopper is not None:
            waits.add(stopper)
        try:
            await asyncio.wait(waits, timeout=remaining(deadline), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
                await asyncio.wait([stopper])
        if waiter.done():
            return "done"
        return "stopped" if self.stop_event.is_set() and stoppable else "timeout"

    def _mainpid_env(self) -> dict[str, str]:
        return {"MAINPID": str(self.main.pid)} if self.main is not None and self.main.alive else {}

    def _stop_env(self) -> dict[str, str]:
        env = {**self._mainpid_env(), "SERVICE_RESULT": self.result}
        if self.main_exit is not None and self.main_exit.code in ("exited", "killed"):
            status = self.main_exit.status
            named = signal.Signals(status).name.removeprefix("SIG") if self.main_exit.code == "killed" else ""
            env.update(EXIT_CODE=self.main_exit.code, EXIT_STATUS=named or str(status))
        return env

    # ---- spawning ----------------------------------------------------------------------------------------

    def _record_group(self, pgid: int, starttime: int, exact: bool) -> None:
        """The crash record of a group just started (called in the thread that started it)."""
        self.sup.record_group(pgid, starttime, exact, self)

    async def _spawn(self, cmd: ExecCommand, extra: Mapping[str, str]) -> tuple[Proc | None, Exit | None]:
        """Start one Exec process in a new session, its output appended to the unit's journal file. A
        process that cannot be started comes back as an exit status, as systemd reports it (203/EXEC,
        200/CHDIR, 209/STDOUT)."""
        try:
            env = exec_environment(
                self.sup.base_env, self.cfg, self.machine, self.user, self.invocation, extra
            )
        except OSError as exc:
            self.note(f"{self.unit}: Failed to load environment files: {exc}")
            return None, Exit("resources", 0)
        argv = cmd.render(env)
        exe = find_executable(cmd.path, env)
        cwd = working_directory(self.cfg, self.machine, self.user)
        if exe is None or cwd is None:
            what = f"locate executable {cmd.path}" if exe is None else "change to the working directory"
            self.note(f"{self.unit}: Failed to {what}: No such file or directory")
            return None, Exit("exited", 203 if exe is None else 200)
        try:
            output = self.journal.fd()
        except OSError as exc:
            log.warning("%s: cannot open its journal %s: %s", self.unit, self.journal.path, exc)
            return None, Exit("exited", 209)
        try:
            started = await start_group(argv, exe, cwd, env, self.user, output, self._record_group)
        except SpawnFailed as exc:
            self.note(f"{self.unit}: Failed to execute {exe}: {exc}")
            return None, Exit("exited", 203)
        process = started.process
        proc = Proc(process.pid, exe, asyncio.create_task(process.wait()))
        self.groups[process.pid] = proc
        return proc, None
