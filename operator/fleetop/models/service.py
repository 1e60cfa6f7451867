"""ServiceSpec: what should run, how many, where, how it is discovered and how it rolls out."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fleetop.models.base import Duration, StrictModel, check_line, check_name
from fleetop.models.networks import NetworkList

_META_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.@\-]+\.(service|socket|path|timer|target|mount)$")
_OPTION_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-]*$")
_SECTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-]*$")
_PERCENT_RE = re.compile(r"^(\d{1,3})%$")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9_.\-]+)+$")
_RESERVED_SECTIONS = {"X-Fleetop", "X-Fleet"}


class UnitOptionSpec(StrictModel):
    """An extra unit-file line passed through as is: ``[section] name=value``."""

    section: str
    name: str
    value: str = ""

    @field_validator("section")
    @classmethod
    def _section(cls, value: str) -> str:
        if not _SECTION_RE.match(value):
            raise ValueError(f"section {value!r} must be a word like 'Service' or 'Unit'")
        if value in _RESERVED_SECTIONS:
            raise ValueError(f"section [{value}] is written by fleetop (use 'placement' for [X-Fleet])")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _OPTION_KEY_RE.match(value):
            raise ValueError(f"option name {value!r} must be a word like 'TimeoutStartSec'")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return check_line(value, "option value")


class UnitSpec(StrictModel):
    """The ``[Unit]`` and ``[Service]`` lines of each instance. ``%i`` is the instance (the port)."""

    description: str = ""
    exec_start_pre: list[str] = Field(default_factory=list)
    exec_start: str = Field(min_length=1)
    exec_start_post: list[str] = Field(default_factory=list)
    exec_stop: list[str] = Field(default_factory=list)
    exec_stop_post: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    environment_file: list[str] = Field(default_factory=lambda: ["-/etc/environment"])
    restart: Literal["no", "on-failure", "always", "on-abnormal", "on-success"] = "on-failure"
    restart_sec: Duration = 1.0
    user: str | None = None
    options: list[UnitOptionSpec] = Field(default_factory=list)

    @field_validator("description", "exec_start", "user")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None:
            check_line(value, "value")
        return value

    @field_validator("exec_start_pre", "exec_start_post", "exec_stop", "exec_stop_post", "environment_file")
    @classmethod
    def _lines(cls, values: list[str]) -> list[str]:
        for value in values:
            check_line(value, "each command")
            if not value.strip():
                raise ValueError("a command must not be empty")
        return values

    @field_validator("environment")
    @classmethod
    def _env(cls, values: dict[str, str]) -> dict[str, str]:
        for key, value in values.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"environment variable name {key!r} is not valid")
            check_line(value, f"environment[{key}]")
        return values


class Ports(StrictModel):
    """Instances are numbered from ``base``: instance = port, as in ``apache@8001``."""

    base: int = Field(ge=1, le=65535)


class Placement(StrictModel):
    """Where instances may run; becomes fleet's ``[X-Fleet]`` section."""

    machine_metadata: dict[str, list[str]] = Field(default_factory=dict)
    spread: bool = False
    machine_of: str | None = None
    machine_id: str | None = None
    global_: bool = Field(default=False, alias="global")

    @field_validator("machine_metadata")
    @classmethod
    def _metadata(cls, values: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, options in values.items():
            if not _META_RE.match(key):
                raise ValueError(f"metadata key {key!r} must match [A-Za-z0-9_.-]+")
            if not options:
                raise ValueError(f"metadata key {key!r} needs at least one value")
            for option in options:
                if not _META_RE.match(option):
                    raise ValueError(f"metadata value {option!r} must match [A-Za-z0-9_.-]+")
        return values

    @field_validator("machine_of")
    @classmethod
    def _machine_of(cls, value: str | None) -> str | None:
        if value is not None and not _UNIT_NAME_RE.match(value):
            raise ValueError(f"machineOf {value!r} must be a unit name like 'db.service'")
        return value

    @field_validator("machine_id")
    @classmethod
    def _machine_id(cls, value: str | None) -> str | None:
        if value is not None and not _MACHINE_ID_RE.match(value):
            raise ValueError(
                f"machineId {value!r} must be 32 lowercase hex digits (fleetctl list-machines -l)"
            )
        return value

    @model_validator(mode="after")
    def _combinations(self) -> Placement:
        if self.global_ and (self.machine_of or self.machine_id):
            raise ValueError("global cannot be combined with machineOf or machineId (fleet rejects it)")
        if self.machine_id and (self.spread or self.machine_of):
            raise ValueError("machineId cannot be combined with spread or machineOf (fleet rejects it)")
        return self


class Check(StrictModel):
    """How a sidekick decides an instance is healthy: an HTTP path, a TCP connect, or a command."""

    http: str | None = None
    tcp: bool = False
    exec_: str | None = Field(default=None, alias="exec")
    interval: Duration = 10.0
    timeout: Duration = 2.0

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(c.isspace() for c in value)):
            raise ValueError("http must be a path starting with '/' and without spaces")
        return value

    @field_validator("exec_")
    @classmethod
    def _exec(cls, value: str | None) -> str | None:
        if value is not None:
            check_line(value, "exec")
            if not value.strip():
                raise ValueError("exec must not be empty")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        kinds = [
            k for k, on in (("http", self.http is not None), ("tcp", self.tcp), ("exec", self.exec_)) if on
        ]
        if len(kinds) > 1:
            raise ValueError(f"choose one check kind, not {' and '.join(kinds)}")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        return self


class Discovery(StrictModel):
    """Where instances register (``prefix``, default ``/services/<name>``) and who registers them."""

    prefix: str | None = None
    sidekick: bool = False
    check: Check = Field(default_factory=Check)
    ttl: Duration = 30.0
    allowed_networks: NetworkList | None = Field(
        default=None,
        description="CIDRs this service's registrations may be in, narrowing every proxy's"
        " allowedNetworks; registrations outside are skipped and reported. Default: no narrowing.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None:
            if not _PREFIX_RE.match(value.rstrip("/")) or ".." in value.split("/"):
                raise ValueError(f"prefix {value!r} must be an etcd key path like '/services/web'")
            return value.rstrip("/")
        return value

    @model_validator(mode="after")
    def _ttl(self) -> Discovery:
        if self.ttl < 1:
            raise ValueError("ttl must be at least 1s")
        if self.sidekick and self.check.interval >= self.ttl:
            raise ValueError(
                "check.interval must be shorter than ttl, or registrations expire between checks"
            )
        return self


IntOrPercent = int | str


def _check_int_or_percent(value: IntOrPercent, what: str) -> IntOrPercent:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a count or a percentage like '25%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} cannot be negative")
        return value
    match = _PERCENT_RE.match(value)
    if not match or int(match.group(1)) > 100:
        raise ValueError(f"{what} must be a count or a percentage like '25%'")
    return value


def resolve_int_or_percent(value: IntOrPercent, total: int, *, round_up: bool) -> int:
    """Kubernetes' rule: maxSurge rounds up, maxUnavailable rounds down."""
    if isinstance(value, int):
        return value
    percent = int(value[:-1])
    scaled = percent * total
    return -(-scaled // 100) if round_up else scaled // 100


class Rollout(StrictModel):
    """Deployment semantics for a changed unit: surge into free slots, replace in place, wait ready."""

    max_surge: IntOrPercent = 1
    max_unavailable: IntOrPercent = 0
    min_ready_seconds: int = Field(default=0, ge=0)
    progress_deadline_seconds: int = Field(default=600, ge=1)

    @field_validator("max_surge")
    @classmethod
    def _surge(cls, value: IntOrPercent) -> IntOrPercent:
        return _check_int_or_percent(value, "maxSurge")

    @field_validator("max_unavailable")
    @classmethod
    def _unavailable(cls, value: IntOrPercent) -> IntOrPercent:
        return _check_int_or_percent(value, "maxUnavailable")

    @model_validator(mode="after")
    def _not_both_zero(self) -> Rollout:
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError("maxSurge and maxUnavailable cannot both be 0: the rollout could never progress")
        return self


class ServiceSpec(StrictModel):
    """``/desired/services/<name>``: the desired state of one service."""

    name: str | None = None
    replicas: int = Field(default=1, ge=0, le=10000)
    unit: UnitSpec
    ports: Ports | None = None
    placement: Placement = Field(default_factory=Placement)
    discovery: Discovery = Field(default_factory=Discovery)
    rollout: Rollout = Field(default_factory=Rollout)
    paused: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return check_name(value) if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        if self.ports and self.ports.base + max(self.replicas, 1) - 1 > 65535:
            raise ValueError("ports.base + replicas - 1 must not exceed 65535")
        if self.discovery.sidekick and self.ports is None:
            raise ValueError(
                "discovery.sidekick needs ports.base: the sidekick registers host:port (port = instance)"
            )
        return self

    def registration_prefix(self, service: str) -> str:
        return self.discovery.prefix or f"/services/{service}"
