"""``fleetop run``: configuration, logging and signals around the manager.

Everything a deployment tunes is in :class:`RunConfig`, built once from flags and the environment the
ecosystem already uses (etcdctl's variables through :func:`fleetop.config.settings_from`,
``FLEETCTL_ENDPOINT`` for fleet, ``FLEETOP_*`` for the rest), so the rest of the runtime takes plain
values. Leader-election timings default to controller-runtime's (lease 15 s, renew deadline 10 s,
retry 2 s) and must keep ``retry < renew deadline < lease``: a leader that cannot renew must stop
acting before its lease can expire under it.

SIGTERM and SIGINT resign leadership at once (so a standby takes over within about a second) and then
shut the manager down; a second signal is ignored while the resignation is in flight. Logs are
human-readable lines by default, JSON lines with ``--log-format json``; settings are logged through
their ``describe()``, which never includes the password.

The units the operator writes run fleetop too (sidekicks, managed proxies and their agents), and
systemd finds a bare program name only in its own fixed PATH, so they name it by an absolute path:
``--fleetop-path`` / ``FLEETOP_PATH``, else the fleetop running this operator (:func:`own_fleetop`).
Installing fleetop at the same path on every machine is the deployment's part (README, ``manifests/``).

The bounds on one key's work are settings too (:class:`~fleetop.controller.services.limits.WorkLimits`: fleet
writes per pass, instances per service and in all; :class:`~fleetop.proxy.sandbox.RenderLimits`: a
custom template's render time and size), with defaults that protect a small cluster.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetop.config import DEFAULT_FLEET_ENDPOINT, EtcdSettings, fleet_endpoints_from, settings_from
from fleetop.controller.runtime.leader import LeaderTimings
from fleetop.controller.services.limits import WorkLimits
from fleetop.controller.unitfile import UnitSettings
from fleetop.errors import ConfigError, FleetopError, RenderError
from fleetop.proxy.render import DEFAULT_PROXY_ROOT, RenderPaths
from fleetop.proxy.sandbox import RenderLimits

log = logging.getLogger(__name__)

LogFormat = Literal["human", "json"]
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"


def own_fleetop(argv0: str | None = None, executable: str | None = None) -> str:
    """The absolute path of the ``fleetop`` program that runs this process; raises ConfigError.

    In order: ``argv[0]`` when it is the console script itself (``/opt/fleetop/bin/fleetop run``);
    the console script next to the interpreter (a virtualenv's ``bin/``: also right for ``python -m``
    and for an operator running inside another Python program, such as the tests); ``fleetop`` on this
    process's PATH. Symbolic links are kept, not resolved: a link such as ``/usr/local/bin/fleetop``
    is a stable name across upgrades, and the unit should keep naming it.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    candidates = []
    if os.path.basename(argv0) == "fleetop":
        candidates.append(argv0)
    if executable:
        candidates.append(os.path.join(os.path.dirname(executable), "fleetop"))
    candidates.append(shutil.which("fleetop") or "")
    for candidate in candidates:
        if candidate and _is_executable(candidate):
            return os.path.abspath(candidate)
    raise ConfigError(
        "cannot find the fleetop program to name in the units the operator writes;"
        " give its absolute path on the machines with --fleetop-path or FLEETOP_PATH"
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def fleetop_path_problem(path: str) -> str | None:
    """What is wrong with ``path`` on this machine (missing, not executable), or None. Not an error:
    the operator may run where the fleetop of the fleet machines is not, but the units it writes will
    fail with 203/EXEC on every machine that lacks it."""
    if not os.path.exists(path):
        return f"--fleetop-path {path} does not exist on this machine"
    if not _is_executable(path):
        return f"--fleetop-path {path} is not an executable file on this machine"
    return None


def default_identity() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, readable in ``etcdctl get /fleetop/leader``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunConfig:
    """Everything ``fleetop run`` needs. ``metrics_address`` None turns the health server off."""

    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    fleet_endpoint: str = DEFAULT_FLEET_ENDPOINT
    """One fleet endpoint or several, comma-separated (validated): the client fails over between them."""
    leader: LeaderTimings = field(default_factory=LeaderTimings)
    workers: int = 4
    metrics_address: str | None = DEFAULT_METRICS_ADDRESS
    log_format: LogFormat = "human"
    log_level: str = "INFO"
    identity: str = field(default_factory=default_identity)
    resync_period: float = 600.0
    fleet_poll_fast: float = 0.5
    fleet_poll_slow: float = 5.0
    event_ttl: int = 3600
    proxy_root: str = DEFAULT_PROXY_ROOT
    """Directory under which each managed proxy keeps its config and runtime files (``<root>/<proxy>``)."""
    fleetop_path: str = field(default_factory=own_fleetop)
    """Absolute path of fleetop on the machines, named by every unit the operator writes."""
    limits: WorkLimits = field(default_factory=WorkLimits)
    """Fleet writes per pass and the ceilings on instances."""
    render: RenderLimits = field(default_factory=RenderLimits)
    """Time and size limits of a custom proxy template's render."""

    restart_backoff: float = 10.0
    """First crash-loop back-off delay in seconds; the cap is 30 times it, the reset 60 times."""
    credentials: tuple[str, str, str] = ("", "", "")
    """Environment files of the sidekicks, proxy agents and proxy instances the operator writes
    (``--sidekick-credentials``, ``--agent-credentials``, ``--proxy-credentials``)."""

    def __post_init__(self) -> None:
        self.unit_settings  # noqa: B018 - refuse a path that cannot be written into a unit, at construction

    @property
    def unit_settings(self) -> UnitSettings:
        """What the units the operator writes take from this installation (fleetop's path, key root)."""
        try:
            return UnitSettings(self.fleetop_path, self.etcd.prefix, *self.credentials)
        except RenderError as exc:
            text = str(exc)
            flag = next(
                (f"--{kind}-credentials" for kind in ("sidekick", "agent", "proxy") if text.startswith(kind)),
                "--fleetop-path",
            )
            raise ConfigError(f"{flag}: {text}") from None

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> RunConfig:
        """Build from CLI ``flags`` (None means not given) over ``environ``; raises ConfigError."""

        def pick(name: str, variable: str, default: Any) -> Any:
            value = flags.get(name)
            if value is None or value == "":
                value = environ.get(variable) or default
            return value

        timings = LeaderTimings(
            lease_duration=_seconds(
                pick("lease_duration", "FLEETOP_LEASE_DURATION", 15.0), "--lease-duration"
            ),
            renew_deadline=_seconds(
                pick("renew_deadline", "FLEETOP_RENEW_DEADLINE", 10.0), "--renew-deadline"
            ),
            retry_period=_seconds(pick("retry_period", "FLEETOP_RETRY_PERIOD", 2.0), "--retry-period"),
        )
        timings.check()
        workers = int(pick("workers", "FLEETOP_WORKERS", 4))
        if not 1 <= workers <= 256:
            raise ConfigError(f"--workers: {workers} must be 1-256")
        log_format = str(pick("log_format", "FLEETOP_LOG_FORMAT", "human"))
        if log_format not in ("human", "json"):
            raise ConfigError(f"--log-format: {log_format!r} must be human or json")
        metrics = str(pick("metrics_address", "FLEETOP_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS))
        return cls(
            etcd=settings_from(flags, environ),
            fleet_endpoint=",".join(fleet_endpoints_from(flags, environ)),
            leader=timings,
            workers=workers,
            metrics_address=None if metrics.lower() in ("off", "none", "") else metrics,
            log_format="json" if log_format == "json" else "human",
            log_level=str(pick("log_level", "FLEETOP_LOG_LEVEL", "INFO")).upper(),
            identity=str(pick("identity", "FLEETOP_IDENTITY", "") or default_identity()),
            resync_period=_seconds(pick("resync_period", "FLEETOP_RESYNC_PERIOD", 600.0), "--resync-period"),
            proxy_root=_proxy_root(str(pick("proxy_root", "FLEETOP_PROXY_ROOT", DEFAULT_PROXY_ROOT))),
            fleetop_path=str(pick("fleetop_path", "FLEETOP_PATH", "") or own_fleetop()),
            limits=_limits(pick),
            render=RenderLimits(
                timeout=_seconds(pick("render_timeout", "FLEETOP_RENDER_TIMEOUT", 5.0), "--render-timeout"),
                max_bytes=_count(
                    pick("render_max_bytes", "FLEETOP_RENDER_MAX_BYTES", 8 << 20),
                    "--render-max-bytes",
                    1024,
                    1 << 30,
                ),
            ),
            restart_backoff=_seconds(
                pick("restart_backoff", "FLEETOP_RESTART_BACKOFF", 10.0), "--restart-backoff"
            ),
            credentials=(
                str(pick("sidekick_credentials", "FLEETOP_SIDEKICK_CREDENTIALS", "")),
                str(pick("agent_credentials", "FLEETOP_AGENT_CREDENTIALS", "")),
                str(pick("proxy_credentials", "FLEETOP_PROXY_CREDENTIALS", "")),
            ),
        )


def _limits(pick: Callable[[str, str, Any], Any]) -> WorkLimits:
    defaults = WorkLimits()
    per_service = _count(
        pick(
            "max_instances_per_service",
            "FLEETOP_MAX_INSTANCES_PER_SERVICE",
            defaults.max_instances_per_service,
        ),
        "--max-instances-per-service",
        1,
        10000,
    )
    return WorkLimits(
        batch_size=_count(
            pick("batch_size", "FLEETOP_BATCH_SIZE", defaults.batch_size), "--batch-size", 1, 10000
        ),
        max_instances_per_service=per_service,
        max_instances=_count(
            pick("max_instances", "FLEETOP_MAX_INSTANCES", defaults.max_instances),
            "--max-instances",
            1,
            10**6,
        ),
    )


def _count(value: Any, source: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{source}: {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ConfigError(f"{source}: {number} must be {low}-{high}")
    return number


def _proxy_root(value: str) -> str:
    """The root must be a path that may be printed into proxy configs (see ``RenderPaths``)."""
    try:
        return RenderPaths(value.rstrip("/") or "/").runtime_dir
    except RenderError as exc:
        raise ConfigError(f"--proxy-root: {exc}") from None


def _seconds(value: Any, source: str) -> float:
    try:
        seconds = float(str(value).strip().removesuffix("s"))
    except ValueError:
        raise ConfigError(f"{source}: {value!r} is not a number of seconds") from None
    if not 0 < seconds <= 86400:
        raise ConfigError(f"{source}: {value!r} must be between 0 and 1 day")
    return seconds


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup_logging(log_format: LogFormat, level: str = "INFO") -> None:
    """Configure the root logger for a ``fleetop run`` process (stderr, one line per record)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn", "uvicorn.error", "httpx", "httpcore", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a task group's failure: the first FleetopError, else the first leaf."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return next((e for e in leaves if isinstance(e, FleetopError)), leaves[0] if leaves else group)


async def run_operator(config: RunConfig, *, handle_signals: bool = True) -> None:
    """Run the operator until cancelled or until SIGTERM/SIGINT (which resign leadership first)."""
    from fleetop.controller.runtime.manager import Manager

    config.leader.check()
    log.info(
        "fleetop run: identity %s, %s, fleet %s, %d workers",
        config.identity,
        config.etcd.describe(),
        config.fleet_endpoint,
        config.workers,
    )
    problem = fleetop_path_problem(config.fleetop_path)
    if problem is not None:
        log.warning("%s: units that run fleetop fail with 203/EXEC on machines without it", problem)
    else:
        log.info("units run %s", config.fleetop_path)
    manager = Manager(config)
    # the start-up heap (modules, models, templates) lives as long as the process: keep it out of the
    # collector, whose full passes over it took 40-100 ms on a busy machine, in the middle of a render
    gc.freeze()
    loop = asyncio.get_running_loop()
    stopping = False

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        log.info("received %s: resigning and shutting down", signal.Signals(signum).name)
        manager.request_stop()

    installed: list[int] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
                installed.append(int(sig))
            except (NotImplementedError, RuntimeError):  # not the main thread
                break
    try:
        await manager.run()
    except BaseExceptionGroup as group:
        raise _first_error(group) from group
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("fleetop run: stopped")
