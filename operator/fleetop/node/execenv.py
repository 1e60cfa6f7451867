"""What a unit's Exec processes are given: the user they run as, their environment, working directory
and executable, on the modelled machine they belong to.

One node models several fleet machines, so a host path in a unit (``EnvironmentFile=/etc/environment``,
``WorkingDirectory=``) means that machine's file, found through ``MachineContext.path_map``. The
environment is built the way systemd builds it, and ``EnvironmentFile=`` is read again at every spawn.

The search path is systemd's fixed default (:data:`DEFAULT_PATH`), never the node's own: a unit that
names a program outside it by a bare name fails with 203/EXEC here as on a real machine, so the model
cannot hide a unit that only works where fleetop happens to be on PATH.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleetop.node.systemd import ServiceConfig
from fleetop.node.unitparse import parse_environment_file

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH systemd gives every unit (its compiled-in default for the system manager)."""


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
class RunUser:
    """``User=``, resolved; ``switch`` when it is not the user the node runs as."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    switch: bool


def resolve_user(name: str) -> RunUser | str:
    """User= as a ``RunUser``, or why it cannot be used here."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        return f"User={name}: no such user"
    switch = entry.pw_uid != os.geteuid()
    if switch and os.geteuid() != 0:
        return f"User={name}: fleetop node does not run as root, so it cannot run units as another user"
    return RunUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell, switch)


def exec_environment(
    base_env: Mapping[str, str],
    cfg: ServiceConfig,
    machine: MachineContext,
    user: RunUser | None,
    invocation: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """base_env, then what systemd sets, then Environment=, then EnvironmentFile= (read at every
    spawn, as systemd does), then per-command variables such as MAINPID."""
    env = dict(base_env)
    env["INVOCATION_ID"] = invocation
    if user is not None:
        env.update(USER=user.name, LOGNAME=user.name, HOME=user.home, SHELL=user.shell)
    env.update(cfg.environment)
    for ref in cfg.environment_files:
        try:
            text = machine.map_path(ref.path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if ref.optional:
                continue
            raise
        env.update(parse_environment_file(text))
    env.update(extra)
    return env


def working_directory(cfg: ServiceConfig, machine: MachineContext, user: RunUser | None) -> str | None:
    """The directory to start in: WorkingDirectory= on the machine (``~`` is the user's home), else
    the machine's root; None when it does not exist and is not optional."""
    root = machine.root
    if cfg.working_directory is None:
        root.mkdir(parents=True, exist_ok=True)
        return str(root)
    home = user.home if user is not None else os.path.expanduser("~")
    path = Path(home) if cfg.working_directory == "~" else machine.map_path(cfg.working_directory)
    if path.is_dir():
        return str(path)
    return str(root) if cfg.working_directory_optional and root.is_dir() else None


def find_executable(path: str, env: Mapping[str, str]) -> str | None:
    """An absolute path as it is, else looked up in the unit's own ``PATH``."""
    return path if path.startswith("/") else shutil.which(path, path=env.get("PATH", DEFAULT_PATH))
