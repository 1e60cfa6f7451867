"""Per-unit journals for ``fleetop node``: what ``journalctl -u <unit>`` would show on a fleet machine.

A unit's processes write their stdout and stderr straight into the unit's journal file: the file is
opened for append and its descriptor handed to every Exec process as fd 1 and 2, as systemd's
``StandardOutput=append:`` does. Nothing in the node reads a unit's output, so a node that is slow or
stopped never blocks a unit writing its logs (a pipe the node had to drain filled up within seconds
under load, and the unit stalled on its next log line). The supervisor's own lifecycle messages
("Started ...", "Main process exited ...") are appended to the same file in journald's short format
(``Nov 21 11:09:03 m1 fleetop-node[4242]: message``); a unit's output appears as it wrote it. Files
are plain text, mode 0600 in 0700 directories, so ``tail`` and ``grep`` work on them.

Size is bounded the way logrotate's ``copytruncate`` does it, because the units hold the file open:
when a file has passed ``max_bytes``, it is copied to ``<name>.1`` (replacing the previous copy) and
truncated in place, and every writer (O_APPEND) goes on at the new end. A unit keeps at most about two
files' worth of output; what a unit writes in the instant between the copy's last read and the
truncation is lost. The supervisor checks sizes every few seconds (``JournalFile.bound``), so a file
can pass the bound by what is written meanwhile, and by everything written while the node is stopped.
``tail`` reads both files; ``follow`` notices a rotation and reads the rest of ``<name>.1`` first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

from fleetop.filemodes import make_dir

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
FILE_MODE = 0o600
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


def open_append(path: Path) -> int:
    """Open (create) ``path`` for appending, mode 0600 in a 0700 directory; the descriptor is not
    inherited (a child gets it only as its stdout/stderr)."""
    make_dir(path.parent)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def copy_truncate(path: Path, fd: int) -> None:
    """Rotate ``path``, open as ``fd`` by its writers: copy it to ``<name>.1``, then truncate it.
    The copy is completed right before the truncation, so only what is written between those two
    system calls is lost."""
    target = rotated_path(path)
    temp = target.with_name(f".{target.name}.tmp")
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            _copy_rest(source, out)
            os.replace(temp, target)  # readers that see the truncation find this generation's copy
            _copy_rest(source, out)  # what came in meanwhile
            os.ftruncate(fd, 0)
        finally:
            os.close(out)
    finally:
        os.close(source)


def _copy_rest(source: int, out: int) -> None:
    while os.sendfile(out, source, None, 1 << 30):
        pass


class JournalFile:
    """The append-only journal file of one unit on one machine, rotated by size. ``fd()`` is the
    descriptor the unit's processes get as stdout and stderr; ``write`` adds the supervisor's lines."""

    def __init__(
        self,
        path: Path,
        *,
        host: str,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.host = host
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        self._clock = clock
        self._fd: int | None = None

    def fd(self) -> int:
        """The open descriptor (opened on first use). Raises OSError when the file cannot be opened."""
        if self._fd is None:
            self._fd = open_append(self.path)
        return self._fd

    def write(self, ident: str, pid: int | None, message: str) -> None:
        """Append ``message`` (one entry per line). Write errors are logged, never raised: a full disk
        must not stop a unit from being supervised."""
        now = self._clock()
        text = "".join(format_entry(now, self.host, ident, pid, line) for line in message.split("\n"))
        data = text.encode("utf-8", "replace")
        try:
            fd = self.fd()
            self.bound(len(data))
            if not _ends_a_line(self.path, os.fstat(fd).st_size):
                data = b"\n" + data  # a unit's unterminated last line stays its own
            os.write(fd, data)
        except OSError as exc:
            log.warning("cannot write journal %s: %s", self.path, exc)

    def bound(self, adding: int = 0) -> None:
        """Rotate when the file has passed ``max_bytes`` (or would, with ``adding`` more bytes).
        Errors are logged, never raised."""
        if self._fd is None:
            return
        try:
            size = os.fstat(self._fd).st_size
            if size > self.max_bytes or (size and size + adding > self.max_bytes):
                copy_truncate(self.path, self._fd)
        except OSError as exc:
            log.warning("cannot rotate journal %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _ends_a_line(path: Path, size: int) -> bool:
    """Whether the file is empty or its last byte (at ``size``) is a newline."""
    if size == 0:
        return True
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 1, size - 1) in (b"\n", b"")
    finally:
        os.close(fd)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").removesuffix("\r")


def read_from(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """The journal from byte ``offset`` on (at most the last ``limit`` bytes of it) and the offset to
    go on from. An offset past the end means the file was rotated since: the rest of that generation
    is read from ``<name>.1`` first. Raises FileNotFoundError when there is no journal."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        before = b""
        if offset > size:
            before, offset = _read_range(rotated_path(path), offset), 0
        offset = max(offset, size - limit)
        handle.seek(offset)
        data = handle.read(size - offset)
    return (before + data)[-limit:] if before else data, offset + len(data)


def _read_range(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


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
    """``tail -n lines -f``: the last lines, then every new line as it is written, across rotations
    (the rest of a rotated generation is read from its copy). The file need not exist yet. Stop by
    breaking out of the loop (or ``aclose()``)."""
    handle: IO[bytes] | None = None
    try:
        handle = _open(path)
        if handle is not None:
            handle.seek(0, os.SEEK_END)
            for text in _last_lines(path, lines, handle.tell()):
                yield text
        generation = _inode(rotated_path(path))
        pending = b""
        while True:
            rotated = _inode(rotated_path(path)) != generation or _shrunk(path, handle)
            if handle is not None:
                pending += _read_range(rotated_path(path), handle.tell()) if rotated else handle.read()
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield _decode(raw)
            if rotated:
                generation = _inode(rotated_path(path))
                if handle is not None:
                    handle.close()
                handle = _open(path)
                continue
            if handle is None and (handle := _open(path)) is not None:
                continue  # the file appeared: read it from its start
            await asyncio.sleep(poll_interval)
    finally:
        if handle is not None:
            handle.close()


def _open(path: Path) -> IO[bytes] | None:
    try:
        return open(path, "rb")  # owned by the follow generator
    except FileNotFoundError:
        return None


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


def _shrunk(path: Path, handle: IO[bytes] | None) -> bool:
    """True when ``path`` is now shorter than where ``handle`` reads (truncated), or another file."""
    if handle is None:
        return False
    try:
        current = path.stat()
    except FileNotFoundError:
        return False
    return current.st_ino != os.fstat(handle.fileno()).st_ino or current.st_size < handle.tell()
