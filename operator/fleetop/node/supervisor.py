"""The unit supervisor of ``fleetop node``: runs units as real processes with systemd's semantics.

fleet only asks a machine to load, start, stop and unload units and then reports what systemd says, so
the states here are systemd's own (load, active, sub) triples, reached by systemd's state machine:
start-pre → start → start-post → running/exited → stop (ExecStop, with ``$MAINPID``) → stop-sigterm
→ stop-sigkill → stop-post → final-sigterm → final-sigkill → dead/failed, with ``Restart=`` through
auto-restart and the start rate limit. The same unit may be loaded on several modelled machines, so
everything is keyed by (unit, machine id).

Without cgroups, a unit's processes are tracked as process groups: every Exec process starts in a new
session (``start_new_session``), so it and its children share a PGID that the supervisor kills as one.
A process that calls ``setsid()`` itself escapes, as a double-forking daemon would escape a process
group anyway; run daemons in the foreground. Every group is recorded in ``state_dir/run/<pgid>.pid``
with the leader's start time until it is gone, so that after the node is SIGKILLed the next start's
``cleanup_orphans`` can kill what is left, and only that: a group is signalled only while it still
has members (the kernel does not reuse a PGID then) or its leader's start time still matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetop.errors import NotFound
from fleetop.fleet.units import UnitOption
from fleetop.node import journal
from fleetop.node.systemd import (
    ExecCommand,
    KillMode,
    LoadResult,
    RestartPolicy,
    ServiceConfig,
    ServiceType,
    SpecifierContext,
    load_service,
    parse_environment_file,
)

log = logging.getLogger(__name__)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_POLL = 0.05
_IDENT = "fleetop-node"
_ACTIVE = {
    "dead": "inactive", "failed": "failed", "start-pre": "activating", "start": "activating",
    "start-post": "activating", "auto-restart": "activating", "running": "active", "exited": "active",
    "stop": "deactivating", "stop-sigterm": "deactivating", "stop-sigkill": "deactivating",
    "stop-post": "deactivating", "final-sigterm": "deactivating", "final-sigkill": "deactivating",
}  # fmt: skip
_EXIT_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
               5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING", 200: "CHDIR", 203: "EXEC",
               217: "USER"}  # fmt: skip
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


def with_own_bin(path: str) -> str:
    """``path`` with the directory of this installation's ``fleetop`` appended when it is missing, so
    units the operator writes (``fleetop register``, ``fleetop proxy-agent``) find the same fleetop as
    the node that runs them, also when the node was started from an unactivated virtualenv."""
    own = os.path.dirname(sys.executable)
    if not own or not os.access(os.path.join(own, "fleetop"), os.X_OK) or own in path.split(os.pathsep):
        return path
    return f"{path}{os.pathsep}{own}" if path else own


@dataclass(frozen=True)
class MachineContext:
    """One modelled machine. ``path_map`` maps host paths (``/etc/environment``) to this machine's files."""

    machine_id: str
    hostname: str
    ip: str
    root: Path
    path_map: Mapping[str, Path] = field(default_factory=dict)

    def map_path(self, path: str) -> Path:
        """A host path as this machine sees it: an exact entry of ``path_map``, else the longest mapped
        directory containing it, else the host path itself."""
        if path in self.path_map:
            return self.path_map[path]
        for prefix in sorted(self.path_map, key=len, reverse=True):
            if path.startswith(prefix.rstrip("/") + "/"):
                return self.path_map[prefix] / path[len(prefix.rstrip("/")) + 1 :]
        return Path(path)


@dataclass(frozen=True)
class RuntimeState:
    unit: str
    machine_id: str
    hash: str
    load_state: str
    active_state: str
    sub_state: str


# ---- processes and process groups, read from /proc -------------------------------------------------


@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    starttime: int


def _proc_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return _Stat(fields[0].decode(), int(fields[2]), int(fields[19]))


def _has_members(pgid: int, since: int = 0) -> bool:
    """True while group ``pgid`` has a live (non-zombie) process started at or after ``since``."""
    leader = _proc_stat(pgid)
    if leader is not None and leader.pgrp == pgid and leader.state != "Z" and leader.starttime >= since:
        return True
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat.pgrp == pgid and stat.state != "Z" and stat.starttime >= since:
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    """Signal a group of ours, only while it has members (so its PGID cannot have been reused)."""
    if _has_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
            if sig not in (signal.SIGKILL, signal.SIGCONT):
                os.killpg(pgid, signal.SIGCONT)


def _boot_ticks() -> int:
    """A lower bound for the start time (clock ticks since boot) of a process forked after this call."""
    with open("/proc/uptime", encoding="ascii") as handle:
        uptime = float(handle.read().split()[0])
    return max(0, int(uptime * os.sysconf("SC_CLK_TCK")) - 1)


@dataclass(frozen=True)
class _Exit:
    """How a process ended: ``exited`` with a status, ``killed`` by a signal, or never ran (``resources``)."""

    code: str
    status: int

    @classmethod
    def of(cls, returncode: int) -> _Exit:
        return cls("killed", -returncode) if returncode < 0 else cls("exited", returncode)

    @property
    def result(self) -> str:
        return {"exited": "exit-code", "killed": "signal"}.get(self.code, "resources")

    def describe(self) -> str:
        if self.code == "killed":
            name = signal.Signals(self.status).name.removeprefix("SIG")
            return f"code=killed, status={self.status}/{name}"
        return f"code=exited, status={self.status}/{_EXIT_NAMES.get(self.status, str(self.status))}"


@dataclass(eq=False)
class _Proc:
    pid: int
    exe: str
    waiter: asyncio.Task[int]

    @property
    def alive(self) -> bool:
        return not self.waiter.done()


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    switch: bool


def _resolve_user(name: str) -> _User | str:
    """User= as a ``_User``, or why it cannot be used here."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        return f"User={name}: no such user"
    switch = entry.pw_uid != os.geteuid()
    if switch and os.geteuid() != 0:
        return f"User={name}: fleetop node does not run as root, so it cannot run units as another user"
    return _User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell, switch)


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


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _wait_until(predicate: Callable[[], bool], deadline: float | None) -> bool:
    """Poll ``predicate`` until it holds (True) or the deadline passes (False)."""
    while not predicate():
        remaining = _remaining(deadline)
        if remaining is not None and remaining <= 0:
            return False
        await asyncio.sleep(_POLL if remaining is None else min(_POLL, remaining))
    return True


class _Unit:
    """One unit on one machine: its loaded configuration and systemd's state machine for it."""

    def __init__(self, sup: Supervisor, unit: str, machine: MachineContext) -> None:
        self.sup, self.unit, self.machine = sup, unit, machine
        self.hash, self.load_state, self.load_error = "", "loaded", ""
        self.config: ServiceConfig | None = None
        self.user: _User | None = None
        self.sub, self.result = "dead", "success"
        self.journal = journal.JournalFile(sup.journal_path(unit, machine.machine_id), host=machine.hostname)
        self.task: asyncio.Task[None] | None = None
        self.stop_event, self.idle = asyncio.Event(), asyncio.Event()
        self.idle.set()
        self.queued_start = False
        self.main: _Proc | None = None
        self.main_cmd: ExecCommand | None = None
        self.main_exit: _Exit | None = None
        self.main_noted = True
        self.groups: dict[int, _Proc] = {}
        self.pumps: set[asyncio.Task[None]] = set()
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
            self.sup.changed()

    def apply(self, loaded: LoadResult, unit_hash: str) -> None:
        """A (re)load. A running instance keeps running; the new settings apply from its next phase."""
        self.hash = unit_hash
        for warning in loaded.warnings:
            self.note(f"{self.unit}: {warning}")
        config, error, user = loaded.config, loaded.error, None
        if config is not None and config.user:
            resolved = _resolve_user(config.user)
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
        """Stop, then make sure nothing of the unit is left: leftover groups, output pumps, journal."""
        await self.stop()
        if self.task is not None:
            await asyncio.wait([self.task])
        self._sweep()
        if self.groups:
            timeout = self.config.timeout_stop if self.config else None
            sig = self.config.kill_signal if self.config else signal.SIGTERM
            for pgid in list(self.groups):
                _signal_group(pgid, sig)
            if not await _wait_until(self._groups_gone, _deadline(timeout or 10.0)):
                for pgid in list(self.groups):
                    _signal_group(pgid, signal.SIGKILL)
                await _wait_until(self._groups_gone, _deadline(5.0))
        leftovers = [p.waiter for p in self.groups.values() if p.alive]
        if self.pumps:
            await asyncio.wait(self.pumps, timeout=1.0)
        for task in [*self.pumps, *leftovers]:
            task.cancel()
        if self.pumps or leftovers:
            await asyncio.wait([*self.pumps, *leftovers])
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
        deadline = _deadline(self.cfg.timeout_stop if stopping else self.cfg.timeout_start)
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
                ended = _Exit.of(proc.waiter.result())
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
        deadline = _deadline(cfg.timeout_stop)
        if cfg.kill_mode == KillMode.NONE:
            return after
        if cfg.kill_mode == KillMode.PROCESS or (cfg.kill_mode == KillMode.MIXED and on_timeout):
            gone = True
            if main is not None and main.alive:
                self.set_sub(phase)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(main.pid, sig)  # still our unreaped child: the PID is ours
                gone = await _wait_until(lambda: not main.alive, deadline)
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
            _signal_group(pgid, sig)
        return await _wait_until(self._groups_gone, deadline)

    # ---- helpers ---------------------------------------------------------------------------------------

    def _fail(self, result: str) -> None:
        if self.result == "success":
            self.result = result

    def _clean(self, ended: _Exit, *, main: bool) -> bool:
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
            self.main_exit = _Exit.of(self.main.waiter.result())
        self.main_noted = True
        if self.main_exit is None or self._clean(self.main_exit, main=True):
            return
        self.note(f"{self.unit}: Main process exited, {self.main_exit.describe()}")
        if not (self.main_cmd and self.main_cmd.ignore_failure) or self.main_exit.code == "resources":
            self._fail(self.main_exit.result)

    def _sweep(self) -> None:
        """Forget groups whose leader has been reaped and that have no members left."""
        for pgid, proc in list(self.groups.items()):
            if not proc.alive and not _has_members(pgid):
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
            await asyncio.wait(waits, timeout=_remaining(deadline), return_when=asyncio.FIRST_COMPLETED)
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

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """base_env, then what systemd sets, then Environment=, then EnvironmentFile= (read at every
        spawn, as systemd does), then per-command variables such as MAINPID."""
        cfg, env = self.cfg, dict(self.sup.base_env)
        env["INVOCATION_ID"] = self.invocation
        if self.user is not None:
            user = self.user
            env.update(USER=user.name, LOGNAME=user.name, HOME=user.home, SHELL=user.shell)
        env.update(cfg.environment)
        for ref in cfg.environment_files:
            try:
                text = self.machine.map_path(ref.path).read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                if ref.optional:
                    continue
                raise
            env.update(parse_environment_file(text))
        env.update(extra)
        return env

    def _cwd(self) -> str | None:
        cfg, root = self.cfg, self.machine.root
        if cfg.working_directory is None:
            root.mkdir(parents=True, exist_ok=True)
            return str(root)
        home = self.user.home if self.user is not None else os.path.expanduser("~")
        path = Path(home) if cfg.working_directory == "~" else self.machine.map_path(cfg.working_directory)
        if path.is_dir():
            return str(path)
        return str(root) if cfg.working_directory_optional and root.is_dir() else None

    async def _spawn(self, cmd: ExecCommand, extra: Mapping[str, str]) -> tuple[_Proc | None, _Exit | None]:
        """Start one Exec process in a new session, its output going to the journal. A process that
        cannot be started comes back as an exit status, as systemd reports it (203/EXEC, 200/CHDIR)."""
        try:
            env = self._environment(extra)
        except OSError as exc:
            self.note(f"{self.unit}: Failed to load environment files: {exc}")
            return None, _Exit("resources", 0)
        argv = cmd.render(env)
        exe = (
            cmd.path
            if cmd.path.startswith("/")
            else shutil.which(cmd.path, path=env.get("PATH", DEFAULT_PATH))
        )
        cwd = self._cwd()
        if exe is None or cwd is None:
            what = f"locate executable {cmd.path}" if exe is None else "change to the working directory"
            self.note(f"{self.unit}: Failed to {what}: No such file or directory")
            return None, _Exit("exited", 203 if exe is None else 200)
        user = self.user
        switch = user is not None and user.switch
        since = _boot_ticks()
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, executable=exe, stdin=asyncio.subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
                cwd=cwd, env=env, start_new_session=True,
                user=user.uid if user and switch else None, group=user.gid if user and switch else None,
                extra_groups=os.getgrouplist(user.name, user.gid) if user and switch else None,
            )  # fmt: skip
        except OSError as exc:
            os.close(read_fd)
            self.note(f"{self.unit}: Failed to execute {exe}: {exc.strerror or exc}")
            return None, _Exit("exited", 203)
        finally:
            os.close(write_fd)
        stat = _proc_stat(process.pid)
        exact = stat is not None and stat.pgrp == process.pid
        self.sup.record_group(process.pid, stat.starttime if stat and exact else since, exact, self)
        proc = _Proc(process.pid, exe, asyncio.create_task(process.wait()))
        self.groups[process.pid] = proc
        ident, pid = Path(exe).name, process.pid
        pump = asyncio.create_task(journal.pump_fd(read_fd, lambda s: self.journal.write(ident, pid, s)))
        self.pumps.add(pump)
        pump.add_done_callback(self.pumps.discard)
        return proc, None


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
        if base_env is None:
            base_env = {k: os.environ[k] for k in ("PATH", "LANG", "HOME") if k in os.environ}
            base_env["PATH"] = with_own_bin(base_env.get("PATH", DEFAULT_PATH))
        self.base_env: dict[str, str] = dict(base_env)
        self.base_env.setdefault("PATH", DEFAULT_PATH)
        self.sequence = itertools.count(1)
        self._units: dict[tuple[str, str], _Unit] = {}

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
            current = self._units[key] = _Unit(self, unit, machine)
        current.machine = machine
        current.apply(loaded, unit_hash)
        self.changed()

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
        self.changed()

    def states(self) -> list[RuntimeState]:
        return [self._units[key].state() for key in sorted(self._units)]

    def state(self, unit: str, machine_id: str) -> RuntimeState | None:
        current = self._units.get((unit, machine_id))
        return current.state() if current is not None else None

    async def stop_machine(self, machine_id: str) -> None:
        """The machine went away: stop and unload all of its units, concurrently."""
        names = [unit for unit, machine in self._units if machine == machine_id]
        await asyncio.gather(*(self.unload(unit, machine_id) for unit in names))

    async def shutdown(self) -> None:
        """Stop and unload everything, most recently started first, leaving no process behind."""
        for current in sorted(self._units.values(), key=lambda u: u.seq, reverse=True):
            await self.unload(current.unit, current.machine.machine_id)

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
        killed: list[tuple[int, int]] = []
        for path in sorted(self.run_dir.glob("*.pid")):
            try:
                fields = path.read_text(encoding="utf-8").split()
                pgid, since, exact = int(fields[0]), int(fields[1]), fields[2] == "1"
            except (OSError, ValueError, IndexError):
                path.unlink(missing_ok=True)
                continue
            if pgid in tracked:
                continue
            leader = _proc_stat(pgid)
            reused = leader is not None and (not exact or leader.starttime != since)
            if not reused and _has_members(pgid, since):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                killed.append((pgid, since))
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + 5.0
        while any(_has_members(p, s) for p, s in killed) and time.monotonic() < deadline:
            time.sleep(_POLL)
        return len(killed)

    # ---- for the units ---------------------------------------------------------------------------------

    def changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")

    def record_group(self, pgid: int, starttime: int, exact: bool, owner: _Unit) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        temp = self.run_dir / f".{pgid}.tmp"
        line = f"{pgid} {starttime} {int(exact)} {owner.machine.machine_id} {owner.unit}\n"
        temp.write_text(line, encoding="utf-8")
        os.replace(temp, self.run_dir / f"{pgid}.pid")

    def forget_group(self, pgid: int) -> None:
        (self.run_dir / f"{pgid}.pid").unlink(missing_ok=True)
