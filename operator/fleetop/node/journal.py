"""Per-unit journals for ``fleetop node``: what ``journalctl -u <unit>`` would show on a fleet machine.

Every Exec process of a unit writes its stdout and stderr into a pipe; ``pump`` turns that stream into
lines, and ``JournalFile`` appends each line in journald's short format
(``Nov 21 11:09:03 m1 python3[4242]: message``), next to the supervisor's own lifecycle messages
("Started ...", "Main process exited ..."). Files are plain text so ``tail`` and ``grep`` work on them.

Size is bounded simply: when a file would pass ``max_bytes`` it is renamed to ``<name>.1`` (replacing
the previous one) and a new file is started, so a unit keeps at most about two files' worth of output.
``tail`` reads both files; ``follow`` notices the rename and continues in the new file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
LINE_MAX = 48 * 1024  # journald's LineMax: longer lines are split
_BLOCK = 64 * 1024
log = logging.getLogger(__name__)


def rotated_path(path: Path) -> Path:
    """Where the previous generation of ``path`` lives."""
    return path.with_name(path.name + ".1")


def format_entry(when: float, host: str, ident: str, pid: int | None, message: str) -> str:
    """One journal line in journald's short output format, newline included."""
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(when))
    who = f"{ident}[{pid}]" if pid is not None else ident
    return f"{stamp} {host} {who}: {message}\n"


class JournalFile:
    """An append-only log file of one unit on one machine, rotated by size."""

    def __init__(
        self,
        path: Path,
        *,
        host: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.host = host
        self.max_bytes = max_bytes
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._size = 0

    def write(self, ident: str, pid: int | None, message: str) -> None:
        """Append ``message`` (one entry per line). Write errors are logged, never raised: a full disk
        must not stop a unit from being supervised."""
        now = self._clock()
        try:
            for line in message.split("\n"):
                self._append(format_entry(now, self.host, ident, pid, line).encode("utf-8", "replace"))
        except OSError as exc:
            log.warning("cannot write journal %s: %s", self.path, exc)

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across writes
            self._size = self._file.tell()
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._file.close()
            os.replace(self.path, rotated_path(self.path))
            self._file = open(self.path, "ab")  # noqa: SIM115
            self._size = 0
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").removesuffix("\r")


async def pump(reader: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    """Read a process's output until EOF and hand it to ``emit`` line by line. A line longer than
    ``LINE_MAX`` is split, and an unterminated last line is still emitted, as journald does."""
    pending = b""
    while chunk := await reader.read(_BLOCK):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            for start in range(0, max(len(line), 1), LINE_MAX):
                emit(_decode(line[start : start + LINE_MAX]))
        while len(pending) > LINE_MAX:
            emit(_decode(pending[:LINE_MAX]))
            pending = pending[LINE_MAX:]
    if pending:
        emit(_decode(pending))


async def pump_fd(fd: int, emit: Callable[[str], None]) -> None:
    """``pump`` for the read end of an ``os.pipe()``; closes ``fd`` when done. The supervisor hands
    processes a pipe of its own rather than asyncio's, because asyncio's ``Process.wait()`` (3.11)
    also waits for the pipes to close, which a leftover child holding stdout would delay forever."""
    pipe = os.fdopen(fd, "rb", buffering=0)
    reader = asyncio.StreamReader()
    try:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        raise
    try:
        await pump(reader, emit)
    finally:
        transport.close()


def _last_lines(path: Path, count: int, end: int | None = None) -> list[str]:
    """The last ``count`` complete lines of ``path`` (up to byte ``end``), read backwards by blocks."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            pos = handle.seek(0, os.SEEK_END) if end is None else end
            data = b""
            while pos > 0 and data.count(b"\n") <= count:
                step = min(_BLOCK, pos)
                pos -= step
                handle.seek(pos)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if pos > 0:
        lines = lines[1:]  # the first piece may be the tail of a longer line
    return [_decode(line) for line in lines[-count:]]


def tail(path: Path, count: int) -> list[str]:
    """``tail -n count`` across the rotated file and the current one (no trailing newlines)."""
    lines = _last_lines(path, count)
    if len(lines) < count:
        lines = _last_lines(rotated_path(path), count - len(lines)) + lines
    return lines


async def follow(path: Path, *, lines: int = 10, poll_interval: float = 0.2) -> AsyncIterator[str]:
    """``tail -n lines -f``: the last lines, then every new line as it is written, following a
    rotation. The file need not exist yet. Stop by breaking out of the loop (or ``aclose()``)."""
    handle: IO[bytes] | None = None
    try:
        handle, inode = _open_at_end(path)
        end = handle.tell() if handle is not None else 0
        for text in _last_lines(path, lines, end) if handle is not None else []:
            yield text
        pending = b""
        while True:
            rotated = _rotated(path, handle, inode)
            if handle is not None:
                pending += handle.read()
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield _decode(raw)
            if rotated:
                if handle is not None:
                    handle.close()
                handle, inode = _open_at_start(path)
                pending = b""
                continue
            await asyncio.sleep(poll_interval)
    finally:
        if handle is not None:
            handle.close()


def _open_at_end(path: Path) -> tuple[IO[bytes] | None, int]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - owned by the follow generator
    except FileNotFoundError:
        return None, -1
    handle.seek(0, os.SEEK_END)
    return handle, os.fstat(handle.fileno()).st_ino


def _open_at_start(path: Path) -> tuple[IO[bytes] | None, int]:
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None, -1
    return handle, os.fstat(handle.fileno()).st_ino


def _rotated(path: Path, handle: IO[bytes] | None, inode: int) -> bool:
    """True when ``path`` is now a different file than the one being read (or appeared)."""
    try:
        current = path.stat()
    except FileNotFoundError:
        return False
    if handle is None:
        return True
    return current.st_ino != inode or current.st_size < handle.tell()
