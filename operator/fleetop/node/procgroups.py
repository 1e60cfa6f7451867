"""A unit's processes as process groups: starting them, signalling them, and cleaning up after a crash.

Without cgroups, a unit's processes are tracked as process groups: every Exec process starts in a new
session (``start_new_session``), so it and its children share a PGID that the supervisor kills as one.
A process that calls ``setsid()`` itself escapes, as a double-forking daemon would escape a process
group anyway; run daemons in the foreground. Every group is recorded in ``state_dir/run/<pgid>.pid``
with the leader's start time until it is gone, so that after the node is SIGKILLed the next start's
``cleanup_orphans`` can kill what is left, and only that: a group is signalled only while it still
has members (the kernel does not reuse a PGID then) or its leader's start time still matches.

Everything here reads ``/proc`` and knows nothing of units; ``fleetop.node.systemd_service`` decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetop.node.execenv import RunUser

POLL = 0.05
_EXIT_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
               5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING", 200: "CHDIR", 203: "EXEC",
               209: "STDOUT", 217: "USER"}  # fmt: skip


# ---- processes and process groups, read from /proc -------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    starttime: int


def proc_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return ProcStat(fields[0].decode(), int(fields[2]), int(fields[19]))


def has_members(pgid: int, since: int = 0) -> bool:
    """True while group ``pgid`` has a live (non-zombie) process started at or after ``since``."""
    leader = proc_stat(pgid)
    if leader is not None and leader.pgrp == pgid and leader.state != "Z" and leader.starttime >= since:
        return True
    try:
        os.killpg(pgid, 0)  # no process at all in the group (the usual answer): no need to read /proc
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's processes are in it: look closer
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat.pgrp == pgid and stat.state != "Z" and stat.starttime >= since:
                return True
    return False


def signal_group(pgid: int, sig: int) -> None:
    """Signal a group of ours, only while it has members (so its PGID cannot have been reused)."""
    if has_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
            if sig not in (signal.SIGKILL, signal.SIGCONT):
                os.killpg(pgid, signal.SIGCONT)


def boot_ticks() -> int:
    """A lower bound for the start time (clock ticks since boot) of a process forked after this call."""
    with open("/proc/uptime", encoding="ascii") as handle:
        uptime = float(handle.read().split()[0])
    return max(0, int(uptime * os.sysconf("SC_CLK_TCK")) - 1)


# ---- one Exec process --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    """How a process ended: ``exited`` with a status, ``killed`` by a signal, or never ran (``resources``)."""

    code: str
    status: int

    @classmethod
    def of(cls, returncode: int) -> Exit:
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
class Proc:
    pid: int
    exe: str
    waiter: asyncio.Task[int]

    @property
    def alive(self) -> bool:
        return not self.waiter.done()


class SpawnFailed(Exception):
    """The process could not be started (exec failed, or its user could not be switched to)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause.strerror or str(cause))


class Child:
    """A started process: its pid and, awaited, its exit status (``Popen.returncode``)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    async def wait(self) -> int:
        """Wait for the exit in a thread of its own, as asyncio's ThreadedChildWatcher does (a pool
        would run out of threads: every running unit has a process to wait for)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def settle(code: int) -> None:
            if not done.done():
                done.set_result(code)

        def waiter() -> None:
            code = self.popen.wait()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, code)

        threading.Thread(target=waiter, name=f"waitpid-{self.pid}", daemon=True).start()
        return await done


@dataclass(frozen=True)
class Started:
    """A group leader just started; ``starttime`` is its start time when ``exact``, else a lower bound."""

    process: Child
    starttime: int
    exact: bool


def _spawn(
    argv: Sequence[str],
    exe: str,
    cwd: str,
    env: Mapping[str, str],
    user: RunUser | None,
    output: int,
    record: Callable[[int, int, bool], None] | None,
) -> Started:
    switch = user is not None and user.switch
    since = boot_ticks()
    try:
        popen = subprocess.Popen(
            list(argv), executable=exe, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            cwd=cwd, env=env, start_new_session=True,
            user=user.uid if user and switch else None, group=user.gid if user and switch else None,
            extra_groups=os.getgrouplist(user.name, user.gid) if user and switch else None,
        )  # fmt: skip
    except OSError as exc:
        raise SpawnFailed(exc) from exc
    stat = proc_stat(popen.pid)
    exact = stat is not None and stat.pgrp == popen.pid
    started = Started(Child(popen), stat.starttime if stat and exact else since, exact)
    if record is not None:
        try:
            record(popen.pid, started.starttime, exact)
        except BaseException:
            _kill(popen)
            raise
    return started


def _kill(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    threading.Thread(target=popen.wait, name=f"waitpid-{popen.pid}", daemon=True).start()


def _kill_unclaimed(spawned: asyncio.Future[Started]) -> None:
    """A start whose caller was cancelled meanwhile: nobody tracks the process, so it goes."""
    if spawned.cancelled() or spawned.exception() is not None:
        return
    _kill(spawned.result().process.popen)


async def start_group(
    argv: Sequence[str],
    exe: str,
    cwd: str,
    env: Mapping[str, str],
    user: RunUser | None,
    output: int,
    record: Callable[[int, int, bool], None] | None = None,
) -> Started:
    """Start ``argv`` in a new session, so as the leader of a new process group, as ``user`` when it
    must be switched to, with ``output`` (a descriptor the caller keeps) as its stdout and stderr.
    Nothing here reads what it writes. Raises ``SpawnFailed`` when the process could not be started.
    ``record(pgid, starttime, exact)`` is called right after the start (e.g. :func:`record_group`); if
    it raises, the group is killed and the error is raised here.

    The fork, the exec and ``record`` run in a thread: with a large node they take milliseconds, which
    the event loop spends serving requests instead."""
    spawned = asyncio.get_running_loop().run_in_executor(
        None, _spawn, argv, exe, cwd, env, user, output, record
    )
    try:
        return await asyncio.shield(spawned)
    except asyncio.CancelledError:
        spawned.add_done_callback(_kill_unclaimed)
        raise


# ---- waiting -------------------------------------------------------------------------------------------


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def wait_until(predicate: Callable[[], bool], deadline: float | None) -> bool:
    """Poll ``predicate`` until it holds (True) or the deadline passes (False): soon at first (a process
    that was just signalled is usually gone within milliseconds), then every ``POLL`` seconds. An agent
    stops its units one after another, so a first look only ``POLL`` later made each stop cost that."""
    pause = POLL / 16
    while not predicate():
        left = remaining(deadline)
        if left is not None and left <= 0:
            return False
        await asyncio.sleep(pause if left is None else min(pause, left))
        pause = min(2 * pause, POLL)
    return True


# ---- pid records in state_dir/run ----------------------------------------------------------------------


def record_group(run_dir: Path, pgid: int, starttime: int, exact: bool, machine_id: str, unit: str) -> None:
    """Write (atomically) the record ``cleanup_orphans`` reads after a crash."""
    run_dir.mkdir(parents=True, exist_ok=True)
    temp = run_dir / f".{pgid}.tmp"
    line = f"{pgid} {starttime} {int(exact)} {machine_id} {unit}\n"
    temp.write_text(line, encoding="utf-8")
    os.replace(temp, run_dir / f"{pgid}.pid")


def forget_group(run_dir: Path, pgid: int) -> None:
    (run_dir / f"{pgid}.pid").unlink(missing_ok=True)


def cleanup_orphans(run_dir: Path, tracked: Collection[int]) -> int:
    """SIGKILL every recorded process group that still exists and is not in ``tracked``, and return
    how many. A record whose PGID now belongs to another process is dropped."""
    killed: list[tuple[int, int]] = []
    for path in sorted(run_dir.glob("*.pid")):
        try:
            fields = path.read_text(encoding="utf-8").split()
            pgid, since, exact = int(fields[0]), int(fields[1]), fields[2] == "1"
        except (OSError, ValueError, IndexError):
            path.unlink(missing_ok=True)
            continue
        if pgid in tracked:
            continue
        leader = proc_stat(pgid)
        reused = leader is not None and (not exact or leader.starttime != since)
        if not reused and has_members(pgid, since):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            killed.append((pgid, since))
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + 5.0
    while any(has_members(p, s) for p, s in killed) and time.monotonic() < deadline:
        time.sleep(POLL)
    return len(killed)
