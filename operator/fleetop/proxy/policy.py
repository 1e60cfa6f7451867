"""What a proxy machine lets a published config make it do: the agent's local policy.

A ProxySpec may name a ``checkCmd``, a ``reloadCmd`` and a ``configPath``; the agent runs those
commands as its own user (root on most proxy machines) and writes the config body there. Whoever can
write ``/desired/proxies`` (or the operator's credential) must not be able to run anything, or write
anything anywhere, on every proxy machine. So, as confd keeps its commands in local files, the
machine decides: a local policy file (``/etc/fleetop/proxy-agent.yaml``, ``--policy FILE`` or
``FLEETOP_AGENT_POLICY``) lists the commands and the config directories it allows::

    commands:                                   # check and reload commands a spec may name
      - argv: [/usr/sbin/nginx, -t, -c, "{config}"]   # exactly this argv
      - prefix: [/usr/local/bin/reload-edge]          # this program with any arguments
      - argv: "/usr/sbin/nginx -s reload"             # a string is split like a shell would
    configDirs: [/etc/nginx]                    # where a spec's configPath may point

Always allowed: the built-in nginx and HAProxy check and reload (a spec that names no command), and
the agent's own runtime directory (``<proxy root>/<proxy>``, set by whoever wrote the agent's unit,
never by a spec) plus ``--allow-config-dir`` directories given on the agent's command line. Anything
else is refused before anything runs or is written: the agent reports why and the previous config
keeps serving. A command given as a shell string is matched as the ``/bin/sh -c`` argv it runs as, so a
shell command must be allowed by its exact text.

Paths are compared after resolving ``..`` and symlinks, so ``<root>/../../etc/cron.d`` is outside.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetop.errors import ConfigError, ProxyError
from fleetop.models.status import PublishedConfig
from fleetop.proxy.apply import CONFIG_TOKEN, ApplyError, Command, command_argv, pid_file_of
from fleetop.proxy.haproxy_runtime import admin_socket_of

DEFAULT_POLICY_FILE = "/etc/fleetop/proxy-agent.yaml"
POLICY_ENV = "FLEETOP_AGENT_POLICY"
_TEMPLATE = Path(CONFIG_TOKEN)


class PolicyRefused(ProxyError):
    """A published config asks for a command or a path this machine does not allow."""


@dataclass(frozen=True, slots=True)
class AllowedCommand:
    """One policy entry: an argv (with ``{config}`` standing for the config path), exact or a prefix."""

    argv: tuple[str, ...]
    prefix: bool = False

    def allows(self, argv: Sequence[str]) -> bool:
        if self.prefix:
            return tuple(argv[: len(self.argv)]) == self.argv
        return tuple(argv) == self.argv


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    """The commands and config directories this machine allows (``source`` names the file)."""

    commands: tuple[AllowedCommand, ...] = ()
    config_dirs: tuple[Path, ...] = ()
    source: str = "built-in defaults"

    def with_dirs(self, dirs: Iterable[Path]) -> AgentPolicy:
        """The same policy allowing ``dirs`` too (the agent's runtime dir, ``--allow-config-dir``)."""
        extra = tuple(_real(d) for d in dirs)
        return AgentPolicy(self.commands, self.config_dirs + extra, self.source)

    def command_problem(self, command: Command | None, what: str) -> str | None:
        """Why ``command`` may not run here, or None (None and ``[]`` mean built-in / skipped)."""
        if command is None:
            return None
        try:
            argv = command_argv(command, _TEMPLATE)
        except ApplyError as exc:
            return f"{what}: {exc}"
        if not argv or any(entry.allows(argv) for entry in self.commands):
            return None
        return f"{what} {argv!r} is not an allowed command"

    def path_problem(self, path: Path, what: str, resolved: dict[str, str] | None = None) -> str | None:
        """Why the agent may not write (or create) ``path``, or None when it lies in an allowed dir.
        ``resolved``: directories already resolved in this check (see :func:`_real`)."""
        real = _real(path, resolved)
        if any(real == d or d in real.parents for d in self.config_dirs):
            return None
        return f"{what} {str(path)!r} is outside the allowed config directories"

    def refusal(self, cfg: PublishedConfig, target: Path) -> str | None:
        """Everything wrong with applying ``cfg`` at ``target`` here, or None when it may be applied."""
        resolved: dict[str, str] = {}  # the config, pid file and socket usually share a directory
        problems = [
            self.command_problem(cfg.check_cmd, "checkCmd"),
            self.command_problem(cfg.reload_cmd, "reloadCmd"),
            self.path_problem(target, "configPath", resolved),
        ]
        pid_file = pid_file_of(cfg.kind, cfg.body)
        if pid_file is not None and cfg.reload_cmd is None:
            # the built-in reload signals the pid read from this file: it must be the proxy's own
            problems.append(self.path_problem(pid_file, "the pid file", resolved))
        socket = admin_socket_of(cfg.body) if cfg.kind == "haproxy" else None
        if socket is not None:
            # the agent changes servers over this socket: it must be the proxy's own too
            problems.append(self.path_problem(socket, "the admin socket", resolved))
        found = [p for p in problems if p]
        if not found:
            return None
        allowed = ", ".join(str(d) for d in self.config_dirs) or "none"
        return (
            f"refused by this machine's agent policy ({self.source}): {'; '.join(found)}"
            f" (allowed config directories: {allowed})"
        )


def _real(path: Path, resolved: dict[str, str] | None = None) -> Path:
    """``realpath(path)``. With ``resolved`` (directory → its realpath, filled here), a path whose
    last component is a plain name and no symlink is its directory's realpath joined with that name,
    which is what ``realpath`` gives, at one ``lstat`` when the directory was resolved before in the
    same check (``realpath`` costs one per component)."""
    text = os.fspath(path)
    head, name = os.path.split(text)
    if resolved is None or not head or name in ("", ".", "..") or os.path.islink(text):
        return Path(os.path.realpath(text))
    parent = resolved.get(head)
    if parent is None:
        parent = resolved[head] = os.path.realpath(head)
    return Path(os.path.join(parent, name))


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            return tuple(command_argv(value, _TEMPLATE))
        except ApplyError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: must be a command string or a non-empty list of strings")


def _command(entry: Any, where: str) -> AllowedCommand:
    if not isinstance(entry, dict) or len(entry) != 1 or not set(entry) <= {"argv", "prefix"}:
        raise ConfigError(
            f"{where}: must be {{argv: [...]}} (exact) or {{prefix: [...]}} (any arguments after)"
        )
    kind, value = next(iter(entry.items()))
    return AllowedCommand(_argv(value, f"{where}.{kind}"), prefix=kind == "prefix")


def parse_policy(document: Any, source: str) -> AgentPolicy:
    """An :class:`AgentPolicy` from a parsed YAML document; ConfigError naming the entry."""
    if document is None:
        return AgentPolicy(source=source)
    if not isinstance(document, dict) or not set(document) <= {"commands", "configDirs"}:
        raise ConfigError(f"{source}: must be a mapping with 'commands' and 'configDirs'")
    commands = document.get("commands") or []
    dirs = document.get("configDirs") or []
    if not isinstance(commands, list) or not isinstance(dirs, list):
        raise ConfigError(f"{source}: 'commands' and 'configDirs' must be lists")
    parsed = tuple(_command(entry, f"{source}: commands[{i}]") for i, entry in enumerate(commands))
    for i, directory in enumerate(dirs):
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise ConfigError(f"{source}: configDirs[{i}] must be an absolute path")
    return AgentPolicy(parsed, tuple(_real(Path(d)) for d in dirs), source)


def load_policy(path: Path | None = None, environ: dict[str, str] | None = None) -> AgentPolicy:
    """The machine's policy: ``path``, else ``FLEETOP_AGENT_POLICY``, else the default file.

    A file named explicitly must exist; the default file may be absent (built-ins only)."""
    env = os.environ if environ is None else environ
    named = path or (Path(env[POLICY_ENV]) if env.get(POLICY_ENV) else None)
    source = named or Path(DEFAULT_POLICY_FILE)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named is not None:
            raise ConfigError(f"agent policy {source} does not exist") from None
        return AgentPolicy(source=f"{source} (absent: built-in commands only)")
    except OSError as exc:
        raise ConfigError(f"cannot read agent policy {source}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"agent policy {source} is not valid YAML: {exc}") from None
    return parse_policy(document, str(source))
