"""ServiceSpec: what should run, how many, where, how it is discovered and how it rolls out."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from fleetop.keys import is_key_path
from fleetop.models.base import Duration, StrictModel, check_line, check_name, duration_between, shown
from fleetop.models.networks import NetworkList

_META_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.@\-]+\.(service|socket|path|timer|target|mount)$")
_OPTION_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-]*$")
_SECTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-]*$")
_PERCENT_RE = re.compile(r"^(\d{1,3})%$")
_RESERVED_SECTIONS = {"X-Fleetop", "X-Fleet"}
RESERVED_PREFIXES = ("desired", "status", "fleetop")
"""First segments of fleetop's own keys: a registration prefix under them could overwrite specs,
status, events or published configs."""

# Bounds (README "Bounds"): generous for any real unit, small enough that one spec cannot flood a
# machine, a unit file or the operator.
COMMAND_CHARS = 4096
COMMANDS = 32
ENV_ENTRIES = 256
ENV_NAME_CHARS = 128
OPTIONS = 64
WORD_CHARS = 64
METADATA_ENTRIES = 32
META_CHARS = 253
PATH_CHARS = 1024
MAX_REPLICAS = 10000
MIN_CHECK_INTERVAL = 0.5
RestartSec = Annotated[Duration, *duration_between(0.0, 3600.0, "restartSec")]
CheckInterval = Annotated[Duration, *duration_between(MIN_CHECK_INTERVAL, 3600.0, "check.interval")]
CheckTimeout = Annotated[Duration, *duration_between(0.1, 60.0, "check.timeout")]
Ttl = Annotated[Duration, *duration_between(1.0, 86400.0, "ttl")]
Command = Annotated[str, Field(max_length=COMMAND_CHARS)]


class UnitOptionSpec(StrictModel):
    """An extra unit-file line passed through as is: ``[section] name=value``."""

    section: str = Field(max_length=WORD_CHARS)
    name: str = Field(max_length=WORD_CHARS)
    value: str = Field(default="", max_length=COMMAND_CHARS)

    @field_validator("section")
    @classmethod
    def _section(cls, value: str) -> str:
        if not _SECTION_RE.match(value):
            raise ValueError(f"section {shown(value)!r} must be a word like 'Service' or 'Unit'")
        if value in _RESERVED_SECTIONS:
            raise ValueError(f"section [{value}] is written by fleetop (use 'placement' for [X-Fleet])")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _OPTION_KEY_RE.match(value):
            raise ValueError(f"option name {shown(value)!r} must be a word like 'TimeoutStartSec'")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return check_line(value, "option value")


class UnitSpec(StrictModel):
    """The ``[Unit]`` and ``[Service]`` lines of each instance. ``%i`` is the instance (the port)."""

    description: str = Field(default="", max_length=PATH_CHARS)
    exec_start_pre: list[Command] = Field(default_factory=list, max_length=COMMANDS)
    exec_start: str = Field(min_length=1, max_length=COMMAND_CHARS)
    exec_start_post: list[Command] = Field(default_factory=list, max_length=COMMANDS)
    exec_stop: list[Command] = Field(default_factory=list, max_length=COMMANDS)
    exec_stop_post: list[Command] = Field(default_factory=list, max_length=COMMANDS)
    environment: dict[Annotated[str, Field(max_length=ENV_NAME_CHARS)], Command] = Field(
        default_factory=dict, max_length=ENV_ENTRIES
    )
    environment_file: list[Annotated[str, Field(max_length=PATH_CHARS)]] = Field(
        default_factory=lambda: ["-/etc/environment"], max_length=COMMANDS
    )
    restart: Literal["no", "on-failure", "always", "on-abnormal", "on-success"] = "on-failure"
    restart_sec: RestartSec = 1.0
    user: str | None = Field(default=None, max_length=WORD_CHARS)
    options: list[UnitOptionSpec] = Field(default_factory=list, max_length=OPTIONS)

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
                raise ValueError(f"environment variable name {shown(key)!r} is not valid")
            check_line(value, f"environment[{key}]")
        return values


class Ports(StrictModel):
    """Instances are numbered from ``base``: instance = port, as in ``apache@8001``."""

    base: int = Field(ge=1, le=65535)


class Placement(StrictModel):
    """Where instances may run; becomes fleet's ``[X-Fleet]`` section."""

    machine_metadata: dict[
        Annotated[str, Field(max_length=META_CHARS)],
        list[Annotated[str, Field(max_length=META_CHARS)]],
    ] = Field(default_factory=dict, max_length=METADATA_ENTRIES)
    spread: bool = False
    machine_of: str | None = Field(default=None, max_length=META_CHARS)
    machine_id: str | None = Field(default=None, max_length=32)
    global_: bool = Field(default=False, alias="global")

    @field_validator("machine_metadata")
    @classmethod
    def _metadata(cls, values: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, options in values.items():
            if not _META_RE.match(key):
                raise ValueError(f"metadata key {shown(key)!r} must match [A-Za-z0-9_.-]+")
            if not options:
                raise ValueError(f"metadata key {key!r} needs at least one value")
            if len(options) > METADATA_ENTRIES:
                raise ValueError(f"metadata key {key!r}: at most {METADATA_ENTRIES} values")
            for option in options:
                if not _META_RE.match(option):
                    raise ValueError(f"metadata value {shown(option)!r} must match [A-Za-z0-9_.-]+")
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

    http: str | None = Field(default=None, max_length=PATH_CHARS)
    tcp: bool = False
    exec_: str | None = Field(default=None, alias="exec", max_length=COMMAND_CHARS)
    interval: CheckInterval = 10.0
    timeout: CheckTimeout = 2.0

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
        return self


class Discovery(StrictModel):
    """Where instances register (``prefix``, default ``/services/<name>``) and who registers them."""

    prefix: str | None = Field(default=None, max_length=256)
    sidekick: bool = False
    check: Check = Field(default_factory=Check)
    ttl: Ttl = 30.0
    allowed_networks: NetworkList | None = Field(
        default=None,
        description="CIDRs this service's registrations may be in, narrowing every proxy's"
        " allowedNetworks; registrations outside are skipped and reported. Default: no narrowing.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None:
            if not is_key_path(value):
                raise ValueError(f"prefix {shown(value)!r} must be an etcd key path like '/services/web'")
            first = value.strip("/").split("/")[0]
            if first in RESERVED_PREFIXES:
                raise ValueError(
                    f"prefix {value!r} is inside fleetop's own keys (/{first}/...): registrations there"
                    " could overwrite specs, status or published configs"
                )
            return value.rstrip("/")
        return value

    @model_validator(mode="after")
    def _ttl(self) -> Discovery:
        if self.sidekick and self.ttl <= self.check.interval + self.check.timeout:
            raise ValueError(
                "ttl must be longer than check.interval + check.timeout, or a registration can expire"
                " between two checks"
            )
        return self


IntOrPercent = int | str
_INT_OR_PERCENT = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS},
            {"type": "string", "pattern": r"^\d{1,3}%$"},
        ],
        "description": f"a count (0-{MAX_REPLICAS}) or a percentage of replicas like '25%' (0-100%)",
    }
)


def _check_int_or_percent(value: IntOrPercent, what: str) -> IntOrPercent:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a count or a percentage like '25%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} cannot be negative")
        if value > MAX_REPLICAS:
            raise ValueError(f"{what} must be at most {MAX_REPLICAS} (the most replicas a service may have)")
        return value
    match = _PERCENT_RE.match(value)
    if not match or int(match.group(1)) > 100:
        raise ValueError(f"{what} must be a count or a percentage like '25%' (at most 100%)")
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

    max_surge: Annotated[IntOrPercent, _INT_OR_PERCENT] = 1
    max_unavailable: Annotated[IntOrPercent, _INT_OR_PERCENT] = 0
    min_ready_seconds: int = Field(default=0, ge=0, le=3600)
    progress_deadline_seconds: int = Field(default=600, ge=1, le=86400)
    auto_rollback: bool = False
    """A new template that crash-loops until the progress deadline is rolled back to the last
    template that was fully available; the stored spec is left as written."""

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
        if self.progress_deadline_seconds <= self.min_ready_seconds:
            raise ValueError(
                "progressDeadlineSeconds must be longer than minReadySeconds, or no rollout could finish"
                " in time"
            )
        return self


class ServiceSpec(StrictModel):
    """``/desired/services/<name>``: the desired state of one service."""

    name: str | None = None
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
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
