"""What fleetop writes back: ServiceStatus, ProxyStatus, agent reports and published proxy configs.

Status is observation, written by the operator only when it changed (a write on every pass would
re-trigger its own reconcile). Conditions follow the Kubernetes form.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from fleetop.models.base import StrictModel

ConditionType = Literal["Available", "Progressing", "Degraded", "Invalid", "Ready", "Published"]


class ObservedModel(StrictModel):
    """Status is written by fleetop, read by people and scripts: strict, but tolerant of new fields
    so an older CLI can read a newer operator's status."""

    model_config = ConfigDict(extra="ignore")


class Condition(ObservedModel):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


class ReplicaCounts(ObservedModel):
    desired: int = 0
    launched: int = 0
    running: int = 0
    ready: int = 0
    updated: int = 0


class UnitStatus(ObservedModel):
    """One unit the operator owns, as fleet reports it."""

    name: str
    role: str = "main"
    instance: str = ""
    machine: str | None = None
    desired_state: str = ""
    current_state: str | None = None
    load_state: str | None = None
    active_state: str | None = None
    sub_state: str | None = None
    template: str = ""
    ready: bool = False
    registered: bool = False
    restarts: int = 0


class RestartStatus(ObservedModel):
    """A unit in crash-loop back-off, or watched after one: how often it was created again, its last
    failure and when it may be tried again. A new leader continues the back-off from these."""

    unit: str
    instance: str = ""
    role: str = "main"
    phase: Literal["failed", "destroyed", "created"] = "failed"
    cause: Literal["failed", "unscheduled"] = "failed"
    restarts: int = 0
    last_failure: str = ""
    next_try: str = ""
    state: str = ""
    machine: str = ""
    ran: bool = False


class RollbackStatus(ObservedModel):
    """``rollout.autoRollback`` acted: ``toTemplate`` runs instead of the written spec's
    ``fromTemplate`` until the spec at ``generation`` is written again."""

    from_template: str
    to_template: str
    generation: int = 0
    time: str = ""


class AvailableTemplate(ObservedModel):
    """The last template that was fully available and the spec that renders it (kept with
    ``rollout.autoRollback`` only, so a new leader can still roll back)."""

    template: str
    spec: dict[str, Any] = Field(default_factory=dict)


class Backend(ObservedModel):
    """A registration that parsed: the etcd key it came from and the address it names."""

    key: str
    address: str


SPEC_HASH_DOC = (
    "sha256 (hex) of the spec judged valid at observedGeneration, in its stored normal form (compact JSON,"
    " defaults left out); empty when it was judged invalid"
)
"""``fleetop.models.parse.spec_hash``. A stored value whose JSON re-encodes to this digest is in the
normal form, so the CLI can show it without the models (``fleetop.cli.light``)."""


class ServiceStatus(ObservedModel):
    observed_generation: int = 0
    spec_hash: str = Field(default="", description=SPEC_HASH_DOC)
    observed_generation_time: str = ""
    """When the operator first reported on ``observed_generation`` (RFC 3339): the spec's last change
    as the operator saw it, a scale included, which moves no condition."""
    replicas: ReplicaCounts = Field(default_factory=ReplicaCounts)
    conditions: list[Condition] = Field(default_factory=list)
    units: list[UnitStatus] = Field(default_factory=list)
    backends: list[Backend] = Field(default_factory=list)
    invalid_registrations: int = 0
    template: str = ""
    restarts: list[RestartStatus] = Field(default_factory=list)
    rollback: RollbackStatus | None = None
    last_available: AvailableTemplate | None = None
    last_error: str | None = None

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


class AgentCount(ObservedModel):
    total: int = 0
    on_newest: int = 0


class ProxyStatus(ObservedModel):
    observed_generation: int = 0
    spec_hash: str = Field(default="", description=SPEC_HASH_DOC)
    config_hash: str = ""
    generation: int = 0
    backends: dict[str, int] = Field(default_factory=dict)
    skipped_registrations: int = 0
    """Registrations left out of the config: not an address, or an instance the operator does not run."""
    agents: AgentCount = Field(default_factory=AgentCount)
    conditions: list[Condition] = Field(default_factory=list)
    units: list[UnitStatus] = Field(default_factory=list)
    last_error: str | None = None

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


class AgentStatus(ObservedModel):
    """``/status/agents/<name>/<machine>``: what one proxy agent applied, or why it could not.

    ``applied_via`` says how the proxy took the applied config: ``runtime`` (HAProxy's servers changed
    through its admin socket, no reload) or ``reload``. ``reloads`` and ``runtime_applies`` count both
    since the agent started; ``runtime_fallbacks`` counts runtime attempts that failed and reloaded
    instead, and ``fallback_reason`` holds HAProxy's answer for the last one (None when the newest
    apply did not fall back)."""

    machine: str
    applied_hash: str = ""
    applied_generation: int = 0
    applied_at: str = ""
    applied_via: Literal["", "runtime", "reload"] = ""
    reloads: int = 0
    runtime_applies: int = 0
    runtime_fallbacks: int = 0
    fallback_reason: str | None = None
    error: str | None = None
    failed_hash: str = ""
    dropped_backends: list[str] = Field(default_factory=list)
    """Backend lines the agent took out of the applied config because its check failed on them."""
    servers_ahead: list[str] = Field(default_factory=list)
    """Backends whose servers the agent took from registrations newer than the published config (it
    follows them, see :class:`FollowedBackend`); empty once the operator has published them too."""
    followed_applies: int = 0
    """Configs applied ahead of the operator, from registrations it had not yet published."""


class FollowedBackend(ObservedModel):
    """A backend whose servers an agent may take from the registrations itself, by the operator's
    rules, instead of waiting for the operator to publish them (one etcd commit sooner): published
    with an HAProxy config whose servers change at runtime.

    ``revision``: the body holds this backend's servers as of every change under ``prefix`` up to this
    etcd revision; an agent that has seen at least as far renders the backend from what it has seen,
    one that has not keeps the published servers. ``launched``: the instances whose registrations
    count (a sidekick service's launched units), None when every instance does; ``networks``: CIDR
    lists an address must be inside, every one of them; ``block``: the values the built-in template's
    backend block reads besides the service."""

    service: str
    prefix: str
    revision: int
    launched: list[str] | None = None
    networks: list[list[str]] = Field(default_factory=list)
    block: dict[str, str | bool | None] = Field(default_factory=dict)

    def rule(self) -> tuple[object, ...]:
        """Everything but the revision: what, when it changes, makes a new config for the agents."""
        launched = tuple(self.launched) if self.launched is not None else None
        networks = tuple(tuple(cidrs) for cidrs in self.networks)
        return (self.service, self.prefix, launched, networks, tuple(sorted(self.block.items())))


class PublishedConfig(ObservedModel):
    """``/fleetop/proxies/<name>/config``: the rendered config an agent applies."""

    hash: str
    generation: int
    kind: Literal["nginx", "haproxy"]
    body: str
    check_cmd: list[str] | str | None = None
    reload_cmd: list[str] | str | None = None
    config_path: str | None = None
    follow: list[FollowedBackend] = Field(default_factory=list)
    """The backends an agent may follow itself (HAProxy's built-in template, servers at runtime)."""
