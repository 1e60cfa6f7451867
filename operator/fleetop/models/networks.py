"""``allowedNetworks``: the networks a proxy (or a service) lets its backends be in.

Anyone who may write registrations may otherwise send a share of a service's traffic anywhere: strict
parsing makes a value an address, not an address the cluster meant. So a ProxySpec names the networks
its backends may be in, by default the private and loopback ranges (where a fleet cluster's machines
are), and a ServiceSpec's ``discovery`` may narrow its own further. A user widens them explicitly
(``["0.0.0.0/0", "::/0"]``). Link-local ranges (169.254/16, fe80::/10) are left out of the default on
purpose: they hold cloud metadata services and need an interface to mean anything.

Kept in the models so the schema documents the default; the check itself (an address against the
networks) is :func:`contains`, used by the proxy reconciler after names are resolved.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, Field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_NETWORKS: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)
MAX_NETWORKS = 256


def check_network(value: str) -> str:
    """``"10.0.0.0/8"``, ``"10.1.2.3"`` (one address), ``"fd00::/8"`` → the normalised CIDR."""
    if len(value) > 64:
        raise ValueError("a network is at most 64 characters, like '10.0.0.0/8' or 'fd00::/8'")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        hint = ""
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(value, strict=False)
            hint = f" (host bits are set: did you mean {loose}?)"
        raise ValueError(f"{value!r} is not a network in CIDR form like '10.0.0.0/8'{hint}") from None
    return str(network)


Network = Annotated[str, AfterValidator(check_network)]
NetworkList = Annotated[list[Network], Field(max_length=MAX_NETWORKS)]


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Validated CIDR strings → network objects (for :func:`contains`)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def contains(networks: Iterable[IPNetwork], address: str) -> bool:
    """Whether the IP ``address`` lies in one of ``networks``. An IPv4-mapped IPv6 address
    (``::ffff:10.0.0.5``) is judged as the IPv4 address it carries, so it cannot slip past an IPv4 rule."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)
