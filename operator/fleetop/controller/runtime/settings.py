"""``fleetop run``'s settings: small frozen groups, each field with its default and its meaning.

Everything a deployment tunes is here, built once by :meth:`OperatorSettings.from_flags` through the
project's one lookup (:class:`fleetop.config.Lookup`: the flag, else the environment variable the
ecosystem already uses: etcdctl's for etcd, ``FLEETCTL_ENDPOINT`` for fleet, ``FLEETOP_*`` for the
rest), so the rest of the runtime takes plain values. Every error names where the bad value came from:
``--lease-duration: 'soon' is not a number of seconds`` or ``FLEETOP_LEASE_DURATION: ...``.

The groups (kopf's ``OperatorSettings`` has the same shape):

* :class:`~fleetop.controller.runtime.leader.LeaderTimings` (``leader``): lease, renew deadline,
  retry. Defaults are controller-runtime's and must keep ``retry < renew deadline < lease TTL`` (the
  etcd lease's TTL, lease duration less the retry period): a leader that cannot renew must stop acting
  before its lease can expire under it;
* :class:`FleetSettings` (``fleet``): where fleet is and how often it is polled (it has no watch);
* :class:`WorkerSettings` (``workers``): reconcile workers, the full resync, events, crash loops;
* :class:`WorkLimits` (``limits``): the bounds on one key's work (fleet writes per pass, instances);
* :class:`ProxySettings` (``proxies``): where managed proxies keep their files, a custom template's
  render limits;
* :class:`InstallSettings` (``install``): what the units the operator writes take from this
  installation: fleetop's path on the machines and each unit kind's etcd credentials;
* :class:`MetricsSettings` (``metrics``) and :class:`LogSettings` (``logging``).

The units the operator writes run fleetop too (sidekicks, managed proxies and their agents), and
systemd finds a bare program name only in its own fixed PATH, so they name it by an absolute path:
``--fleetop-path`` / ``FLEETOP_PATH``, else the fleetop running this operator (:func:`own_fleetop`).
Installing fleetop at the same path on every machine is the deployment's part (README, ``manifests/``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fleetop.config import DEFAULT_FLEET_ENDPOINT, EtcdSettings, Lookup, fleet_endpoints_from, settings_from
from fleetop.controller.runtime.health import parse_address
from fleetop.controller.runtime.leader import LeaderTimings
from fleetop.controller.unitfile import UnitSettings, program_path_problem
from fleetop.errors import ConfigError, RenderError
from fleetop.proxy.render import DEFAULT_PROXY_ROOT, RenderPaths
from fleetop.proxy.sandbox import RenderLimits

T = TypeVar("T")
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
class FleetSettings:
    """Where fleet is and how often the operator polls it (fleet has no watch)."""

    endpoint: str = DEFAULT_FLEET_ENDPOINT
    """One fleet endpoint or several, comma-separated (validated): the client fails over between them
    (``--fleet-endpoint``, ``FLEETCTL_ENDPOINT``)."""
    poll_fast: float = 0.5
    """Seconds between polls while something converges (after a pass acted, or one has not converged)."""
    poll_slow: float = 5.0
    """Seconds between polls when the cluster is steady."""


@dataclass(frozen=True)
class WorkerSettings:
    """How the leader works through the queue."""

    count: int = 4
    """Concurrent reconciles, 1-256 (``--workers``); one key is never reconciled by two at once."""
    resync_period: float = 600.0
    """Seconds between full resyncs that queue every known key, a safety net: fleet polls and etcd
    watches already queue every change (``--resync-period``)."""
    event_ttl: int = 3600
    """Seconds an event the operator records is kept (the lease of its key)."""
    restart_backoff: float = 10.0
    """First crash-loop back-off delay in seconds; the cap is 30 times it, the reset 60 times
    (``--restart-backoff``)."""


@dataclass(frozen=True)
class WorkLimits:
    """The bounds on one key's work; every field is a ``fleetop run`` setting."""

    batch_size: int = 50
    """Fleet writes (create, destroy, desiredState) one pass of one key may make (``--batch-size``)."""
    max_instances_per_service: int = 1000
    """Instances one service may declare (``--max-instances-per-service``)."""
    max_instances: int = 5000
    """Instances all services may declare together (``--max-instances``)."""


DEFAULT_LIMITS = WorkLimits()


@dataclass(frozen=True)
class ProxySettings:
    """Managed proxies: where their files live on the machines, and a custom template's limits."""

    root: str = DEFAULT_PROXY_ROOT
    """Directory under which each managed proxy keeps its config and runtime files, ``<root>/<proxy>``
    (``--proxy-root``); a path that may be printed into proxy configs."""
    render: RenderLimits = field(default_factory=RenderLimits)
    """Time and size limits of a custom proxy template's render (``--render-timeout``,
    ``--render-max-bytes``)."""


@dataclass(frozen=True)
class InstallSettings:
    """What the units the operator writes take from this installation rather than from a spec."""

    fleetop_path: str = field(default_factory=own_fleetop)
    """Absolute path of fleetop on the machines, named by every unit the operator writes
    (``--fleetop-path``, ``FLEETOP_PATH``)."""
    sidekick_credentials: str = ""
    """Environment file (mode 0600) with the etcd credentials of the sidekicks the operator writes
    (``--sidekick-credentials``); empty: the shared environment files only."""
    agent_credentials: str = ""
    """The same for managed proxies' agents (``--agent-credentials``)."""
    proxy_credentials: str = ""
    """The same for managed proxy instances (``--proxy-credentials``; empty: the agents' file)."""


@dataclass(frozen=True)
class MetricsSettings:
    """The health server: ``/healthz``, ``/readyz`` and ``/metrics``."""

    address: str | None = DEFAULT_METRICS_ADDRESS
    """``host:port`` it listens on (``--metrics-address``); None (``off``) turns it off."""


@dataclass(frozen=True)
class LogSettings:
    """The process's log lines on stderr."""

    format: LogFormat = "human"
    """``human`` (one readable line per record) or ``json`` (one JSON object per line)."""
    level: str = "INFO"
    """The root logger's level (``DEBUG``, ``INFO``, ``WARNING``...)."""


@dataclass(frozen=True)
class OperatorSettings:
    """Everything ``fleetop run`` needs, grouped. Build it with :meth:`from_flags`, or by hand in tests
    (every group has defaults)."""

    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    """How to reach etcd and the installation's key root (:func:`fleetop.config.settings_from`)."""
    identity: str = field(default_factory=default_identity)
    """This process in the leader key (``--identity``; default ``<hostname>-<pid>-<random>``)."""
    leader: LeaderTimings = field(default_factory=LeaderTimings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    limits: WorkLimits = field(default_factory=WorkLimits)
    proxies: ProxySettings = field(default_factory=ProxySettings)
    install: InstallSettings = field(default_factory=InstallSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LogSettings = field(default_factory=LogSettings)

    def __post_init__(self) -> None:
        self.unit_settings  # noqa: B018 - refuse a path that cannot be written into a unit, at construction

    @property
    def unit_settings(self) -> UnitSettings:
        """What the units the operator writes take from this installation (fleetop's path, key root)."""
        install = self.install
        try:
            return UnitSettings(
                install.fleetop_path,
                self.etcd.prefix,
                install.sidekick_credentials,
                install.agent_credentials,
                install.proxy_credentials,
            )
        except RenderError as exc:
            text = str(exc)
            flag = next(
                (f"--{kind}-credentials" for kind in ("sidekick", "agent", "proxy") if text.startswith(kind)),
                "--fleetop-path",
            )
            raise ConfigError(f"{flag}: {text}") from None

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> OperatorSettings:
        """Build from CLI ``flags`` (None or "" means not given) over ``environ``; raises ConfigError
        naming the flag or variable at fault."""
        read = _Reader(Lookup(flags, environ))
        leader = LeaderTimings(
            lease_duration=read("lease_duration", "FLEETOP_LEASE_DURATION", seconds, 15.0),
            renew_deadline=read("renew_deadline", "FLEETOP_RENEW_DEADLINE", seconds, 10.0),
            retry_period=read("retry_period", "FLEETOP_RETRY_PERIOD", seconds, 2.0),
        )
        leader.check()
        address: str | None = DEFAULT_METRICS_ADDRESS
        return cls(
            etcd=settings_from(flags, environ),
            identity=read("identity", "FLEETOP_IDENTITY", _text, "") or default_identity(),
            leader=leader,
            fleet=FleetSettings(endpoint=",".join(fleet_endpoints_from(flags, environ))),
            workers=WorkerSettings(
                count=read("workers", "FLEETOP_WORKERS", count(1, 256), 4),
                resync_period=read("resync_period", "FLEETOP_RESYNC_PERIOD", seconds, 600.0),
                restart_backoff=read("restart_backoff", "FLEETOP_RESTART_BACKOFF", seconds, 10.0),
            ),
            limits=_limits(read),
            proxies=_proxies(read),
            install=_install(read),
            metrics=MetricsSettings(
                read("metrics_address", "FLEETOP_METRICS_ADDRESS", metrics_address, address)
            ),
            logging=LogSettings(
                format=read("log_format", "FLEETOP_LOG_FORMAT", log_format, "human"),
                level=read("log_level", "FLEETOP_LOG_LEVEL", _text, "INFO").upper(),
            ),
        )


class _Reader:
    """One setting through the lookup: the flag, else the variable, parsed with its source named."""

    def __init__(self, look: Lookup) -> None:
        self.look = look

    def __call__(self, flag: str, variable: str, parse: Callable[[str, str], T], default: T) -> T:
        found = self.look.get(flag, variable)
        return default if found is None else parse(*found)


def _limits(read: _Reader) -> WorkLimits:
    default = DEFAULT_LIMITS
    return WorkLimits(
        batch_size=read("batch_size", "FLEETOP_BATCH_SIZE", count(1, 10000), default.batch_size),
        max_instances_per_service=read(
            "max_instances_per_service",
            "FLEETOP_MAX_INSTANCES_PER_SERVICE",
            count(1, 10000),
            default.max_instances_per_service,
        ),
        max_instances=read("max_instances", "FLEETOP_MAX_INSTANCES", count(1, 10**6), default.max_instances),
    )


def _proxies(read: _Reader) -> ProxySettings:
    default = RenderLimits()
    return ProxySettings(
        root=read("proxy_root", "FLEETOP_PROXY_ROOT", proxy_root, DEFAULT_PROXY_ROOT),
        render=RenderLimits(
            timeout=read("render_timeout", "FLEETOP_RENDER_TIMEOUT", seconds, default.timeout),
            max_bytes=read(
                "render_max_bytes", "FLEETOP_RENDER_MAX_BYTES", count(1024, 1 << 30), default.max_bytes
            ),
        ),
    )


def _install(read: _Reader) -> InstallSettings:
    def credentials(kind: str) -> str:
        parse = unit_path(f"{kind} credentials file")
        return read(f"{kind}_credentials", f"FLEETOP_{kind.upper()}_CREDENTIALS", parse, "")

    return InstallSettings(
        fleetop_path=read("fleetop_path", "FLEETOP_PATH", unit_path("fleetop path"), "") or own_fleetop(),
        sidekick_credentials=credentials("sidekick"),
        agent_credentials=credentials("agent"),
        proxy_credentials=credentials("proxy"),
    )


def _text(value: str, source: str) -> str:
    return value


def seconds(value: str, source: str) -> float:
    """``"2"``, ``"2.5"`` or ``"2s"`` → seconds, more than 0 and at most a day; errors name ``source``."""
    try:
        number = float(value.strip().removesuffix("s"))
    except ValueError:
        raise ConfigError(f"{source}: {value!r} is not a number of seconds") from None
    if not 0 < number <= 86400:
        raise ConfigError(f"{source}: {value!r} must be between 0 and 1 day")
    return number


def count(low: int, high: int) -> Callable[[str, str], int]:
    """A parser of whole numbers from ``low`` to ``high``; its ConfigError names the source."""

    def parse(value: str, source: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigError(f"{source}: {value!r} is not a whole number") from None
        if not low <= number <= high:
            raise ConfigError(f"{source}: {number} must be {low}-{high}")
        return number

    return parse


def unit_path(what: str) -> Callable[[str, str], str]:
    """A parser of a path the units name (fleetop's, a credentials file): absolute, and writable into
    a unit file (:func:`~fleetop.controller.unitfile.program_path_problem`)."""

    def parse(value: str, source: str) -> str:
        problem = program_path_problem(value)
        if problem is not None:
            raise ConfigError(f"{source}: {what} {value!r}: {problem}")
        return value

    return parse


def proxy_root(value: str, source: str) -> str:
    """The root must be a path that may be printed into proxy configs (see ``RenderPaths``)."""
    try:
        return RenderPaths(value.rstrip("/") or "/").runtime_dir
    except RenderError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def metrics_address(value: str, source: str) -> str | None:
    """``host:port``, or ``off``/``none`` for no health server."""
    if value.strip().lower() in ("off", "none", ""):
        return None
    try:
        parse_address(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return value


def log_format(value: str, source: str) -> LogFormat:
    if value == "json":
        return "json"
    if value == "human":
        return "human"
    raise ConfigError(f"{source}: {value!r} must be human or json")
