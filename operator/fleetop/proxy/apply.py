"""Install a published proxy config the way confd does (stage → check → rename → reload), but safely.

confd writes a temp file, runs ``check_cmd`` on it, renames it over the target and runs
``reload_cmd``; it logs and drops errors. Here every step has a timeout, a failed check leaves the
target untouched (the staged file is removed and the old config keeps serving) and the error carries
the checker's own message, so the agent can report it.

Commands run without a shell (``create_subprocess_exec``), in their own process group that is killed
on timeout or cancellation. ``{config}`` in an argv list is replaced by the path being checked or
installed. A command given as one string is split like a shell would (``shlex``) unless it uses shell
syntax (pipes, ``$``, ``;``...): then it runs as ``/bin/sh -c <string> fleetop <path>`` with
``{config}`` rewritten to ``"$1"``, so the path is an argument and never pasted into the script.

For HAProxy, a config that changes only servers can replace the reload by a runtime step (see
:func:`apply_config` and :mod:`fleetop.proxy.haproxy_runtime`); the file goes through the same
stage, check and rename.

Default commands per kind: nginx is checked with ``nginx -t -q`` on the staged file and reloaded by
SIGHUP to the master, whose previous workers get SIGQUIT once its new worker is there (see
:class:`SignalReload`); HAProxy (master-worker, ``expose-fd listeners``) is checked with
``haproxy -c`` and reloaded seamlessly by SIGUSR2 to the master. The pid file is the one the
config names (``pid`` / ``pidfile``), so agent and proxy can never disagree about it.

:func:`start_proxy` starts a foreground nginx or HAProxy (tests, and the managed proxy unit) from an
initial valid config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fleetop.errors import ProxyError
from fleetop.filemodes import CONFIG_MODE, SHARED_DIR_MODE, make_dir, open_log, touch
from fleetop.models.proxy import ProxySpec
from fleetop.models.status import PublishedConfig
from fleetop.processes import pid_alive
from fleetop.proxy.render import RenderPaths, render

log = logging.getLogger(__name__)

Kind = Literal["nginx", "haproxy"]
Command = Sequence[str] | str
Stage = Literal["stage", "check", "install", "reload"]

CONFIG_TOKEN = "{config}"
STAGED_PREFIX = ".fleetop-staged-"
STAGED_MODE = 0o640
_OUTPUT_LIMIT = 2000
RESEND_AFTER = 2.0
CHECK_NICE = 10
"""The niceness of a check that runs after the runtime step already changed the servers."""
_SHELL_CHARS = set("|&;<>()$`\\*?[]#~=%{}\n")
_PID_RE = {
    "nginx": re.compile(r"^\s*pid\s+([^\s;]+)\s*;", re.MULTILINE),
    "haproxy": re.compile(r"^\s*pidfile\s+(\S+)\s*$", re.MULTILINE),
}


class ApplyError(ProxyError):
    """A step of applying a config failed. ``installed`` says whether the target was replaced."""

    def __init__(
        self, stage: Stage, message: str, *, config_hash: str = "", output: str = "", installed: bool = False
    ) -> None:
        self.stage = stage
        self.config_hash = config_hash
        self.output = output
        self.installed = installed
        self.reloaded = False  # the proxy was reloaded anyway (to undo runtime changes)
        detail = f": {output}" if output else ""
        super().__init__(f"{stage} failed: {message}{detail}")


@dataclass(frozen=True, slots=True)
class SignalReload:
    """Reload by sending ``signal`` to the master pid written in ``pid_file``, then wait until the
    master has forked a new worker: proof the new config loaded (a config the master cannot load at
    reload time forks none), and a guard for HAProxy, whose master loses a SIGUSR2 that arrives while
    it is still re-executing itself for the previous one.

    ``retire``: a signal sent to the master's previous children once the new worker is there (nginx:
    SIGQUIT, its graceful shutdown). nginx's master lets the old workers accept connections for
    100 ms after it forked the new ones (it sleeps, then sends them this signal itself), so for that
    long requests may still be answered with the old config, its ``upstream`` servers included.
    The old workers finish the requests they hold and exit, and connections that arrive meanwhile
    wait in the listening socket's queue for the new worker. Nothing is retired unless a new worker
    came: a config the master refused keeps its workers."""

    pid_file: Path
    signal: int
    wait: bool = True
    settle: float = 0.0
    retire: int | None = None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What happened. ``superseded``: a newer config arrived during the check, nothing was installed.
    ``via``: how the proxy took the installed config (``runtime`` commands, a ``reload``, or nothing
    when the reload command is empty); ``fallback``: why the runtime step failed, when it did and the
    proxy was reloaded instead."""

    hash: str
    generation: int
    target: Path
    reloaded: bool
    superseded: bool = False
    via: Literal["runtime", "reload", ""] = ""
    fallback: str = ""


def find_binary(name: str) -> str:
    """``nginx`` / ``haproxy``: PATH first, then the sbin directories PATH often lacks."""
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin", "/sbin") if (p := Path(d) / name).is_file()), None
    )
    if found is None:
        raise ProxyError(f"{name} is not installed (not on PATH nor in /usr/sbin)")
    return found


def default_check(kind: Kind, prefix: Path) -> list[str]:
    """The syntax check run on the staged file (``{config}`` is its path)."""
    if kind == "nginx":
        return [find_binary("nginx"), "-t", "-q", "-e", "stderr", "-p", str(prefix), "-c", CONFIG_TOKEN]
    return [find_binary("haproxy"), "-c", "-f", CONFIG_TOKEN]  # -q would hide the errors too


def pid_file_of(kind: Kind, body: str) -> Path | None:
    """The pid file a rendered config names (nginx ``pid``, HAProxy ``pidfile``)."""
    match = _PID_RE[kind].search(body)
    return Path(match.group(1)) if match else None


def default_reload(kind: Kind, body: str) -> SignalReload:
    pid_file = pid_file_of(kind, body)
    if pid_file is None:
        directive = "pid" if kind == "nginx" else "pidfile"
        raise ApplyError("reload", f"the config has no '{directive}' line, so the proxy's pid is unknown")
    if kind == "nginx":
        return SignalReload(pid_file, signal.SIGHUP, retire=signal.SIGQUIT)
    return SignalReload(pid_file, signal.SIGUSR2, settle=0.1)


def uses_shell(command: str) -> bool:
    """Whether a command string needs ``/bin/sh`` (anything beyond words and quotes)."""
    return bool(_SHELL_CHARS & set(command.replace(CONFIG_TOKEN, "")))


def command_argv(command: Command, config: Path) -> list[str]:
    """The argv to run for ``command`` with ``{config}`` standing for ``config``."""
    if isinstance(command, str):
        if uses_shell(command):
            return ["/bin/sh", "-c", command.replace(CONFIG_TOKEN, '"$1"'), "fleetop", str(config)]
        try:
            parts = shlex.split(command)
        except ValueError as exc:
            raise ApplyError("check", f"cannot parse command {command!r}: {exc}") from None
    else:
        parts = list(command)
    return [part.replace(CONFIG_TOKEN, str(config)) for part in parts]


def _trim(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _OUTPUT_LIMIT else "..." + text[-_OUTPUT_LIMIT:]


async def run_command(
    argv: Sequence[str], *, timeout: float, cwd: Path | None = None, nice: int = 0
) -> tuple[int, str]:
    """Run argv without a shell; (exit status, trimmed stderr or stdout). Killed on timeout/cancel.
    ``nice`` > 0 lowers the command's CPU priority (a check that traffic does not wait for)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
    if nice > 0:
        with contextlib.suppress(OSError):  # already gone: nothing to lower
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            return -1, f"timed out after {timeout:g} s"
        raise
    return proc.returncode or 0, _trim(err) or _trim(out)


def _write_staged(path: Path, body: str) -> None:
    """Write (not yet fsync: see :func:`_fsync_file`, run while the check runs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, STAGED_MODE)
    try:
        os.fchmod(fd, STAGED_MODE)
        os.write(fd, body.encode("utf-8"))
    finally:
        os.close(fd)


async def _sync_staged(staged: Path, digest: str) -> None:
    try:
        await asyncio.to_thread(_fsync_file, staged)
    except OSError as exc:
        message = f"cannot write {staged}: {exc.strerror or exc}"
        raise ApplyError("stage", message, config_hash=digest) from None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pid(pid_file: Path) -> int:
    """The live pid in ``pid_file``; ApplyError when the file is missing, garbage or stale."""
    try:
        text = pid_file.read_text().strip()
    except OSError:
        raise ApplyError("reload", f"no pid file {pid_file}: is the proxy running?", installed=True) from None
    if not text.isdigit() or int(text) <= 1:
        raise ApplyError("reload", f"pid file {pid_file} holds no pid", installed=True)
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ApplyError("reload", f"pid {pid} from {pid_file} is not running", installed=True) from None
    return pid


def children(pid: int) -> set[int] | None:
    """The child pids of ``pid`` from /proc; None when the process is gone or /proc cannot tell."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    found: set[int] = set()
    for task in tasks:
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # a thread that just ended (the master re-executes itself on reload)
        except OSError:
            return None
    return found


PID_WAIT = 2.0
"""Seconds a proxy that is starting up gets to write its pid file before a reload fails: nginx creates
the file, then writes its pid into it, so for a moment the file is there and empty."""


async def wait_pid(pid_file: Path, timeout: float) -> int:
    """:func:`read_pid`, read again every 10 ms for up to ``timeout`` seconds while it fails."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return read_pid(pid_file)
        except ApplyError:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(0.01)


# When each master's last reload produced its new worker (loop time), so a following reload can wait
# for the master to settle first: a per-process memo of the proxy this agent drives, not shared state.
_LAST_RELOAD: dict[int, float] = {}


async def _signal_reload(reload: SignalReload, timeout: float) -> None:
    """Signal the master and wait for a new worker, signalling again every ``RESEND_AFTER`` seconds:
    a master that is still starting up from the previous reload drops the signal (HAProxy 2.6), and
    reloading twice is harmless because every reload reads the file installed now. ``settle`` is kept
    between two reloads of one master; a reload after a quiet spell is not delayed by it."""
    pid = await wait_pid(reload.pid_file, min(PID_WAIT, timeout))
    loop = asyncio.get_running_loop()
    last = _LAST_RELOAD.get(pid)
    if reload.settle and last is not None and loop.time() < last + reload.settle:
        await asyncio.sleep(last + reload.settle - loop.time())
    before = children(pid) if reload.wait else None
    os.kill(pid, reload.signal)
    if before is None:
        return
    deadline = loop.time() + timeout
    resend = loop.time() + RESEND_AFTER
    while loop.time() < deadline:
        await asyncio.sleep(0.002)
        now = children(pid)
        if now is None:
            if pid_alive(pid):
                continue
            raise ApplyError("reload", f"the proxy (pid {pid}) exited during the reload", installed=True)
        if now - before:
            _LAST_RELOAD[pid] = loop.time()
            if reload.retire is not None:
                _retire(before & now, reload.retire)
            return
        if loop.time() >= resend:
            log.info("no new worker yet from pid %d: signalling it again", pid)
            os.kill(pid, reload.signal)
            resend = loop.time() + RESEND_AFTER
    raise ApplyError(
        "reload", f"no new worker within {timeout:g} s: the proxy could not load the config", installed=True
    )


def _retire(previous: set[int], signo: int) -> None:
    """Send ``signo`` to the master's previous children, read from /proc a moment ago (the kernel
    hands out pids in increasing order, so one freed in that moment is not another process's)."""
    for child in sorted(previous):
        with contextlib.suppress(ProcessLookupError):  # it exited since
            os.kill(child, signo)


async def _reload(reload: Command | SignalReload, target: Path, timeout: float) -> bool:
    if isinstance(reload, SignalReload):
        await _signal_reload(reload, timeout)
        return True
    argv = command_argv(reload, target)
    if not argv:
        return False
    status, output = await run_command(argv, timeout=timeout, cwd=target.parent)
    if status != 0:
        raise ApplyError("reload", f"{shlex.join(argv)} exited with {status}", output=output, installed=True)
    return True


async def apply_config(
    cfg: PublishedConfig,
    target: Path,
    *,
    check: Command | None,
    reload: Command | SignalReload | None,
    timeout: float,
    superseded: Callable[[], bool] | None = None,
    runtime: Callable[[], Awaitable[object]] | None = None,
) -> ApplyResult:
    """Stage ``cfg.body`` beside ``target``, check it, rename it over ``target``, reload the proxy.

    ``check`` / ``reload`` None mean the defaults for ``cfg.kind``; an empty list skips the step.
    On a failed check the staged file is removed, ``target`` is untouched and :class:`ApplyError`
    (stage ``check``) carries the checker's output. ``superseded()`` is asked after the check: when it
    says a newer config is waiting, this one is dropped before install (never apply a stale config).

    ``runtime``, when given, replaces the reload: it makes the running proxy hold the new config's
    servers (HAProxy's runtime API, which validates every command itself). It runs first, so traffic
    follows at the cost of a few socket round trips rather than of the check (a process start, about
    70 ms for HAProxy); the file is then checked and renamed as always, so a restart or a later
    reload gives the same servers. That check runs at a lower CPU priority (``CHECK_NICE``): nothing
    waits for it but the file, and on a busy machine it would otherwise take a core from the proxy
    answering the first requests of the change. If ``runtime`` raises :class:`ProxyError` the file is
    still checked and installed, the proxy is reloaded, and the result's ``fallback`` says why. If the
    check fails after ``runtime`` changed servers, the proxy is reloaded from the installed (old) file
    so it serves exactly that again, and the check error is raised.
    """
    reload_how = reload if reload is not None else default_reload(cfg.kind, cfg.body)
    fallback = "" if runtime is None else await _runtime_first(runtime)
    nice = CHECK_NICE if runtime is not None and not fallback else 0
    try:
        target, installed = await _check_and_install(
            cfg, target, check, timeout, superseded if runtime is None else None, nice=nice
        )
    except ApplyError as error:
        if runtime is not None and not error.installed:
            await _revert(error, reload_how, target, timeout)
        raise
    if not installed:
        return ApplyResult(cfg.hash, cfg.generation, target, reloaded=False, superseded=True)
    if runtime is not None and not fallback:
        await _sync_rename(target)
        return ApplyResult(cfg.hash, cfg.generation, target, reloaded=False, via="runtime")
    try:
        reloaded = await _reload(reload_how, target, timeout)
    except ApplyError as exc:
        exc.config_hash = cfg.hash
        raise
    except OSError as exc:
        raise ApplyError("reload", str(exc.strerror or exc), config_hash=cfg.hash, installed=True) from None
    finally:
        await _sync_rename(target)
    return ApplyResult(
        hash=cfg.hash,
        generation=cfg.generation,
        target=target,
        reloaded=reloaded,
        via="reload" if reloaded else "",
        fallback=fallback,
    )


async def _check_and_install(
    cfg: PublishedConfig,
    target: Path,
    check: Command | None,
    timeout: float,
    superseded: Callable[[], bool] | None,
    *,
    nice: int = 0,
) -> tuple[Path, bool]:
    """Stage, check, rename: (the absolute target, False when superseded before install)."""
    target, staged = _stage(target, cfg)
    try:
        check_argv = command_argv(
            check if check is not None else default_check(cfg.kind, target.parent), staged
        )
        # the staged file reaches the disk while the checker runs: both done before the rename
        synced = _sync_staged(staged, cfg.hash)
        if check_argv:
            checked = run_command(check_argv, timeout=timeout, cwd=target.parent, nice=nice)
            (status, output), _ = await asyncio.gather(checked, synced)
            if status != 0:
                name = Path(check_argv[0]).name
                raise ApplyError("check", f"{name} exited with {status}", output=output, config_hash=cfg.hash)
        else:
            await synced
        if superseded is not None and superseded():
            return target, False
        _install(staged, target, cfg.hash)
    finally:
        _remove(staged)
    return target, True


async def _runtime_first(runtime: Callable[[], Awaitable[object]]) -> str:
    """Run the runtime step; ``""`` when it worked, else why (the caller reloads instead)."""
    try:
        await runtime()
    except ProxyError as exc:
        return str(exc) or type(exc).__name__
    return ""


async def _revert(error: ApplyError, reload: Command | SignalReload, target: Path, timeout: float) -> None:
    """Reload the installed (old) file after runtime changes from a config that was not installed."""
    try:
        error.reloaded = await _reload(reload, target, timeout)
    except (ApplyError, OSError) as exc:
        log.error("could not reload %s to undo the runtime changes: %s", target, exc)
        error.args = (f"{error}; the runtime changes could not be undone by a reload ({exc})",)
        return
    error.args = (f"{error}; the proxy was reloaded from the installed config, undoing its runtime changes",)


def _stage(target: Path, cfg: PublishedConfig) -> tuple[Path, Path]:
    """Write the body beside the target (same filesystem, so the rename is atomic)."""
    target = target.absolute()
    staged = target.parent / f"{STAGED_PREFIX}{cfg.hash[:16]}"
    try:
        if not target.parent.is_dir():
            make_dir(target.parent, SHARED_DIR_MODE)
        _write_staged(staged, cfg.body)
    except OSError as exc:
        _remove(staged)
        raise ApplyError(
            "stage", f"cannot write {staged}: {exc.strerror or exc}", config_hash=cfg.hash
        ) from None
    return target, staged


def _install(staged: Path, target: Path, digest: str) -> None:
    try:
        os.replace(staged, target)
    except OSError as exc:
        raise ApplyError(
            "install", f"cannot rename over {target}: {exc.strerror or exc}", config_hash=digest
        ) from None


async def _sync_rename(target: Path) -> None:
    """Make the rename durable (fsync the directory) once the proxy has reloaded: the file's content
    was already on disk before the rename, so this only decides which complete config a crash leaves,
    and it need not delay the reload."""
    try:
        await asyncio.to_thread(_fsync_dir, target.parent)
    except OSError as exc:
        log.warning("cannot fsync %s after installing %s: %s", target.parent, target.name, exc)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def initial_config(proxy: str, kind: Kind, listen: str | int, paths: RenderPaths) -> str:
    """A valid config with no routes (every request 404s), to start a proxy before the first publish."""
    spec = ProxySpec.model_validate({"kind": kind, "listen": listen})
    return render(proxy, spec, {}, paths=paths).text


def prepare_runtime_dir(paths: RenderPaths) -> Path:
    """Create the runtime dir 0750 and its logs 0640 before the proxy opens them (nginx creates
    logs 0644). nginx workers started by root run as ``nobody``: the directory's group is then
    nobody's, so they can reach their temp dirs and nobody else can list it (the proxy root too, when
    this call creates it)."""
    runtime = Path(paths.runtime_dir)
    ours = [runtime] if runtime.parent.exists() else [runtime, runtime.parent]
    make_dir(runtime, SHARED_DIR_MODE)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError, OSError):
            for directory in ours:
                os.chown(directory, -1, pwd.getpwnam("nobody").pw_gid)
    for log_file in (paths.error_log, paths.access_log):
        touch(Path(log_file), CONFIG_MODE)
    return runtime


def proxy_command(kind: Kind, config: Path, paths: RenderPaths) -> list[str]:
    """The foreground command of a proxy: nginx ``daemon off`` / HAProxy master-worker ``-db``."""
    if kind == "nginx":
        return [
            find_binary("nginx"),
            "-e",
            "stderr",
            "-p",
            paths.runtime_dir,
            "-c",
            str(config),
            "-g",
            "daemon off;",
        ]
    return [find_binary("haproxy"), "-W", "-db", "-f", str(config)]


@dataclass
class ProxyProcess:
    """A proxy this process started. ``stop()`` ends exactly that process group, by its pid."""

    kind: Kind
    config: Path
    paths: RenderPaths
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        # SIGTERM: nginx's fast shutdown; HAProxy's master stops its workers and exits.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def _wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProxyError(f"proxy exited with status {proc.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise ProxyError(f"proxy did not listen on {host}:{port} within {timeout:g} s")


def start_proxy(
    kind: Kind,
    config: Path,
    paths: RenderPaths,
    *,
    listen: tuple[str, int] | None = None,
    log_file: Path | None = None,
    timeout: float = 10.0,
) -> ProxyProcess:
    """Start nginx or HAProxy in the foreground on ``config`` (which must exist and be valid).

    With ``listen`` (host, port), wait until it accepts connections.
    """
    prepare_runtime_dir(paths)
    log_path = log_file or Path(paths.runtime_dir) / f"{kind}.out"
    with open_log(log_path) as log:
        proc = subprocess.Popen(
            proxy_command(kind, config, paths),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            start_new_session=True,
        )
    running = ProxyProcess(kind, config, paths, proc)
    if listen is not None:
        try:
            _wait_listening(proc, listen[0], listen[1], timeout)
        except BaseException:
            running.stop()
            raise
    return running
