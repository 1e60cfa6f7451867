"""The proxy reconciler's decisions that need no I/O: backends, what to publish, and the status.

Kept apart from :mod:`fleetop.controller.proxies.reconciler` so they are tested with plain values:

* backends (:mod:`fleetop.proxy.backends`, shared with the agents): the registrations directly under each
  routed service's prefix, parsed strictly; a value that is not exactly an address is counted and
  reported, never rendered;
* registrations follow the operator's own knowledge: for a service whose instances register through
  fleetop's sidekick, a registration whose instance is not one of the service's main units that fleet
  holds with desiredState ``launched`` (destroyed, never launched: a key a lost delete or a restored
  lease left behind) is counted and reported too, and never rendered. A unit counts from the poll that
  first shows it, before it runs, so a new instance's registration is not held back by its unit's
  states. Registrations of other services (registrator, hand-written) are trusted as they are;
* the published hash: the sha256 of the rendered text, which is what agents compare. A spec's own
  ``checkCmd`` / ``reloadCmd`` / ``configPath`` travel with the config, so when one is set it is
  folded into the hash too: changing only a command is a new config for the agents to apply; so are
  the rules of the backends agents may follow themselves (``follow_rules``, not their revisions);
* the status: ``Published`` (a config for this spec is out), ``Available`` (at least one agent serves
  the newest config), ``Degraded`` (the render or an agent failed), each keeping its
  ``lastTransitionTime`` while its status stays, so a converged proxy gets a byte-identical status.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from fleetop.discovery.addresses import InvalidRegistration, Registration, registrations_under
from fleetop.discovery.resolve import Resolution
from fleetop.models.proxy import ProxySpec
from fleetop.models.status import (
    AgentCount,
    AgentStatus,
    Condition,
    ConditionType,
    FollowedBackend,
    ProxyStatus,
    PublishedConfig,
    UnitStatus,
)
from fleetop.proxy.backends import (
    BackendSet,
    Destinations,
    collect_backends,
    distinct,
    is_name,
)
from fleetop.proxy.follow import PrefixView
from fleetop.proxy.published import PublishedFormatError
from fleetop.proxy.published import decode_published as decode_wire
from fleetop.timefmt import rfc3339

RegistrationSource = PrefixView
"""Where a service's registrations are read: the operator's cache of its prefix (the agents read theirs
the same way)."""


@dataclass(frozen=True, slots=True)
class _Read:
    """One service's registrations as last read: from which cache at which revision, and its names."""

    source: RegistrationSource | None
    revision: int
    pairs: tuple[tuple[str, bytes], ...]
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Collected:
    inputs: tuple[object, ...]
    valid: tuple[Registration, ...]
    invalid: list[InvalidRegistration]
    unlaunched: list[InvalidRegistration]
    servers: int


class BackendCollector:
    """:func:`registration_names` and :func:`collect_backends` for one proxy's passes, doing the work
    of the services whose inputs changed only: a service's registrations are read again when its
    cache's revision moved, and collected again when they, its launched instances, its network
    rules or the answers for its names changed. At 1,000 routed services one registration change
    then parses one service's keys instead of 10,000. The result is always what the two functions
    give on everything; a service's registrations are handed out as the same tuple while they do not
    change (so the renderer recognises them by identity), with their count of distinct addresses."""

    def __init__(self) -> None:
        self._read: dict[str, _Read] = {}
        self._collected: dict[str, _Collected] = {}
        self._sources: Mapping[str, tuple[str, RegistrationSource | None]] | None = None

    def names(self, sources: Mapping[str, tuple[str, RegistrationSource | None]]) -> set[str]:
        """The DNS names among the registrations of ``service -> (prefix, source)``."""
        read: dict[str, _Read] = {}
        previous = self._read
        for service, (prefix, source) in sources.items():
            revision = source.revision if source is not None else -1
            last = previous.get(service)
            if last is None or last.source is not source or last.revision != revision:
                pairs = tuple((kv.key, kv.value) for kv in source.under(prefix)) if source else ()
                last = _Read(
                    source, revision, pairs, frozenset(registration_names({service: (prefix, pairs)}))
                )
            read[service] = last
        self._read = read
        self._sources = sources
        return set().union(*(r.names for r in read.values() if r.names))

    def revision(self, service: str) -> int:
        """The revision of the cache ``service``'s registrations were last read from: they hold
        every change under its prefix up to it (-1 when none was read)."""
        read = self._read.get(service)
        return read.revision if read is not None else -1

    def collect(
        self,
        sources: Mapping[str, tuple[str, RegistrationSource | None]],
        launched: Mapping[str, frozenset[str]],
        destinations: Destinations,
    ) -> BackendSet:
        """:func:`collect_backends` of the registrations :meth:`names` read last (read again unless
        ``sources`` is the very mapping :meth:`names` was given)."""
        if sources is not self._sources:
            self.names(sources)
        valid: dict[str, Sequence[Registration]] = {}
        servers: dict[str, int] = {}
        invalid: dict[str, list[InvalidRegistration]] = {}
        unlaunched: dict[str, list[InvalidRegistration]] = {}
        collected: dict[str, _Collected] = {}
        resolved = destinations.resolved
        allowed = destinations.allowed
        reads, previous = self._read, self._collected
        for service in sorted(sources):
            prefix, read = sources[service][0], reads[service]
            answers: tuple[tuple[str, Resolution | None], ...] | None = None
            if resolved is not None and read.names:
                answers = tuple((n, resolved.get(n)) for n in sorted(read.names))
            inputs = (prefix, read.pairs, launched.get(service), allowed.get(service), answers)
            last = previous.get(service)
            if last is None or last.inputs != inputs:
                one = collect_backends({service: (prefix, read.pairs)}, launched, destinations)
                regs = tuple(one.valid.get(service, ()))
                last = _Collected(
                    inputs,
                    regs,
                    one.invalid.get(service, []),
                    one.unlaunched.get(service, []),
                    distinct(regs),
                )
            collected[service] = last
            valid[service] = last.valid
            servers[service] = last.servers
            if last.invalid:
                invalid[service] = list(last.invalid)
            if last.unlaunched:
                unlaunched[service] = list(last.unlaunched)
        self._collected = collected
        self._sources = None  # the next collect() reads again unless names() comes first
        return BackendSet(valid, invalid, unlaunched, servers)


def registration_names(items: Mapping[str, tuple[str, Iterable[tuple[str, bytes]]]]) -> set[str]:
    """The DNS names among the valid registrations of ``items`` (what must be resolved to render)."""
    names = set()
    for prefix, pairs in items.values():
        for _, parsed in registrations_under(prefix, pairs):
            if isinstance(parsed, Registration) and is_name(parsed.host):
                names.add(parsed.host)
    return names


def _describe(skipped: Sequence[InvalidRegistration]) -> str:
    shown = [f"{r.key} ({r.reason})" for r in skipped[:3]]
    more = len(skipped) - len(shown)
    return (
        f"{len(skipped)} registration(s) skipped: "
        + "; ".join(shown)
        + (f"; and {more} more" if more > 0 else "")
    )


def describe_invalid(backends: BackendSet) -> str:
    """One line for an event: how many were refused, and the first few reasons."""
    return _describe([r for regs in backends.invalid.values() for r in regs])


def describe_unlaunched(backends: BackendSet) -> str:
    """One line for an event: registrations of instances the operator does not run."""
    return _describe([r for regs in backends.unlaunched.values() for r in regs])


def published_hash(text_hash: str, spec: ProxySpec, follow: Sequence[FollowedBackend] = ()) -> str:
    """The hash agents compare: the text's own, or with the spec's commands and the rules of the
    followed backends (not their revisions) folded in: a new rule is a new config for the agents,
    a registration that changes nothing rendered is not."""
    extras = (spec.check_cmd, spec.reload_cmd, spec.config_path)
    if all(value is None for value in extras) and not follow:
        return text_hash
    rules = [rule.rule() for rule in follow]
    body = json.dumps([text_hash, *extras, *rules], separators=(",", ":"), sort_keys=True)
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
        if report.dropped_backends:
            dropped = "; ".join(report.dropped_backends)
            errors.append(f"agent {report.machine or machine}: applied without backend(s) {dropped}")
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
    spec_hash: str = ""
    """The judged spec's ``specHash`` (``fleetop.models.parse.spec_hash``)."""


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
        spec_hash=view.spec_hash,
        config_hash=newest,
        generation=published.generation if published is not None else 0,
        backends=view.backends.server_counts(),
        skipped_registrations=view.backends.skipped_count,
        agents=AgentCount(total=agents.total, on_newest=agents.on_newest),
        conditions=[publish, available, degraded],
        units=view.units,
        last_error="; ".join(errors) if errors else None,
    )


def invalid_status(
    generation: int, message: str, stored: ProxyStatus | None, now: float, reason: str = "SpecInvalid"
) -> ProxyStatus:
    """An invalid spec: ``Invalid=True`` with ``reason`` and the JSON path and message; the rest is kept
    as it was."""
    previous = stored.condition("Invalid") if stored is not None else None
    kept_since = previous is not None and previous.status == "True" and previous.last_transition_time
    since = previous.last_transition_time if previous is not None and kept_since else rfc3339(now)
    condition = Condition(
        type="Invalid", status="True", reason=reason, message=message, last_transition_time=since
    )
    base = stored or ProxyStatus()
    kept = [c for c in base.conditions if c.type != "Invalid"]
    return base.model_copy(
        update={
            "observed_generation": generation,
            "spec_hash": "",
            "conditions": [*kept, condition],
            "last_error": message,
        }
    )


RuleMemo = dict[str, tuple[tuple[object, ...], FollowedBackend]]


def agents_may_follow(spec: ProxySpec) -> bool:
    """HAProxy's built-in template without a ``reloadCmd``: servers change at runtime, and an agent
    renders a backend's block as the operator does."""
    return spec.kind == "haproxy" and spec.template is None and spec.reload_cmd is None


def follow_rules(
    spec: ProxySpec,
    sources: Mapping[str, tuple[str, object]],
    revisions: Mapping[str, int],
    launched: Mapping[str, frozenset[str]],
    networks: Mapping[str, tuple[tuple[str, ...], ...]],
    block: Mapping[str, str | bool | None] | None,
    memo: RuleMemo | None = None,
) -> list[FollowedBackend]:
    """The backends an agent may follow itself (:mod:`fleetop.proxy.follow`): every routed service of
    an HAProxy built-in template whose servers change at runtime (no ``reloadCmd``), with the rules
    its registrations were kept by for this render. None for anything else. ``memo`` (kept by the
    caller between renders) hands out the same rule for a service whose inputs did not change, so a
    render at 1,000 services builds the rules of the services that changed only."""
    if not agents_may_follow(spec) or block is None:
        return []
    values = tuple(sorted(block.items()))
    known = memo if memo is not None else {}
    fresh: RuleMemo = {}
    rules = []
    for service in sorted(sources):
        found = launched.get(service)
        prefix, revision, lists = sources[service][0], revisions.get(service, -1), networks.get(service, ())
        key = (prefix, revision, found, lists, values)
        last = known.get(service)
        if last is None or last[0] != key:
            rule = FollowedBackend(
                service=service,
                prefix=prefix,
                revision=revision,
                launched=sorted(found) if found is not None else None,
                networks=[list(cidrs) for cidrs in lists],
                block=dict(block),
            )
            last = (key, rule)
        fresh[service] = last
        rules.append(last[1])
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    return rules
