"""Which registrations become a proxy's backends. Pure.

The registrations directly under each routed service's prefix, parsed strictly
(:mod:`fleetop.discovery.addresses`); a value that is not exactly an address is counted and reported,
never rendered. For a service whose instances register through fleetop's sidekick, a registration
whose instance is not one of the service's main units that fleet holds as launched is left out too
(``unlaunched``). DNS names are replaced by their addresses when resolutions are given, and an address
outside the allowed networks is refused.

Shared by the operator (:mod:`fleetop.controller.proxies.status`, which renders and reports) and the
proxy agent (:mod:`fleetop.proxy.follow`, which follows a backend's registrations itself under the
rules the operator published), so both keep exactly the same registrations.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleetop.discovery.addresses import InvalidRegistration, Registration, registrations_under
from fleetop.discovery.resolve import Resolution, names_of
from fleetop.models.networks import IPNetwork, contains, parse_networks
from fleetop.proxy.render import paused_gc


@dataclass(frozen=True)
class BackendSet:
    """Parsed registrations per routed service, the refused ones, and the ones of instances that the
    operator does not run (``unlaunched``: valid addresses, left out all the same)."""

    valid: dict[str, Sequence[Registration]] = field(default_factory=dict)
    invalid: dict[str, list[InvalidRegistration]] = field(default_factory=dict)
    unlaunched: dict[str, list[InvalidRegistration]] = field(default_factory=dict)
    servers: dict[str, int] | None = None
    """Distinct addresses per service, when the collector counted them already (else counted here)."""

    def server_counts(self) -> dict[str, int]:
        """Each routed service's number of distinct backend addresses (what the status reports)."""
        if self.servers is not None:
            return self.servers
        return {service: distinct(regs) for service, regs in self.valid.items()}

    @property
    def invalid_count(self) -> int:
        return sum(len(v) for v in self.invalid.values())

    @property
    def skipped_count(self) -> int:
        """Registrations left out of the config, for whatever reason."""
        return self.invalid_count + sum(len(v) for v in self.unlaunched.values())

    def unlaunched_keys(self) -> frozenset[str]:
        return frozenset(r.key for regs in self.unlaunched.values() for r in regs)

    def fingerprint(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """What the render depends on, comparable between passes."""
        return tuple(
            (service, tuple(sorted(r.address for r in regs))) for service, regs in sorted(self.valid.items())
        )


def distinct(regs: Sequence[Registration]) -> int:
    return len({(r.host, r.port) for r in regs})


class NetworkRules:
    """Network lists an address must be in, every one of them. Hashed once: every backend of every
    render is checked against the same rules, through a cache keyed by them."""

    __slots__ = ("_hash", "lists")

    def __init__(self, lists: Iterable[tuple[IPNetwork, ...]]) -> None:
        self.lists = tuple(lists)
        self._hash = hash(self.lists)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or (isinstance(other, NetworkRules) and self.lists == other.lists)


@functools.lru_cache(maxsize=1024)
def network_rules(*lists: tuple[str, ...]) -> NetworkRules:
    """The rules for CIDR lists (``allowedNetworks`` of a proxy, then of a service), one object per
    distinct lists."""
    return NetworkRules(parse_networks(cidrs) for cidrs in lists)


NO_RULES = NetworkRules(())


@functools.lru_cache(maxsize=200_000)
def is_name(host: str) -> bool:
    return bool(names_of([host]))


@functools.lru_cache(maxsize=200_000)
def _inside(host: str, rules: NetworkRules) -> bool:
    """Cached: a render checks every backend on every pass, and the answer only depends on these."""
    return all(contains(networks, host) for networks in rules.lists)


@dataclass(frozen=True)
class Destinations:
    """Where backends may be: each name's resolution, and per routed service the network lists an
    address must be in (the proxy's ``allowedNetworks``, then the service's own, if any).
    ``resolved`` None keeps names as they are (nothing resolved them, nothing to check them by)."""

    resolved: Mapping[str, Resolution] | None = None
    allowed: Mapping[str, NetworkRules] = field(default_factory=dict)

    def targets(
        self, service: str, parsed: Registration
    ) -> tuple[list[Registration], list[InvalidRegistration]]:
        """The registrations ``parsed`` stands for (one per address of a name), and those refused."""
        rules = self.allowed.get(service, NO_RULES)
        if not is_name(parsed.host):
            if _inside(parsed.host, rules):
                return [parsed], []
            hosts: tuple[str, ...] = (parsed.host,)
        elif self.resolved is None:
            return [parsed], []
        else:
            answer = self.resolved.get(parsed.host)
            if answer is None or answer.error is not None or not answer.addresses:
                reason = (
                    answer.error if answer is not None and answer.error else f"{parsed.host} is not resolved"
                )
                return [], [InvalidRegistration(parsed.key, parsed.address, reason)]
            hosts = answer.addresses
        kept, refused = [], []
        for host in hosts:
            target = Registration(parsed.key, host, parsed.port)
            if _inside(host, rules):
                kept.append(target)
                continue
            via = f" ({parsed.host})" if host != parsed.host else ""
            reason = f"{target.address}{via} is outside the allowed networks"
            refused.append(InvalidRegistration(parsed.key, target.address, reason))
        return kept, refused


def collect_backends(
    items: Mapping[str, tuple[str, Iterable[tuple[str, bytes]]]],
    launched: Mapping[str, frozenset[str]] | None = None,
    destinations: Destinations | None = None,
) -> BackendSet:
    """``service -> (prefix, [(key, value)])`` → registrations of the keys directly under the prefix.

    ``launched`` maps each service whose instances register through fleetop's sidekick to the
    instances the operator runs (:func:`~fleetop.controller.world.launched_instances`); other
    services' keys are all trusted.
    ``destinations`` turns names into their addresses and refuses what lies outside the allowed
    networks: an unresolvable name or a forbidden address is skipped and reported like a value that
    does not parse, and every other backend still renders.
    """
    with paused_gc():
        return _collect(items, launched or {}, destinations or Destinations())


def _collect(
    items: Mapping[str, tuple[str, Iterable[tuple[str, bytes]]]],
    known: Mapping[str, frozenset[str]],
    where: Destinations,
) -> BackendSet:
    valid: dict[str, Sequence[Registration]] = {}
    invalid: dict[str, list[InvalidRegistration]] = {}
    unlaunched: dict[str, list[InvalidRegistration]] = {}
    for service, (prefix, pairs) in sorted(items.items()):
        found: list[Registration] = []
        refused: list[InvalidRegistration] = []
        unknown: list[InvalidRegistration] = []
        valid[service] = found
        runs = known.get(service)
        rules = where.allowed.get(service, NO_RULES)
        for instance, parsed in registrations_under(prefix, sorted(pairs)):
            if not isinstance(parsed, Registration):
                refused.append(parsed)
            elif runs is not None and instance not in runs:
                reason = f"instance {instance} is not a launched unit of service {service}"
                unknown.append(InvalidRegistration(parsed.key, parsed.address, reason))
            elif not is_name(parsed.host) and _inside(parsed.host, rules):
                found.append(parsed)  # an address inside the rules: what targets() answers, inline
            else:
                kept, outside = where.targets(service, parsed)
                found.extend(kept)
                refused.extend(outside)
        if refused:
            invalid[service] = refused
        if unknown:
            unlaunched[service] = unknown
    return BackendSet(valid, invalid, unlaunched)
