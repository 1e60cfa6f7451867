"""The proxy reconciler's decisions that need no I/O: backends, what to publish, and the status.

Kept apart from :mod:`fleetop.controller.proxies` so they are tested with plain values:

* backends: the registrations directly under each routed service's prefix, parsed strictly; a value
  that is not exactly an address is counted and reported, never rendered;
* the published hash: the sha256 of the rendered text, which is what agents compare. A spec's own
  ``checkCmd`` / ``reloadCmd`` / ``configPath`` travel with the config, so when one is set it is
  folded into the hash too: changing only a command is a new config for the agents to apply;
* the status: ``Published`` (a config for this spec is out), ``Available`` (at least one agent serves
  the newest config), ``Degraded`` (the render or an agent failed), each keeping its
  ``lastTransitionTime`` while its status stays, so a converged proxy gets a byte-identical status.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from fleetop.controller.conditions import rfc3339
from fleetop.discovery.addresses import InvalidRegistration, Registration, parse_registration
from fleetop.models.proxy import ProxySpec
from fleetop.models.status import (
    AgentCount,
    AgentStatus,
    Condition,
    ConditionType,
    ProxyStatus,
    PublishedConfig,
    UnitStatus,
)
from fleetop.proxy.published import PublishedFormatError
from fleetop.proxy.published import decode_published as decode_wire


@dataclass(frozen=True)
class BackendSet:
    """Parsed registrations per routed service, and the refused ones."""

    valid: dict[str, list[Registration]] = field(default_factory=dict)
    invalid: dict[str, list[InvalidRegistration]] = field(default_factory=dict)

    @property
    def invalid_count(self) -> int:
        return sum(len(v) for v in self.invalid.values())

    def fingerprint(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """What the render depends on, comparable between passes."""
        return tuple(
            (service, tuple(sorted(r.address for r in regs))) for service, regs in sorted(self.valid.items())
        )


def collect_backends(items: Mapping[str, tuple[str, Iterable[tuple[str, bytes]]]]) -> BackendSet:
    """``service -> (prefix, [(key, value)])`` → registrations of the keys directly under the prefix."""
    valid: dict[str, list[Registration]] = {}
    invalid: dict[str, list[InvalidRegistration]] = {}
    for service, (prefix, pairs) in sorted(items.items()):
        found, refused = valid.setdefault(service, []), []
        for key, value in sorted(pairs):
            instance = key[len(prefix) :] if key.startswith(prefix) else ""
            if not instance or "/" in instance:
                continue
            parsed = parse_registration(key, value)
            if isinstance(parsed, Registration):
                found.append(parsed)
            else:
                refused.append(parsed)
        if refused:
            invalid[service] = refused
    return BackendSet(valid, invalid)


def describe_invalid(backends: BackendSet) -> str:
    """One line for an event: how many were refused, and the first few reasons."""
    shown = [f"{r.key} ({r.reason})" for regs in backends.invalid.values() for r in regs][:3]
    more = backends.invalid_count - len(shown)
    return (
        f"{backends.invalid_count} registration(s) skipped: "
        + "; ".join(shown)
        + (f"; and {more} more" if more > 0 else "")
    )


def published_hash(text_hash: str, spec: ProxySpec) -> str:
    """The hash agents compare: the text's own, or with the spec's commands folded in."""
    extras = (spec.check_cmd, spec.reload_cmd, spec.config_path)
    if all(value is None for value in extras):
        return text_hash
    body = json.dumps([text_hash, *extras], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def decode_published(raw: bytes | None) -> PublishedConfig | None:
    """The published config's header (hash, generation...; a compressed body is left out)."""
    if raw is None:
        return None
    try:
        return decode_wire(raw, body=False)
    except PublishedFormatError:
        return None


@dataclass(frozen=True)
class AgentSummary:
    total: int
    on_newest: int
    errors: list[str]


def summarize_agents(reports: Sequence[tuple[str, bytes]], newest: str) -> AgentSummary:
    """``[(machine, AgentStatus JSON)]`` → counts and the agents' errors, ``agent <machine>: <error>``."""
    total = on_newest = 0
    errors: list[str] = []
    for machine, raw in sorted(reports):
        try:
            report = AgentStatus.model_validate_json(raw)
        except ValidationError:
            errors.append(f"agent {machine}: unreadable status")
            continue
        total += 1
        if newest and report.applied_hash == newest and report.error is None:
            on_newest += 1
        if report.error:
            errors.append(f"agent {report.machine or machine}: {report.error}")
    return AgentSummary(total, on_newest, errors)


@dataclass(frozen=True)
class ProxyView:
    """Everything the status of one valid proxy is made from."""

    generation: int
    published: PublishedConfig | None
    backends: BackendSet
    agents: AgentSummary
    units: list[UnitStatus]
    render_error: str | None = None
    unit_error: str | None = None


def _condition(
    kind: ConditionType, ok: bool, reason: str, message: str, stored: ProxyStatus | None, now: float
) -> Condition:
    status: Literal["True", "False"] = "True" if ok else "False"
    previous = stored.condition(kind) if stored is not None else None
    since = (
        previous.last_transition_time
        if previous is not None and previous.status == status and previous.last_transition_time
        else rfc3339(now)
    )
    return Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=since)


def build_status(view: ProxyView, stored: ProxyStatus | None, now: float) -> ProxyStatus:
    """The ProxyStatus for ``view``; unchanged conditions keep their transition time from ``stored``."""
    published, agents = view.published, view.agents
    newest = published.hash if published is not None else ""
    errors = [e for e in (view.render_error, *agents.errors, view.unit_error) if e]
    if view.render_error:
        publish = _condition("Published", False, "RenderFailed", view.render_error, stored, now)
    elif published is None:
        publish = _condition("Published", False, "NotPublished", "no config published yet", stored, now)
    else:
        message = f"generation {published.generation}, {newest[:12]}"
        publish = _condition("Published", True, "Published", message, stored, now)
    if agents.on_newest:
        text = f"{agents.on_newest} of {agents.total} agent(s) serve the newest config"
        available = _condition("Available", True, "AgentsOnNewest", text, stored, now)
    else:
        reason = "NoAgents" if agents.total == 0 else "NoAgentOnNewest"
        text = f"none of {agents.total} agent(s) serve the newest config"
        available = _condition("Available", False, reason, text, stored, now)
    if view.render_error:
        degraded = _condition("Degraded", True, "RenderFailed", view.render_error, stored, now)
    elif agents.errors:
        degraded = _condition("Degraded", True, "AgentFailed", "; ".join(agents.errors), stored, now)
    elif view.unit_error:
        degraded = _condition("Degraded", True, "UnitsFailed", view.unit_error, stored, now)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", stored, now)
    return ProxyStatus(
        observed_generation=view.generation,
        config_hash=newest,
        generation=published.generation if published is not None else 0,
        backends={service: len({r.address for r in regs}) for service, regs in view.backends.valid.items()},
        agents=AgentCount(total=agents.total, on_newest=agents.on_newest),
        conditions=[publish, available, degraded],
        units=view.units,
        last_error="; ".join(errors) if errors else None,
    )


def invalid_status(generation: int, message: str, stored: ProxyStatus | None, now: float) -> ProxyStatus:
    """An invalid spec: ``Invalid=True`` with the JSON path and reason; the rest is kept as it was."""
    previous = stored.condition("Invalid") if stored is not None else None
    kept_since = previous is not None and previous.status == "True" and previous.last_transition_time
    since = previous.last_transition_time if previous is not None and kept_since else rfc3339(now)
    condition = Condition(
        type="Invalid", status="True", reason="SpecInvalid", message=message, last_transition_time=since
    )
    base = stored or ProxyStatus()
    kept = [c for c in base.conditions if c.type != "Invalid"]
    return base.model_copy(
        update={"observed_generation": generation, "conditions": [*kept, condition], "last_error": message}
    )
