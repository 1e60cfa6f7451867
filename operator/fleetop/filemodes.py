"""Files and directories that only their owner (and its group) should read.

Logs say which backends exist and why a config failed; environment files may hold an etcd password;
proxy roots hold configs and admin sockets. ``open()`` and ``mkdir()`` take their mode from the umask
(0644 / 0755 on most machines), so every place that creates such a file goes through these helpers,
which set the mode at creation and tighten a file or directory that already exists.

Documented modes: logs and secrets 0600, configs 0640, private directories 0700, shared ones 0750.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

LOG_MODE = 0o600
CONFIG_MODE = 0o640
PRIVATE_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o750


def make_dir(path: Path, mode: int = PRIVATE_DIR_MODE) -> Path:
    """Create ``path`` and the parents it lacks with ``mode``; tighten ``path`` if it exists.

    Only directories this call creates get ``mode`` among the parents: an existing ``/var/lib`` or
    ``/tmp`` is not ours to change."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created meanwhile
            directory.mkdir(mode=mode)
        os.chmod(directory, mode)
    if path.is_dir() and (path.stat().st_mode & 0o777) & ~mode:
        os.chmod(path, mode)
    return path


def open_log(path: Path, mode: int = LOG_MODE) -> IO[bytes]:
    """Open ``path`` for appending, created with ``mode`` (and tightened to it if it was wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        if (os.fstat(fd).st_mode & 0o777) & ~mode:
            os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def touch(path: Path, mode: int) -> None:
    """Create ``path`` empty with ``mode`` if absent, else tighten it (a log a proxy will open)."""
    open_log(path, mode).close()
