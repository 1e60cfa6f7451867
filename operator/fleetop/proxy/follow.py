"""An agent following the registrations of its HAProxy's backends itself, one etcd commit sooner.

A backend registering or leaving reaches HAProxy through two etcd commits: the registration, then
the config the operator renders from it and publishes. With the published config the operator also
publishes, for each backend of HAProxy's built-in template whose servers change at runtime, the rules
it kept the backend's registrations by (:class:`~fleetop.models.status.FollowedBackend`: the prefix,
the launched instances of a sidekick service, the allowed networks, the values the template's block
reads) and the etcd revision the body reflects. The agent watches those prefixes too, and when it has
seen a change under a prefix that the body does not reflect yet (its cache is past the rule's
revision), it renders that backend as the operator will: the same parsing and filtering
(:func:`~fleetop.proxy.backends.collect_backends`) and the same template block
(:func:`~fleetop.proxy.render.builtin_block`), put in place of the published block. That *effective*
config is what the agent applies (servers at runtime, the file staged, checked and renamed as ever),
and when the operator's config arrives with those servers, it is byte for byte the one applied.

Where the agent cannot be sure it would render what the operator renders, it keeps the published
block: a registration that is a DNS name (the operator resolves names; the agent never does), a
cache that has not caught up with the rule's revision (the published servers are newer), a block
of the published body that is not exactly the block its servers render to (another template or
version), or a prefix the agent may not read. The operator stays the one place registrations are
judged and reported; the agent only gets there first. A DNS name among a backend's registrations
holds the backend where the agent last followed it until the operator publishes (the agent cannot
render it, and the published servers are older than what it followed). Pure apart from reading the caches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fleetop.discovery.addresses import Registration
from fleetop.errors import FleetopError
from fleetop.etcd.model import KeyValue
from fleetop.models.status import FollowedBackend, PublishedConfig
from fleetop.proxy.backends import Destinations, collect_backends, is_name, network_rules
from fleetop.proxy.haproxy_servers import Section, Server, parse_config, parse_section
from fleetop.proxy.render import builtin_block, service_view, upstream_name

log = logging.getLogger(__name__)


class PrefixView(Protocol):
    """What the agent has seen under a prefix: every change up to ``revision``."""

    @property
    def revision(self) -> int: ...

    def under(self, prefix: str) -> Sequence[KeyValue]: ...


@dataclass(frozen=True, slots=True)
class Followed:
    """The config to apply: the published body with the blocks of ``ahead`` (services) rendered from
    registrations newer than it; ``servers``: those backends' servers, as the body names them."""

    body: str
    ahead: tuple[str, ...] = ()
    servers: Mapping[str, Mapping[str, Server]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Change:
    """One backend followed ahead: its published block, its block from the registrations seen, and
    the servers of the latter."""

    old: str
    new: str
    backend: str
    servers: Mapping[str, Server]


@dataclass(frozen=True, slots=True)
class _Memo:
    """A backend's answer, kept while its rule, its published block and its cache do not change: a
    config of 1,000 followed backends then costs a comparison each, not a render each."""

    source: FollowedBackend
    """The rule as published (the same object while the published document is the same)."""
    rule: tuple[object, ...]
    block: str
    revision: int
    change: _Change | None


HOLD = _Change("", "", "", {})
"""A backend whose registrations the agent cannot render (a DNS name among them): it keeps the servers
it last followed ahead of this published config, if any, else the published ones."""


def followable(cfg: PublishedConfig) -> bool:
    """Whether a published config carries backends to follow and its servers change at runtime."""
    return bool(cfg.follow) and cfg.kind == "haproxy" and cfg.reload_cmd is None


def own_registrations(rule: FollowedBackend, items: Sequence[KeyValue]) -> tuple[Registration, ...] | None:
    """The registrations under ``rule.prefix`` that the operator would render for this backend, by its
    rule; None when one of them is a DNS name (which only the operator resolves)."""
    pairs = [(kv.key, kv.value) for kv in items]
    launched = {rule.service: frozenset(rule.launched)} if rule.launched is not None else {}
    allowed = {rule.service: network_rules(*(tuple(cidrs) for cidrs in rule.networks))}
    found = collect_backends({rule.service: (rule.prefix, pairs)}, launched, Destinations(None, allowed))
    regs = tuple(found.valid.get(rule.service, ()))
    if any(is_name(reg.host) for reg in regs):
        return None
    return regs


class Follower:
    """Makes the effective config of each published one, from the caches of the followed prefixes.
    Remembers each backend's answer (:class:`_Memo`), so an event under one prefix renders one block."""

    def __init__(self) -> None:
        self._sections: tuple[str, dict[str, Section]] | None = None
        self._memo: dict[str, _Memo] = {}
        self._refused: set[str] = set()
        self._refused_for = ""

    def effective(self, cfg: PublishedConfig, view: Callable[[str], PrefixView | None]) -> Followed:
        if not followable(cfg):
            return Followed(cfg.body)
        body, ahead, servers = cfg.body, [], {}
        memo: dict[str, _Memo] = {}
        for rule in cfg.follow:
            cache = view(rule.prefix)
            if cache is None or cache.revision <= rule.revision:
                continue  # not seen further than the operator: its servers are the newest known
            known = self._memo.get(rule.service)
            if known is not None and known.source is rule and known.revision == cache.revision:
                memo[rule.service] = known  # the same published document, nothing new seen
                change = known.change
            else:
                section = self._section(cfg, upstream_name(rule.service))
                if section is None:
                    continue
                try:
                    change = self._judge(cfg, rule, cache, section, known, memo)
                except (ValueError, FleetopError) as exc:  # a rule this agent cannot use (a bad CIDR)
                    self._refuse(cfg, rule, f"its rule cannot be used: {exc}")
                    continue
            if change is None:
                continue
            at = body.find(change.old)
            if at < 0 or body.find(change.old, at + 1) >= 0:
                self._refuse(cfg, rule, "the published block is not the one its servers render to here")
                continue
            body = body[:at] + change.new + body[at + len(change.old) :]
            ahead.append(rule.service)
            servers[change.backend] = change.servers
        self._memo = memo
        return Followed(body, tuple(ahead), servers)

    def _judge(
        self,
        cfg: PublishedConfig,
        rule: FollowedBackend,
        cache: PrefixView,
        section: Section,
        known: _Memo | None,
        memo: dict[str, _Memo],
    ) -> _Change | None:
        """This backend's change, judged again (a new published document, or a change seen), and
        remembered in ``memo``: unchanged when the rule, the published block and the cache are."""
        key = rule.rule()
        same = known is not None and known.block == section.text
        if same and known is not None and known.revision == cache.revision and known.rule == key:
            change = known.change
        else:
            change = self._change(cfg, rule, cache, section)
            if change is HOLD:  # a name among them: keep what was followed until the operator publishes it
                change = known.change if same and known is not None else None
        memo[rule.service] = _Memo(rule, key, section.text, cache.revision, change)
        return change

    def _change(
        self, cfg: PublishedConfig, rule: FollowedBackend, cache: PrefixView, section: Section
    ) -> _Change | None:
        """The backend's published block and its block from the registrations seen; None when the
        servers are the published ones, HOLD when one of the registrations is a DNS name."""
        regs = own_registrations(rule, cache.under(rule.prefix))
        if regs is None:
            return HOLD
        backend = upstream_name(rule.service)
        published = sorted({(s.host, s.port) for s in parse_section(section).servers.values()})
        if sorted({(r.host, r.port) for r in regs}) == published:
            return None
        mine = [Registration("", host, port) for host, port in published]
        old = builtin_block(cfg.kind, rule.block, service_view(rule.service, mine))
        view = service_view(rule.service, regs)
        new = builtin_block(cfg.kind, rule.block, view)
        return _Change(old, new, backend, {b.id: Server(b.id, b.host, b.port) for b in view.backends})

    def _section(self, cfg: PublishedConfig, backend: str) -> Section | None:
        if self._sections is None or self._sections[0] != cfg.hash:
            model = parse_config(cfg.body)
            found = {s.name: s for s in model.sections if s.keyword == "backend"}
            self._sections = (cfg.hash, found)
        return self._sections[1].get(backend)

    def _refuse(self, cfg: PublishedConfig, rule: FollowedBackend, why: str) -> None:
        """Said once per published config and backend."""
        if self._refused_for != cfg.hash:
            self._refused_for, self._refused = cfg.hash, set()
        if rule.service in self._refused:
            return
        self._refused.add(rule.service)
        log.warning(
            "config %s: service %s is not followed (%s): its servers come from the published config only",
            cfg.hash[:12], rule.service, why,
        )  # fmt: skip
