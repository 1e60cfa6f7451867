"""An HAProxy config as a skeleton plus the servers of its backends, and the runtime commands that
take a running HAProxy from the servers it holds to the servers a new config names. Pure.

Why: a reload costs HAProxy about 150 ms and forks a new worker; changing servers through the
runtime API (``add server``, ``set server``, ``del server`` on the admin socket) costs one command
each. That is only safe when nothing but servers changed, so the agent compares the new config with
the one HAProxy runs section by section (:func:`parse_config` only cuts the text at its section
keywords; a section is parsed only when its text differs, so the work follows the change, not the
size of the config). A changed section splits into

- its *skeleton*: every line but the ``server`` lines of a ``backend``, with comments and blank lines
  dropped and whitespace normalised (HAProxy ignores both), and
- its *servers*: server name → :class:`Server` (address, port, options).

Equal skeletons mean the configs differ only in servers. The server names of the built-in template
are the backend's ``host:port``, so a server keeps its name for as long as its address is registered
and a diff is meaningful. The commands are planned against what HAProxy reports it holds (``show
servers state``), not against the previous config, so a proxy restarted from the file, or one that
was already given part of the change, converges all the same.

Some changes cannot be made at runtime, and :func:`runtime_change` says why instead of planning
(the agent then reloads): a server line this module does not understand (options outside a small
known set, names with characters HAProxy's command line would split on), servers named by DNS
name (HAProxy starts a dynamic server with ``init-addr none``, so it would never resolve), a
``default-server`` that sets more than ``init-addr`` (HAProxy does not apply ``default-server`` to
servers added at runtime, so they would differ from the ones a reload gives), and a backend whose
balance algorithm is not dynamic (``Backend must use a dynamic load balancing``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

SECTIONS = frozenset(
    {
        "global", "defaults", "frontend", "backend", "listen", "resolvers", "peers", "userlist",
        "mailers", "program", "http-errors", "ring", "cache", "fcgi-app",
    }
)  # fmt: skip
# HAProxy 2.6's `add server` keywords that need no other runtime step (``check`` also needs
# `enable health`), each with the number of values it takes.
SERVER_OPTIONS: Mapping[str, int] = {
    "check": 0, "backup": 0, "send-proxy": 0, "send-proxy-v2": 0,
    "inter": 1, "fastinter": 1, "downinter": 1, "rise": 1, "fall": 1, "weight": 1,
    "maxconn": 1, "maxqueue": 1, "minconn": 1, "slowstart": 1,
}  # fmt: skip
DYNAMIC_BALANCE = frozenset({"roundrobin", "leastconn", "first", "random"})
HASH_BALANCE = frozenset({"source", "uri", "url_param", "hdr", "rdp-cookie", "hash"})
_TOKEN_RE = re.compile(r"[A-Za-z0-9._:\-]+")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*")
# Admin-state bits of `show servers state` that mean "in maintenance": forced, inherited, from the
# config, from a failed resolution.
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20


class Server(NamedTuple):
    """One server: ``host`` is an IP address (IPv6 without brackets) or a DNS name. A named tuple: a
    config at 10,000 servers makes 10,000 of them per parse."""

    name: str
    host: str
    port: int
    options: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """The address as a server line and ``add server`` write it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        return _ip(self.host) is not None


class Section(NamedTuple):
    """A config section as it is written: ``keyword`` (``backend``, ``defaults``, ...; ``""`` for
    the text before the first one), its name and its text."""

    keyword: str
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class ConfigModel:
    """A config cut into its sections; a section is only parsed when it differs between two configs,
    so comparing two configs of 10,000 servers costs a string comparison per section."""

    sections: tuple[Section, ...]

    def servers(self) -> dict[str, dict[str, Server]]:
        """Every backend's servers (parses every backend)."""
        return {s.name: parse_section(s).servers for s in self.sections if s.keyword == "backend"}


@dataclass(frozen=True, slots=True)
class ParsedSection:
    """One section as the runtime sees it: ``skeleton`` holds its lines but its servers (comments
    and blank lines dropped, whitespace normalised); ``settings`` its ``balance`` and ``hash-type``;
    ``static`` why servers under it cannot change at runtime (``""`` when they can)."""

    skeleton: tuple[str, ...]
    servers: dict[str, Server]
    settings: dict[str, list[str]]
    static: str


@dataclass(frozen=True, slots=True)
class RuntimeChange:
    """Going from one config to another: ``reason`` why it needs a reload (``""`` when it does not),
    else the backends whose servers change, with their new servers."""

    reason: str
    backends: Mapping[str, Mapping[str, Server]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LiveServer:
    """A server as ``show servers state`` reports it: ``addr`` is its IP address (``-`` when a
    name did not resolve), ``fqdn`` the name it was given (``-`` for an address)."""

    backend: str
    name: str
    addr: str
    port: int
    maint: bool
    fqdn: str = "-"

    def at(self, server: Server) -> bool:
        """Whether this is where ``server`` points."""
        host = self.addr if server.is_ip else self.fqdn
        return self.port == server.port and _same_host(host, server.host)


@dataclass(frozen=True, slots=True)
class Command:
    """One runtime command and the answers that mean it worked (HAProxy's answers are plain text:
    ``New server registered.``, an empty line, ``IP changed from ...``)."""

    text: str
    ok: tuple[str, ...]
    chained: bool = False
    """Sent on the line of the command before it (``a; b``: one connection, one round trip); only a
    command that answers nothing on success (``ok == ("",)``) is chained."""

    def succeeded(self, answer: str) -> bool:
        answer = answer.strip()
        return any(answer.startswith(prefix) if prefix else answer == "" for prefix in self.ok)


@dataclass(frozen=True, slots=True)
class RuntimePlan:
    """The commands to send, and the servers put in maintenance that must be deleted once drained."""

    commands: tuple[Command, ...]
    drain: frozenset[tuple[str, str]] = field(default_factory=frozenset)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _same_host(a: str, b: str) -> bool:
    if a == b:
        return True
    ip_a, ip_b = _ip(a), _ip(b)
    return ip_a == ip_b if ip_a is not None and ip_b is not None else a.lower() == b.lower()


def parse_server_line(tokens: list[str]) -> Server | str:
    """``["server", name, address, *options]`` → a :class:`Server`, or why it is not a plain one."""
    if len(tokens) < 3:
        return f"'{' '.join(tokens)}' has no address"
    name, address, options = tokens[1], tokens[2], tokens[3:]
    if not _TOKEN_RE.fullmatch(name):
        return f"server name {name!r} has characters the runtime API cannot take"
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid = _ip(host) is not None and ":" in host
    else:
        valid = _HOST_RE.fullmatch(host) is not None
    if not (valid and port_text.isdigit() and port_text.isascii() and 1 <= int(port_text) <= 65535):
        return f"server {name} has an address without a plain host:port ({address!r})"
    if options:
        reason = _options_reason(name, options)
        if reason:
            return reason
    return Server(name, host, int(port_text), tuple(options))


def _options_reason(name: str, options: list[str]) -> str:
    i = 0
    while i < len(options):
        arity = SERVER_OPTIONS.get(options[i])
        if arity is None or i + arity > len(options) - 1:
            return f"server {name} has option {options[i]!r}, which is not changed at runtime"
        if not all(_TOKEN_RE.fullmatch(value) for value in options[i + 1 : i + 1 + arity]):
            return f"server {name} has an option value the runtime API cannot take"
        i += 1 + arity
    return ""


def _default_server_reason(tokens: list[str]) -> str:
    """``default-server init-addr ...`` is all a runtime server can do without (it has an IP)."""
    rest = tokens[1:]
    if len(rest) == 2 and rest[0] == "init-addr":
        return ""
    return f"'{' '.join(tokens)}' would not apply to servers added at runtime"


def _balance_is_dynamic(balance: list[str], hash_type: list[str]) -> bool:
    if not balance:
        return True  # roundrobin
    algorithm = balance[0].split("(")[0]
    if algorithm in DYNAMIC_BALANCE:
        return True
    return algorithm in HASH_BALANCE and bool(hash_type) and hash_type[0] == "consistent"


def parse_section(section: Section) -> ParsedSection:
    """Split one section into skeleton and servers (servers only in a ``backend``)."""
    skeleton: list[str] = []
    servers: dict[str, Server] = {}
    settings: dict[str, list[str]] = {}
    static = ""
    for raw in section.text.splitlines():
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        keyword = tokens[0]
        if keyword == "server" and section.keyword == "backend":
            parsed = parse_server_line(tokens)
            if isinstance(parsed, Server) and parsed.name not in servers:
                servers[parsed.name] = parsed
                continue
            static = static or (parsed if isinstance(parsed, str) else f"server {parsed.name} appears twice")
        elif keyword == "default-server":
            static = static or _default_server_reason(tokens)
        elif keyword in ("balance", "hash-type"):
            settings[keyword] = tokens[1:]
        skeleton.append(" ".join(tokens))
    return ParsedSection(tuple(skeleton), servers, settings, static)


# A section keyword at the start of a line, matched from the newline before it: a pattern that
# begins with a literal is searched for that character first, which makes cutting a 0.7 MB config
# (10,000 servers) several times faster than trying a line-start pattern at every position.
_SECTION_RE = re.compile(
    r"\n[ \t]*(" + "|".join(sorted(SECTIONS, key=len, reverse=True)) + r")(?=[ \t\r\n]|\Z)[^\n]*"
)


def parse_config(body: str) -> ConfigModel:
    """Cut an HAProxy config into its sections (a section starts at its keyword, however indented,
    as HAProxy reads it)."""
    sections: list[Section] = []
    # in "\n" + body, a match starting at index i is the line that starts at body[i]
    starts = list(_SECTION_RE.finditer("\n" + body))
    first = starts[0].start() if starts else len(body)
    if first:
        sections.append(Section("", "", body[:first]))
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(body)
        tokens = match.group(0).split()
        sections.append(Section(tokens[0], tokens[1] if len(tokens) > 1 else "", body[match.start() : end]))
    return ConfigModel(tuple(sections))


def _first_difference(old: tuple[str, ...], new: tuple[str, ...]) -> str:
    old_lines, new_lines = set(old), set(new)
    added = next((line for line in new if line not in old_lines), None)
    removed = next((line for line in old if line not in new_lines), None)
    return f"{added!r}" if added else f"{removed!r} removed" if removed else "the order of lines"


def runtime_change(old: ConfigModel, new: ConfigModel) -> RuntimeChange:
    """Whether going from ``old`` to ``new`` can be done by changing servers at runtime, and which."""
    if [s[:2] for s in old.sections] != [s[:2] for s in new.sections]:
        return RuntimeChange("sections were added, removed or renamed")
    changed: dict[str, Mapping[str, Server]] = {}
    defaults: Section | None = None
    for before, after in zip(old.sections, new.sections, strict=True):
        if after.keyword == "defaults":
            defaults = after
        if before.text == after.text:
            continue
        was, now = parse_section(before), parse_section(after)
        if after.keyword == "backend" and (now.static or was.static):
            return RuntimeChange(f"backend {after.name}: {now.static or was.static}")
        if was.skeleton != now.skeleton:
            where = f"{after.keyword} {after.name}".strip() or "the head"
            return RuntimeChange(
                f"{where} changed beyond servers: {_first_difference(was.skeleton, now.skeleton)}"
            )
        if after.keyword != "backend" or was.servers == now.servers:
            continue
        reason = _servers_reason(after.name, was, now, parse_section(defaults) if defaults else None)
        if reason:
            return RuntimeChange(reason)
        changed[after.name] = now.servers
    return RuntimeChange("", changed)


def _servers_reason(
    backend: str, was: ParsedSection, now: ParsedSection, defaults: ParsedSection | None
) -> str:
    """Why this backend's servers cannot go from ``was`` to ``now`` at runtime (``""``: they can)."""
    inherited = defaults.settings if defaults else {}
    for name, server in now.servers.items():
        previous = was.servers.get(name)
        if previous == server:
            continue
        if previous is None:
            if defaults is not None and defaults.static:
                return f"defaults: {defaults.static}"
            balance = now.settings.get("balance", inherited.get("balance", []))
            hash_type = now.settings.get("hash-type", inherited.get("hash-type", []))
            if not _balance_is_dynamic(balance, hash_type):
                return f"backend {backend} balances with an algorithm that cannot add servers at runtime"
        elif previous.options != server.options:
            return f"server {backend}/{name} changed its options"
        if not server.is_ip:
            return f"server {backend}/{name} is a DNS name, which a runtime server never resolves"
    return ""


def parse_servers_state(text: str) -> dict[str, dict[str, LiveServer]]:
    """``show servers state`` (format 1) → backend → server name → :class:`LiveServer`.

    Columns are found by the header line, so a version that adds columns still parses. Raises
    ValueError on an answer that is not that table (HAProxy answered an error instead)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1" or len(lines) < 2 or not lines[1].startswith("#"):
        raise ValueError(f"not a 'show servers state' table: {text.strip()[:200]!r}")
    columns = {name: i for i, name in enumerate(lines[1].lstrip("#").split())}
    needed = ("be_name", "srv_name", "srv_addr", "srv_admin_state", "srv_port", "srv_fqdn")
    if any(name not in columns for name in needed):
        raise ValueError(f"'show servers state' has no column among {needed}")
    found: dict[str, dict[str, LiveServer]] = {}
    for line in lines[2:]:
        if line.startswith("#"):
            continue
        fields = line.split()
        found.setdefault(fields[columns["be_name"]], {})[fields[columns["srv_name"]]] = LiveServer(
            backend=fields[columns["be_name"]],
            name=fields[columns["srv_name"]],
            addr=fields[columns["srv_addr"]],
            port=int(fields[columns["srv_port"]]),
            maint=bool(int(fields[columns["srv_admin_state"]]) & MAINT_BITS),
            fqdn=fields[columns["srv_fqdn"]],
        )
    return found


def _add(backend: str, server: Server) -> list[Command]:
    """Add, then enable, on one line: HAProxy 2.6 takes ``add server ... enabled`` and reports the
    server ready, but never sends it a request (it is not put into the balancing)."""
    target = f"{backend}/{server.name}"
    options = f" {' '.join(server.options)}" if server.options else ""
    commands = [Command(f"add server {target} {server.address}{options}", ("New server registered.",))]
    if "check" in server.options:
        commands.append(Command(f"enable health {target}", ("",), chained=True))
    commands.append(Command(f"enable server {target}", ("",), chained=True))
    return commands


def _set_addr(backend: str, server: Server) -> Command:
    return Command(
        f"set server {backend}/{server.name} addr {server.host} port {server.port}",
        ("IP changed", "no need to change", "port changed"),
    )


def plan_commands(
    desired: Mapping[str, Mapping[str, Server]], live: Mapping[str, Mapping[str, LiveServer]]
) -> RuntimePlan:
    """The commands that make ``live`` hold exactly ``desired``: adds first (capacity never dips),
    then address changes, then removed servers into maintenance (no new requests; the ones in
    flight finish) to be deleted once drained. A server in maintenance that is desired again (it
    was draining) is simply made ready."""
    adds: list[Command] = []
    changes: list[Command] = []
    removes: list[Command] = []
    drain: set[tuple[str, str]] = set()
    for backend in sorted(desired):
        want, have = desired[backend], live.get(backend, {})
        for name in sorted(want):
            server, current = want[name], have.get(name)
            if current is None:
                adds.extend(_add(backend, server))
                continue
            if not current.at(server):
                changes.append(_set_addr(backend, server))
            if current.maint:
                changes.append(Command(f"set server {backend}/{name} state ready", ("",)))
        for name in sorted(set(have) - set(want)):
            drain.add((backend, name))
            if not have[name].maint:
                removes.append(Command(f"set server {backend}/{name} state maint", ("",)))
    return RuntimePlan(tuple(adds + changes + removes), frozenset(drain))


def mismatch(
    desired: Mapping[str, Mapping[str, Server]],
    live: Mapping[str, Mapping[str, LiveServer]],
    draining: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
) -> str:
    """How ``live`` differs from ``desired`` (``""`` when it holds exactly the desired servers, in
    service, at their addresses; servers being drained may still be there, in maintenance)."""
    for backend in sorted(set(desired) | set(live)):
        want, have = desired.get(backend, {}), live.get(backend, {})
        for name in sorted(set(have) - set(want)):
            if not ((backend, name) in draining and have[name].maint):
                return f"{backend}/{name} is in HAProxy but not in the config"
        for name in sorted(want):
            server, current = want[name], have.get(name)
            if current is None:
                return f"{backend}/{name} is missing from HAProxy"
            if current.maint:
                return f"{backend}/{name} is in maintenance"
            if not current.at(server):
                return f"{backend}/{name} is at {current.addr}:{current.port}, not {server.address}"
    return ""
