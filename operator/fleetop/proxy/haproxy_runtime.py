"""Change a running HAProxy's servers through its admin socket, without a reload.

HAProxy's runtime API is a line protocol on the ``stats socket`` the config declares (the built-in
template: a unix socket in the proxy's runtime directory, ``mode 600 level admin``). Only a unix
socket with ``level admin`` is used, never a TCP one: whoever can reach the socket can reconfigure
the proxy, and a file mode is the simplest way to say who can. One connection per line, the way
``socat`` sends them: HAProxy answers and closes, so an answer is everything read until EOF, and a
restarted HAProxy is simply reached on the next command. A line holds one command, except that a
new server's ``add server`` and ``enable server`` go on one line (``;``-separated, each checked on
its own), so a server takes requests after one round trip.

:class:`ServerRuntime` applies a planned change (:mod:`fleetop.proxy.haproxy_servers`) and owns the
servers being drained: a removed server goes into maintenance at once (no new requests; requests in
flight finish), and is deleted when ``del server`` accepts it (HAProxy refuses while it has
connections) or, after ``drain_timeout``, once its sessions are shut down. Every answer that is not
the expected one, and a ``show servers state`` that disagrees with the config after the commands,
raise :class:`RuntimeAPIError` with HAProxy's own words; the agent then reloads the installed file.

The commands of a change are planned against the servers the last verified ``show servers state``
reported for its backends, kept while the same worker answers (and without the servers deleted
once drained since), so a change costs its commands and one read (the verification) instead of two
reads around them: the read before is off the path from the published config to the first request. A
plan from that memory that HAProxy refuses, or whose result disagrees, is planned again from what
HAProxy reports then (someone else changed its servers, or it restarted without a pid file that
would have told); only a disagreement then is an error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from fleetop.errors import ProxyError
from fleetop.proxy.apply import children
from fleetop.proxy.haproxy_servers import (
    Command,
    LiveServer,
    Server,
    mismatch,
    parse_servers_state,
    plan_commands,
)

log = logging.getLogger(__name__)

_STATS_SOCKET_RE = re.compile(r"^\s*stats\s+socket\s+(/\S+)\s+(.*)$", re.MULTILINE)
_READ_SIZE = 1 << 16
MAX_ANSWER = 64 << 20
"""The longest answer read from the admin socket (``show servers state`` of 100,000 servers is about
15 MB); a longer one is an error, not memory spent without end."""
DRAIN_TIMEOUT = 60.0
WORKER_WAIT = 5.0
DELETED = "Server deleted."
GONE = "No such server."


class RuntimeAPIError(ProxyError):
    """A runtime command failed or HAProxy's state disagrees with the config; the message says which,
    with HAProxy's answer."""


class UnreachableError(RuntimeAPIError):
    """The admin socket did not answer (HAProxy stopped or restarting, or too slow)."""


def _single(command: str) -> None:
    if "\n" in command or ";" in command:
        raise RuntimeAPIError(f"refusing to send {command!r}: one command, no separators")


def admin_socket_of(body: str) -> Path | None:
    """The unix admin socket an HAProxy config declares (``stats socket /path ... level admin``)."""
    for match in _STATS_SOCKET_RE.finditer(body):
        if re.search(r"\blevel\s+admin\b", match.group(2)):
            return Path(match.group(1))
    return None


class RuntimeAPI:
    """Sends one command per connection to HAProxy's admin socket and returns the answer."""

    def __init__(self, path: Path, timeout: float = 5.0, max_answer: int = MAX_ANSWER) -> None:
        self.path = path
        self.timeout = timeout
        self.max_answer = max_answer

    async def send(self, command: str) -> str:
        """Send one command (no separators: nothing from a config can add a command)."""
        _single(command)
        return await self.send_line(command)

    async def send_line(self, line: str) -> str:
        """Send a line whose commands were checked (:meth:`send`, :meth:`run_chain`); the answer.

        On the loop's socket calls rather than a stream transport: a command is one short write and
        an answer read until EOF, and the transport's set-up and callbacks cost more loop turns than
        the round trip itself (the add of a new server waits for them)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, str(self.path))
                    await loop.sock_sendall(sock, line.encode("ascii") + b"\n")
                    answer = await _read_to_eof(loop, sock, self.max_answer, f"{line!r} to {self.path}")
        except TimeoutError:
            raise UnreachableError(
                f"{line!r}: no answer from {self.path} within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise UnreachableError(f"cannot reach HAProxy at {self.path}: {exc.strerror or exc}") from None
        return answer.decode("utf-8", errors="replace")

    async def run(self, command: Command) -> str:
        """Send ``command``; RuntimeAPIError unless HAProxy gave one of its success answers."""
        answer = await self.send(command.text)
        if not command.succeeded(answer):
            raise RuntimeAPIError(f"'{command.text}' was refused: {answer.strip() or '(no answer)'}")
        return answer

    async def run_chain(self, commands: Sequence[Command]) -> str:
        """Send ``commands`` as one line joined by ``;`` (HAProxy runs them in order, answering each):
        one round trip for all. Every command after the first answers nothing when it succeeds, so
        the answer must be the first one's success answer and nothing else."""
        if len(commands) == 1:
            return await self.run(commands[0])
        if any(command.ok != ("",) for command in commands[1:]):
            raise ValueError("only commands that answer nothing on success can be chained")
        for command in commands:
            _single(command.text)
        line = "; ".join(command.text for command in commands)
        answer = await self.send_line(line)
        said = [text.strip() for text in answer.splitlines() if text.strip()]
        if len(said) > 1 or not commands[0].succeeded(said[0] if said else ""):
            raise RuntimeAPIError(f"'{line}' was refused: {answer.strip() or '(no answer)'}")
        return answer

    async def servers(self, backend: str | None = None) -> dict[str, dict[str, LiveServer]]:
        """``show servers state``, of one backend or of all."""
        answer = await self.send("show servers state" + (f" {backend}" if backend else ""))
        try:
            return parse_servers_state(answer)
        except ValueError as exc:
            raise RuntimeAPIError(str(exc)) from None


async def _read_to_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket, limit: int, what: str) -> bytes:
    """Everything ``sock`` sends until HAProxy closes it (a ``show servers state`` of 10,000 servers
    is over a megabyte); RuntimeAPIError past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await loop.sock_recv(sock, _READ_SIZE):
        size += len(chunk)
        if size > limit:
            raise RuntimeAPIError(f"{what}: the answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def newest_worker(master: int) -> int | None:
    """The most recently started child of an HAProxy master (its current worker; older ones are
    finishing their connections after a reload); None when /proc cannot tell or it has none."""
    found: list[tuple[int, int]] = []
    for pid in children(master) or ():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        found.append((int(stat.rpartition(b")")[2].split()[19]), pid))  # field 22: start time
    return max(found)[1] if found else None


def _master_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


class ServerRuntime:
    """The servers of one running HAProxy: apply a desired set, drain and delete removed ones.

    ``apply`` and ``drain`` take turns (one lock), so a server being deleted is never the one a new
    config just made ready again. Right after a reload the old worker may still answer on the admin
    socket for a moment (the master stops it once the new one is ready), so with the master's
    ``pid_file`` an apply waits until ``show info`` names the newest worker: before it reads the
    servers, and after the commands of a change planned from memory (where the check is off the
    path to the first request; a newer worker found then is read and planned for again)."""

    def __init__(
        self, api: RuntimeAPI, *, pid_file: Path | None = None, drain_timeout: float = DRAIN_TIMEOUT
    ) -> None:
        self.api = api
        self.pid_file = pid_file
        self.drain_timeout = drain_timeout
        self._worker: int | None = None  # the newest worker last seen answering
        self._lock = asyncio.Lock()
        self.draining: dict[tuple[str, str], float] = {}  # (backend, server) → deadline (loop time)
        self.known: dict[str, dict[str, LiveServer]] = {}
        """Backend → its servers as the last verification saw them (and the commands since changed
        them), for the worker that answered then; what the next change is planned against."""

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def forget(self) -> None:
        """After a reload or restart: the new process holds only the file's servers."""
        self.draining.clear()
        self.known.clear()

    async def apply(self, desired: Mapping[str, Mapping[str, Server]]) -> int:
        """Make the backends named in ``desired`` hold exactly its servers, and verify them with
        ``show servers state``; the number of commands sent. Other backends are left alone."""
        async with self._lock:
            if not all(backend in self.known for backend in desired):
                await self._newest_worker_answers()
                return await self._apply(desired, await self._read(desired))
            try:
                sent = await self._apply(desired, {b: dict(self.known[b]) for b in desired})
            except UnreachableError:
                raise
            except RuntimeAPIError as exc:  # HAProxy holds something else than remembered
                log.info("runtime plan from the last verified state failed (%s): reading it again", exc)
                await self._newest_worker_answers()
                return await self._apply(desired, await self._read(desired))
            # Asked after the commands, off the path to the first request: a worker that took over since
            # the memory was verified (a reload by someone else) holds its file's servers, and one
            # that is stopping may have taken the commands; either way, plan again for the newest.
            if await self._newest_worker_answers():
                log.info("a new HAProxy worker answers: its servers are read and planned again")
                return await self._apply(desired, await self._read(desired))
            return sent

    async def _read(self, desired: Mapping[str, Mapping[str, Server]]) -> dict[str, dict[str, LiveServer]]:
        live: dict[str, dict[str, LiveServer]] = {}
        for backend in sorted(desired):
            live.update(await self.api.servers(backend))
        return live

    async def _apply(
        self, desired: Mapping[str, Mapping[str, Server]], live: Mapping[str, Mapping[str, LiveServer]]
    ) -> int:
        for backend in desired:
            self.known.pop(backend, None)  # unknown until verified again
        plan = plan_commands(desired, live)
        for chain in _chains(plan.commands):
            await self.api.run_chain(chain)
        deadline = self._now() + self.drain_timeout
        kept = {key: when for key, when in self.draining.items() if key[0] not in desired}
        self.draining = kept | {key: self.draining.get(key, deadline) for key in plan.drain}
        after = await self._read(desired)
        wrong = mismatch(desired, after, set(self.draining))
        if wrong:
            raise RuntimeAPIError(f"'show servers state' disagrees with the config: {wrong}")
        for backend in desired:
            self.known[backend] = after.get(backend, {})
        return len(plan.commands)

    async def _newest_worker_answers(self) -> bool:
        """Wait until the master's newest worker answers the admin socket; True when that is another
        worker than the one last seen (what was known of the servers is then forgotten)."""
        master = _master_pid(self.pid_file) if self.pid_file is not None else None
        if master is None:
            return False  # no pid file (not master-worker): one process answers
        deadline = self._now() + WORKER_WAIT
        while True:
            newest = newest_worker(master)
            if newest is None or newest == self._worker:
                return False
            answer = await self.api.send("show info")
            pid = next((line.split()[1] for line in answer.splitlines() if line.startswith("Pid:")), "")
            if pid == str(newest):
                self._worker = newest
                self.known.clear()  # a new worker holds the servers of its file
                return True
            if self._now() > deadline:
                raise RuntimeAPIError(
                    f"the admin socket is answered by pid {pid or '?'}, not the newest worker {newest}"
                )
            await asyncio.sleep(0.005)

    async def drain(self) -> None:
        """Delete the drained servers HAProxy lets go; past their deadline, shut their sessions
        first. A server already gone (HAProxy restarted or reloaded) is forgotten."""
        async with self._lock:
            for key, deadline in sorted(self.draining.items()):
                target = f"{key[0]}/{key[1]}"
                if self._now() >= deadline:
                    log.warning(
                        "%s still has connections after %g s: ending them", target, self.drain_timeout
                    )
                    await self.api.send(f"shutdown sessions server {target}")
                    self.draining[key] = self._now() + self.drain_timeout
                answer = (await self.api.send(f"del server {target}")).strip()
                if answer in (DELETED, GONE):
                    self.draining.pop(key, None)
                    self.known.get(key[0], {}).pop(key[1], None)
                    if answer == DELETED:
                        log.info("deleted drained server %s", target)


def _chains(commands: Sequence[Command]) -> list[list[Command]]:
    """The commands grouped into lines: a chained command joins the line of the one before it."""
    lines: list[list[Command]] = []
    for command in commands:
        if command.chained and lines:
            lines[-1].append(command)
        else:
            lines.append([command])
    return lines
