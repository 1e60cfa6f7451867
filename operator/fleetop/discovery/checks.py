"""The health checks a registration sidekick runs against its instance: HTTP, TCP, or a command.

The articles' sidekick ran ``curl -f`` and trusted its exit code; these checks keep that contract
(healthy or not, plus a short reason for the log) while closing its gaps:

- every check has a timeout, so a hung instance counts as unhealthy instead of hanging the sidekick;
- a command runs without a shell (``shlex.split``), in its own process group that is killed on timeout
  or cancellation, so a stuck check never outlives its deadline or leaves children behind;
- no check at all means "healthy while the sidekick runs": the lease still removes the key when the
  sidekick dies, which is the low-TTL watchdog article 001 asks for.

Checks never raise for an unhealthy instance; they return a :class:`CheckResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from dataclasses import dataclass
from typing import Literal

from fleetop.errors import InputError
from fleetop.http import http_check

CheckKind = Literal["none", "http", "tcp", "exec"]

_DETAIL_LIMIT = 300
"""How much of a failing command's stderr goes into the detail (the tail, on one line)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: ``healthy`` and a short human reason (``HTTP 200``, ``exit 1: ...``)."""

    healthy: bool
    detail: str


def host_port_text(host: str, port: int) -> str:
    """``host:port`` as URLs and the registration value write it: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One configured check. Build it with :meth:`from_flags`, which validates the input."""

    kind: CheckKind = "none"
    path: str = "/"
    command: tuple[str, ...] = ()
    timeout: float = 2.0

    @classmethod
    def from_flags(
        cls, *, http: str | None = None, tcp: bool = False, exec_: str | None = None, timeout: float = 2.0
    ) -> HealthCheck:
        """The check that ``--http PATH`` / ``--tcp`` / ``--exec CMD`` ask for (at most one of them)."""
        given = {"--http": http is not None, "--tcp": tcp, "--exec": exec_ is not None}
        chosen = [name for name, on in given.items() if on]
        if len(chosen) > 1:
            raise InputError(f"choose one check, not {' and '.join(chosen)}")
        if not timeout > 0:
            raise InputError("the check timeout must be positive", where="--timeout")
        if http is not None:
            return cls("http", path=_valid_path(http), timeout=timeout)
        if tcp:
            return cls("tcp", timeout=timeout)
        if exec_ is not None:
            return cls("exec", command=_split_command(exec_), timeout=timeout)
        return cls("none", timeout=timeout)

    def describe(self) -> str:
        """For logs: ``http GET /healthz``, ``tcp connect``, ``exec pg_isready (+2 args)``, ``none``.

        A command's arguments are left out: they may carry a password.
        """
        if self.kind == "http":
            return f"http GET {self.path}"
        if self.kind == "tcp":
            return "tcp connect"
        if self.kind == "exec":
            more = len(self.command) - 1
            return f"exec {self.command[0]}" + (f" (+{more} args)" if more else "")
        return "none (healthy while running)"

    async def run(self, host: str, port: int) -> CheckResult:
        """Check the instance at ``host``/``port`` once, within ``timeout``."""
        if self.kind == "http":
            return await check_http(host, port, self.path, self.timeout)
        if self.kind == "tcp":
            return await check_tcp(host, port, self.timeout)
        if self.kind == "exec":
            return await check_exec(self.command, host, port, self.timeout)
        return CheckResult(True, "no check configured")


def _valid_path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
        raise InputError(f"{path!r} must be a URL path starting with '/', without spaces", where="--http")
    return path


def _split_command(command: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise InputError(f"cannot split {command!r}: {exc}", where="--exec") from exc
    if not argv:
        raise InputError("the command is empty", where="--exec")
    return argv


async def check_http(host: str, port: int, path: str, timeout: float) -> CheckResult:
    """GET ``http://host:port/path``; healthy on 2xx and 3xx (redirects are not followed)."""
    healthy, detail = await http_check(f"http://{host_port_text(host, port)}{path}", timeout)
    return CheckResult(healthy, detail)


async def check_tcp(host: str, port: int, timeout: float) -> CheckResult:
    """Healthy when a TCP connection to ``host:port`` opens within ``timeout`` (name lookup included)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return CheckResult(False, f"connect timed out after {timeout:g}s")
    except OSError as exc:
        return CheckResult(False, f"connect failed: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(True, "connected")


async def check_exec(argv: tuple[str, ...], host: str, port: int, timeout: float) -> CheckResult:
    """Run ``argv`` (no shell); healthy on exit 0. Its process group is killed on timeout or cancel.

    The command sees ``FLEETOP_ADDRESS`` (``host:port``), ``FLEETOP_HOST`` and ``FLEETOP_PORT``.
    """
    env = dict(os.environ)
    env.update(FLEETOP_ADDRESS=host_port_text(host, port), FLEETOP_HOST=host, FLEETOP_PORT=str(port))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return CheckResult(False, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await proc.communicate()
    except TimeoutError:
        return CheckResult(False, f"timed out after {timeout:g}s (killed)")
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            await proc.wait()
    returncode = proc.returncode
    if returncode == 0:
        return CheckResult(True, "exit 0")
    return CheckResult(False, _exit_detail(returncode or 0, stderr))


def _kill_group(pgid: int) -> None:
    """SIGKILL the check's process group (it is its own session leader, so the group is its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exit_detail(returncode: int, stderr: bytes) -> str:
    what = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    text = " ".join(stderr.decode("utf-8", errors="replace").split())
    if len(text) > _DETAIL_LIMIT:
        text = "..." + text[-_DETAIL_LIMIT:]
    return f"{what}: {text}" if text else what
