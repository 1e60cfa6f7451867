"""A unit's options as systemd reads them: a typed ``ServiceConfig``, or the reason it does not load.

``fleetop node`` runs units the way systemd would on a fleet machine, so a unit must mean here what it
means there: the same quoting and C escapes in Exec lines, the same ``-@:+!`` prefixes, specifiers
(%n %N %p %P %i %I %f %j %J %m %H %T %V %%), ``$VAR``/``${VAR}`` expansion, time spans and defaults
(TimeoutStartSec/TimeoutStopSec 90 s, oneshot without a start timeout, RestartSec 100 ms, start limit
5 starts per 10 s). Everything here is pure; the supervisor does the I/O. The lexical rules (words,
escapes, specifiers, expansion, time spans) are in ``fleetop.node.unitparse``; this module gives the
settings their meaning, and still offers those rules under their old names.

Where this differs from systemd, it is on purpose and small:

- A value systemd would warn about and ignore (a bad ``Restart=``, a bad Exec line) makes the unit fail
  to load (``bad-setting``) with a clear message instead, so a mistake is seen, not silently dropped.
  Unknown keys are still only warnings, as in systemd.
- ``Type=`` other than simple/oneshot (exec, forking, notify, dbus, idle) runs as simple: there is no
  readiness protocol here, so a forking daemon must be told to stay in the foreground.
- The ``+``, ``!`` and ``!!`` prefixes are accepted and have no effect (no sandboxing to lift); an
  unknown backslash escape is kept literally rather than rejecting the line.
- An executable without a slash is looked up in the unit's ``PATH`` (systemd uses a fixed path).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from fleetop.fleet.units import UnitOption, parse_unit_name
from fleetop.node.unitparse import (
    SettingError,
    SpecifierContext,
    expand_env_argv,
    expand_env_word,
    expand_specifiers,
    parse_bool,
    parse_environment,
    parse_environment_file,
    parse_signal,
    parse_timeout,
    parse_timespan,
    specifier_table,
    split_words,
    unescape_name,
)

__all__ = [
    "DEFAULT_RESTART_SEC",
    "DEFAULT_START_LIMIT_BURST",
    "DEFAULT_START_LIMIT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "EnvironmentFileRef",
    "ExecCommand",
    "KillMode",
    "LoadResult",
    "RestartPolicy",
    "ServiceConfig",
    "ServiceType",
    "SettingError",
    "SpecifierContext",
    "expand_env_argv",
    "expand_env_word",
    "expand_specifiers",
    "load_service",
    "parse_bool",
    "parse_environment",
    "parse_environment_file",
    "parse_exec",
    "parse_signal",
    "parse_timeout",
    "parse_timespan",
    "specifier_table",
    "split_words",
    "unescape_name",
]

DEFAULT_TIMEOUT = 90.0
DEFAULT_RESTART_SEC = 0.1
DEFAULT_START_LIMIT_INTERVAL = 10.0
DEFAULT_START_LIMIT_BURST = 5


class ServiceType(StrEnum):
    SIMPLE = "simple"
    ONESHOT = "oneshot"


class RestartPolicy(StrEnum):
    NO = "no"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_WATCHDOG = "on-watchdog"
    ON_ABORT = "on-abort"
    ALWAYS = "always"


class KillMode(StrEnum):
    CONTROL_GROUP = "control-group"
    PROCESS = "process"
    MIXED = "mixed"
    NONE = "none"


@dataclass(frozen=True)
class ExecCommand:
    """One command line: ``path`` is what to execute, ``argv`` what it sees (``argv[0]`` included)."""

    path: str
    argv: tuple[str, ...]
    ignore_failure: bool = False
    expand_env: bool = True

    def render(self, env: Mapping[str, str]) -> list[str]:
        """The argv to execute, with ``$VAR``/``${VAR}`` expanded from ``env`` (unless the ``:`` prefix)."""
        if not self.expand_env:
            return list(self.argv)
        return [self.argv[0], *expand_env_argv(self.argv[1:], env)]

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class EnvironmentFileRef:
    path: str
    optional: bool = False


@dataclass(frozen=True)
class ServiceConfig:
    """What systemd would hold for a loaded ``.service`` unit. Timeouts of None mean no timeout."""

    unit: str
    description: str = ""
    type: ServiceType = ServiceType.SIMPLE
    exec_start_pre: tuple[ExecCommand, ...] = ()
    exec_start: tuple[ExecCommand, ...] = ()
    exec_start_post: tuple[ExecCommand, ...] = ()
    exec_stop: tuple[ExecCommand, ...] = ()
    exec_stop_post: tuple[ExecCommand, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[EnvironmentFileRef, ...] = ()
    remain_after_exit: bool = False
    restart: RestartPolicy = RestartPolicy.NO
    restart_sec: float = DEFAULT_RESTART_SEC
    start_limit_interval: float = DEFAULT_START_LIMIT_INTERVAL
    start_limit_burst: int = DEFAULT_START_LIMIT_BURST
    timeout_start: float | None = DEFAULT_TIMEOUT
    timeout_stop: float | None = DEFAULT_TIMEOUT
    kill_mode: KillMode = KillMode.CONTROL_GROUP
    kill_signal: int = int(signal.SIGTERM)
    send_sigkill: bool = True
    success_exit_status: frozenset[int] = frozenset()
    success_signals: frozenset[int] = frozenset()
    working_directory: str | None = None
    working_directory_optional: bool = False
    user: str | None = None


@dataclass(frozen=True)
class LoadResult:
    """``config`` when the unit loads (``load_state`` "loaded"), else ``error`` says why."""

    load_state: str
    config: ServiceConfig | None = None
    error: str = ""
    warnings: tuple[str, ...] = field(default=())


def _parse_prefixed(first: str) -> tuple[str, set[str]]:
    flags: set[str] = set()
    while first:
        if first.startswith("!!"):
            flag, size = "!!", 2
        elif first[0] in "-@:+!":
            flag, size = first[0], 1
        else:
            break
        if flag in flags:
            raise SettingError(f"prefix {flag!r} given twice")
        flags.add(flag)
        first = first[size:]
    return first, flags


def parse_exec(value: str, table: Mapping[str, str] | None = None) -> list[ExecCommand]:
    """One ``Exec*=`` value: commands separated by a lone ``;``. Specifiers from ``table`` are expanded
    in each word after splitting, as systemd does (so ``%i`` never splits a word)."""
    commands: list[list[str]] = [[]]
    for word in split_words(value):
        if word == ";":
            commands.append([])
        else:
            literal = ";" if word == "\\;" else word
            commands[-1].append(expand_specifiers(literal, table) if table is not None else literal)
    out: list[ExecCommand] = []
    for cmd in commands:
        if not cmd:
            raise SettingError(f"empty command in {value!r}")
        path, flags = _parse_prefixed(cmd[0])
        args = cmd[1:]
        if "@" in flags:
            if not args:
                raise SettingError(f"'@' needs an argv[0] after the executable in {value!r}")
            argv0, args = args[0], args[1:]
        else:
            argv0 = path
        if not path or ("/" in path and not path.startswith("/")):
            raise SettingError(f"neither a valid executable name nor an absolute path: {path!r}")
        out.append(ExecCommand(path, (argv0, *args), "-" in flags, ":" not in flags))
    return out


_EXEC_KEYS = {
    "ExecStartPre": "exec_start_pre", "ExecStart": "exec_start", "ExecStartPost": "exec_start_post",
    "ExecStop": "exec_stop", "ExecStopPost": "exec_stop_post",
}  # fmt: skip
_LIMIT_KEYS = frozenset({"StartLimitIntervalSec", "StartLimitInterval", "StartLimitBurst"})
_OTHER_TYPES = frozenset({"exec", "forking", "notify", "notify-reload", "dbus", "idle"})


class _Builder:
    """Options applied in file order, as systemd does: later values win, an empty value resets a list."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self.table = table
        self.lists: dict[str, list[object]] = {key: [] for key in _EXEC_KEYS.values()}
        self.lists.update(environment=[], environment_files=[])
        self.values: dict[str, Any] = {}
        self.warnings: list[str] = []

    def apply(self, option: UnitOption) -> None:
        section, name = option.section, option.name
        if section == "Service" or (section == "Unit" and name in _LIMIT_KEYS):
            self._service(name, option.value)
        elif section == "Unit" and name == "Description":
            self.values["description"] = expand_specifiers(option.value, self.table)

    def _service(self, name: str, value: str) -> None:
        table = self.table
        if name in _EXEC_KEYS:
            self._reset_or_extend(_EXEC_KEYS[name], value, lambda v: parse_exec(v, table))
        elif name == "Environment":
            self._reset_or_extend("environment", value, lambda v: parse_environment(v, table))
        elif name == "EnvironmentFile":
            self._reset_or_extend("environment_files", value, lambda v: _env_file(v, table))
        elif name in _SETTERS:
            try:
                self.values.update(_SETTERS[name](expand_specifiers(value, table).strip(), self))
            except SettingError as exc:
                raise SettingError(f"{name}={value}: {exc}") from None
        else:
            self.warnings.append(f"Unknown key name '{name}' in section 'Service', ignoring.")

    def _reset_or_extend(self, key: str, value: str, parse: _Parser) -> None:
        if not value.strip():
            self.lists[key].clear()
            return
        try:
            self.lists[key].extend(parse(value))
        except SettingError as exc:
            raise SettingError(f"invalid {key} value {value!r}: {exc}") from None

    def finish(self, unit: str) -> ServiceConfig:
        values: dict[str, Any] = dict(self.values)
        for key, items in self.lists.items():
            values[key] = tuple(items)
        service_type = values.get("type", ServiceType.SIMPLE)
        if service_type == ServiceType.ONESHOT and "timeout_start" not in values:
            values["timeout_start"] = None
        config = _make_config(unit, values)
        _verify(config)
        return config


_Parser = Callable[[str], Sequence[object]]
_Setter = Callable[[str, _Builder], dict[str, object]]


def _env_file(value: str, table: Mapping[str, str]) -> list[EnvironmentFileRef]:
    value = expand_specifiers(value.strip(), table)
    optional = value.startswith("-")
    path = value.removeprefix("-").strip()
    if not path.startswith("/"):
        raise SettingError("path is not absolute")
    return [EnvironmentFileRef(path, optional)]


def _set_type(value: str, builder: _Builder) -> dict[str, object]:
    if value in _OTHER_TYPES:
        builder.warnings.append(f"Type={value} is run as Type=simple (no readiness protocol here).")
        return {"type": ServiceType.SIMPLE}
    try:
        return {"type": ServiceType(value)}
    except ValueError:
        raise SettingError("unknown service type") from None


def _set_enum(key: str, kind: type[StrEnum]) -> _Setter:
    def setter(value: str, _builder: _Builder) -> dict[str, object]:
        try:
            return {key: kind(value)}
        except ValueError:
            raise SettingError(f"expected one of {', '.join(m.value for m in kind)}") from None

    return setter


def _set_timeouts(*keys: str) -> _Setter:
    return lambda value, _b: dict.fromkeys(keys, parse_timeout(value))


def _set_restart_sec(value: str, _builder: _Builder) -> dict[str, object]:
    seconds = parse_timespan(value)
    if seconds is None:
        raise SettingError("must be finite")
    return {"restart_sec": seconds}


def _set_limit_interval(value: str, _builder: _Builder) -> dict[str, object]:
    seconds = parse_timespan(value)
    return {"start_limit_interval": 0.0 if seconds is None else seconds}


def _set_burst(value: str, _builder: _Builder) -> dict[str, object]:
    if not value.isdigit():
        raise SettingError("not a non-negative integer")
    return {"start_limit_burst": int(value)}


def _set_working_directory(value: str, _builder: _Builder) -> dict[str, object]:
    optional = value.startswith("-")
    path = value.removeprefix("-")
    if not path:
        return {"working_directory": None, "working_directory_optional": False}
    if not (path.startswith("/") or path == "~"):
        raise SettingError("path is not absolute")
    return {"working_directory": path, "working_directory_optional": optional}


def _set_success_status(value: str, _builder: _Builder) -> dict[str, object]:
    codes: set[int] = set()
    signals: set[int] = set()
    for word in value.split():
        if word.isdigit() and int(word) < 256:
            codes.add(int(word))
        else:
            signals.add(parse_signal(word))
    return {"success_exit_status": frozenset(codes), "success_signals": frozenset(signals)}


_SETTERS: dict[str, _Setter] = {
    "Type": _set_type,
    "Restart": _set_enum("restart", RestartPolicy),
    "KillMode": _set_enum("kill_mode", KillMode),
    "RemainAfterExit": lambda v, _b: {"remain_after_exit": parse_bool(v)},
    "SendSIGKILL": lambda v, _b: {"send_sigkill": parse_bool(v)},
    "KillSignal": lambda v, _b: {"kill_signal": parse_signal(v)},
    "RestartSec": _set_restart_sec,
    "TimeoutSec": _set_timeouts("timeout_start", "timeout_stop"),
    "TimeoutStartSec": _set_timeouts("timeout_start"),
    "TimeoutStopSec": _set_timeouts("timeout_stop"),
    "StartLimitIntervalSec": _set_limit_interval,
    "StartLimitInterval": _set_limit_interval,
    "StartLimitBurst": _set_burst,
    "WorkingDirectory": _set_working_directory,
    "User": lambda v, _b: {"user": v or None},
    "SuccessExitStatus": _set_success_status,
}


def _make_config(unit: str, values: dict[str, Any]) -> ServiceConfig:
    config = ServiceConfig(unit=unit)
    return replace(config, **values)


def _verify(config: ServiceConfig) -> None:
    """systemd's ``service_verify``: the checks that turn a unit into ``bad-setting``."""
    oneshot = config.type == ServiceType.ONESHOT
    if not config.exec_start and not config.exec_stop:
        raise SettingError("Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing.")
    if not config.exec_start and not oneshot:
        raise SettingError(
            "Service has no ExecStart= setting, which is only allowed for Type=oneshot services. Refusing."
        )
    if not config.exec_start and not config.remain_after_exit:
        raise SettingError(
            "Service has no ExecStart= and no SuccessAction= settings and does not have "
            "RemainAfterExit=yes set. Refusing."
        )
    if len(config.exec_start) > 1 and not oneshot:
        raise SettingError(
            "Service has more than one ExecStart= setting, which is only allowed for Type=oneshot "
            "services. Refusing."
        )
    if oneshot and config.restart in (RestartPolicy.ALWAYS, RestartPolicy.ON_SUCCESS):
        raise SettingError(
            "Service has Restart=always or Restart=on-success set, which isn't allowed for "
            "Type=oneshot services. Refusing."
        )


def load_service(unit: str, options: Sequence[UnitOption], ctx: SpecifierContext) -> LoadResult:
    """Turn a unit's options into a ``ServiceConfig``. Never raises: a unit that systemd would refuse
    (or that this engine cannot run) comes back as ``bad-setting`` with the reason in ``error``."""
    try:
        name = parse_unit_name(unit)
    except ValueError as exc:
        return LoadResult("bad-setting", error=f"{unit}: {exc}")
    if name.type != "service" or name.is_template:
        what = "a template" if name.is_template else f"a .{name.type} unit"
        return LoadResult("bad-setting", error=f"{unit}: {what} cannot be run here (only .service units)")
    builder = _Builder(specifier_table(ctx))
    try:
        for option in options:
            builder.apply(option)
        config = builder.finish(unit)
    except SettingError as exc:
        return LoadResult("bad-setting", error=f"{unit}: {exc}", warnings=tuple(builder.warnings))
    return LoadResult("loaded", config=config, warnings=tuple(builder.warnings))
