"""Strict parsing of service registrations: the keys ``/services/<service>/<id>`` and their values.

Anything may write those keys: fleetop's sidekick, a shell ``etcdctl set`` in a unit file
(articles 001-003: ``"10.0.0.5:8001"``), registrator (article 004: key ``<host>:<container>:<port>``,
value ``"ip:port"``), or a JSON writer (``{"host": "10.0.0.5", "port": 8001}``). Every address ends up
inside an nginx or HAProxy config, so a value is accepted only when it is exactly an address: an IPv4
address, an IPv6 address in brackets, or an RFC 1123 DNS name, and a port 1-65535. Anything else
(``127.0.0.1:80; } server { ...``, newlines, quotes, spaces, a bare IPv6 address) is rejected with a
reason a person can act on, and the rest of the registrations still work.

Pure functions only: no etcd, no clock. Addresses are normalised (lower-case names, compressed IPv6)
so the same backend written two ways is recognised as one. Results are named tuples, not dataclasses:
every sidekick imports this module, and ``dataclasses`` would cost each a megabyte.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fleetop.errors import InputError
from fleetop.keys import Keys, child, is_key_path, is_name

MAX_VALUE_BYTES = 1024
MAX_HOSTNAME = 253
PREVIEW_CHARS = 60

_PORT_RE = re.compile(r"[0-9]{1,5}")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_ALL_DIGITS_RE = re.compile(r"[0-9]+")
_IPV4_SHAPE_RE = re.compile(r"[0-9.]+")
_INSTANCE_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


class AddressError(ValueError):
    """A value that is not an address; the message is the reason, fit for a status field."""


class Registration(NamedTuple):
    """One backend: the etcd key it came from and the address it names (``host`` without brackets)."""

    key: str
    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 host in brackets (``[::1]:80``)."""
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


class InvalidRegistration(NamedTuple):
    """A key whose value was refused: a printable preview of the value and why."""

    key: str
    value_preview: str
    reason: str


def preview(value: bytes | str) -> str:
    """A short, printable, single-line rendering of an untrusted value (for status and logs)."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    cut = text[:PREVIEW_CHARS]
    shown = cut.encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > PREVIEW_CHARS else "")


def parse_port(text: str) -> int:
    """``"8080"`` → 8080. ASCII digits only, no sign, no leading zero, 1-65535."""
    if not _PORT_RE.fullmatch(text) or (len(text) > 1 and text[0] == "0"):
        raise AddressError(f"port {preview(text)!r} is not a number 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AddressError(f"port {port} is out of range 1-65535")
    return port


def parse_host(text: str, *, bare_ipv6: bool = False) -> str:
    """An IPv4 address, a bracketed IPv6 address (bare too with ``bare_ipv6``), or a DNS name.

    Returns the normalised host without brackets.
    """
    if not text:
        raise AddressError("host is empty")
    if text.startswith("[") or (bare_ipv6 and ":" in text):
        inner = text[1:-1] if text.startswith("[") else text
        if text.startswith("[") and not text.endswith("]"):
            raise AddressError("IPv6 address has no closing bracket")
        return _ipv6(inner)
    if ":" in text:
        raise AddressError("IPv6 addresses must be written in brackets, like [2001:db8::1]:80")
    if _IPV4_SHAPE_RE.fullmatch(text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise AddressError(f"{preview(text)!r} is not a valid IPv4 address") from None
    return _dns_name(text)


def _ipv6(text: str) -> str:
    if "%" in text:
        raise AddressError("IPv6 zone indexes (%eth0) are not supported")
    if not re.fullmatch(r"[0-9A-Fa-f:.]+", text):
        raise AddressError(f"{preview(text)!r} is not a valid IPv6 address")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise AddressError(f"{preview(text)!r} is not a valid IPv6 address") from None


def _dns_name(text: str) -> str:
    name = text.lower()
    name = name.removesuffix(".")
    if len(name) > MAX_HOSTNAME:
        raise AddressError(f"host name is longer than {MAX_HOSTNAME} characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise AddressError(
                f"{preview(text)!r} is not a host name: labels are 1-63 letters, digits or '-',"
                " not starting or ending with '-'"
            )
    if _ALL_DIGITS_RE.fullmatch(labels[-1]):
        raise AddressError(f"{preview(text)!r} is neither an IPv4 address nor a host name")
    return name


def parse_host_port(text: str) -> tuple[str, int]:
    """``"10.0.0.5:80"``, ``"[2001:db8::1]:80"``, ``"web-1.internal:80"`` → (host, port)."""
    if not text:
        raise AddressError("value is empty")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AddressError("IPv6 address has no closing bracket")
        host_text, rest = text[: close + 1], text[close + 1 :]
        if not rest.startswith(":"):
            raise AddressError("expected ':port' after the bracketed IPv6 address")
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            raise AddressError("IPv6 addresses must be written in brackets, like [2001:db8::1]:80")
        host_text, sep, port_text = text.partition(":")
        if not sep:
            raise AddressError("expected host:port (the port is missing)")
    return parse_host(host_text), parse_port(port_text)


def _parse_json_object(text: str) -> tuple[str, int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AddressError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise AddressError("expected a JSON object with host and port")
    unknown = sorted(set(data) - {"host", "port"})
    if unknown:
        raise AddressError(f"unknown field(s) in JSON registration: {preview(', '.join(unknown))}")
    host, port = data.get("host"), data.get("port")
    if not isinstance(host, str):
        raise AddressError('JSON registration needs "host" as a string')
    if isinstance(port, bool) or not isinstance(port, int):
        raise AddressError('JSON registration needs "port" as an integer')
    if not 1 <= port <= 65535:
        raise AddressError(f"port {port} is out of range 1-65535")
    return parse_host(host, bare_ipv6=True), port


def parse_value(value: bytes | str) -> tuple[str, int]:
    """A registration value → (host, port), or :class:`AddressError` with the reason.

    ``host:port`` text or a JSON object ``{"host": ..., "port": N}``; nothing around it (no spaces,
    no trailing newline).
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) > MAX_VALUE_BYTES:
        raise AddressError(f"value is longer than {MAX_VALUE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AddressError("value is not UTF-8 text") from None
    if text.startswith("{"):
        return _parse_json_object(text)
    bad = sorted({c for c in text if not (c.isascii() and (c.isalnum() or c in ".-:[]"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise AddressError(f"value contains characters not allowed in an address: {shown}")
    return parse_host_port(text)


@functools.lru_cache(maxsize=200_000)
def parse_registration(key: str, value: bytes | str) -> Registration | InvalidRegistration:
    """One key and its value → a :class:`Registration` or an :class:`InvalidRegistration`.

    Pure and answered from a cache: the operator re-reads every registration of a service on each
    pass (level-triggered), so in a burst the same (key, value) pairs are parsed again and again. The
    results are frozen, so sharing them is safe."""
    try:
        host, port = parse_value(value)
    except AddressError as exc:
        return InvalidRegistration(key=key, value_preview=preview(value), reason=str(exc))
    return Registration(key=key, host=host, port=port)


def registrations_under(
    prefix: str, items: Iterable[tuple[str, bytes]]
) -> Iterator[tuple[str, Registration | InvalidRegistration]]:
    """``(instance, parsed)`` for each key directly under ``prefix`` (a registration prefix ending in
    ``/``), in the order given. A key elsewhere or deeper (``/services/web/a/b``) is no instance and is
    passed over."""
    for key, value in items:
        instance = child(key, prefix)
        if instance is not None:
            yield instance, parse_registration(key, value)


def registration_key(service: str, instance: str, prefix: str | None = None) -> str:
    """The key ``fleetop register`` keeps: ``<prefix>/<instance>``, ``prefix`` being
    ``/services/<service>`` unless given. :class:`InputError` names the flag at fault."""
    if not is_name(service):
        raise InputError(
            f"service {service!r} must be 1-63 lowercase letters, digits or '-', starting and ending"
            " with a letter or digit",
            where="--service",
        )
    if not _INSTANCE_RE.fullmatch(instance):
        raise InputError(f"{instance!r} must be letters, digits, '.', '_' or '-'", where="--instance")
    if prefix is not None and not is_key_path(prefix):
        raise InputError(f"{prefix!r} must be a key path like /services/{service}", where="--prefix")
    keys = Keys()
    return (keys.registrations(prefix) if prefix else keys.default_registrations(service)) + instance


def parse_registrations(
    items: Iterable[tuple[str, bytes]],
) -> tuple[list[Registration], list[InvalidRegistration]]:
    """Parse many registrations, sorted by key.

    A key seen more than once counts once (the last value wins, as in a dict); the same address under
    two keys is two registrations (each key is a registered instance). Renderers collapse equal
    addresses into one server line.
    """
    latest: dict[str, bytes] = {}
    for key, value in items:
        latest[key] = value
    valid: list[Registration] = []
    invalid: list[InvalidRegistration] = []
    for key in sorted(latest):
        parsed = parse_registration(key, latest[key])
        if isinstance(parsed, Registration):
            valid.append(parsed)
        else:
            invalid.append(parsed)
    return valid, invalid


def parse_address(text: str) -> tuple[str, int]:
    """``--address`` → (host, port): ``10.0.0.5:8001``, ``[fd00::5]:8001``, ``web-1.internal:8001``.

    The same strict rules as every reader of registrations (this module's), so a
    sidekick can never write a value the operator or a proxy would refuse. Only the text form is
    accepted here; the JSON form is for other writers.
    """
    if text.startswith("{"):
        raise InputError(f"{preview(text)!r} is not host:port", where="--address")
    try:
        return parse_value(text)
    except AddressError as exc:
        raise InputError(f"{preview(text)!r}: {exc}", where="--address") from None
