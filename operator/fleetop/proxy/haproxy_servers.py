"""An HAProxy config as a skeleton plus the servers of its backends, and the runtime commands that
take a running HAProxy from the servers it holds to the servers a new config names. Pure.

Why: a reload costs HAProxy about 150 ms and forks a new worker; changing servers through the
runtime API (``add server``, ``set server``, ``del server`` on the admin socket) costs one command
each. That is only safe when nothing but servers changed, so the agent splits both configs into

- the *skeleton*: every line that is not a ``server`` line of a ``backend`` section, with comments
  and blank lines dropped and whitespace normalised (HAProxy ignores both), and
- the *servers*: backend → server name → :class:`Server` (address, port, options).

Equal skeletons mean the configs differ only in servers. The server names of the built-in template
are the backend's ``host:port``, so a server keeps its name for as long as its address is registered
and a diff is meaningful. The commands are planned against what HAProxy reports it holds (``show
servers state``), not against the previous config, so a proxy restarted from the file, or one that
was already given part of the change, converges all the same.

Some configs cannot change servers at runtime, and :func:`runtime_change` says why instead of
planning (the agent then reloads): a server line this module does not understand (options outside a
small known set, names with characters HAProxy's command line would split on), servers named by DNS
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
_ADDRESS_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>[0-9]{1,5})")
# Admin-state bits of `show servers state` that mean "in maintenance": forced, inherited, from the
# config, from a failed resolution.
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20


@dataclass(frozen=True, slots=True)
class Server:
    """One server: ``host`` is an IP address (IPv6 without brackets) or a DNS name."""

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


@dataclass(frozen=True, slots=True)
class ServerModel:
    """A config split into skeleton and servers. ``static`` says why its servers cannot be changed
    at runtime (empty when they can); ``dynamic`` lists the backends that accept ``add server``."""

    skeleton: tuple[str, ...]
    backends: Mapping[str, Mapping[str, Server]]
    dynamic: frozenset[str] = frozenset()
    static: str = ""


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
    ip_a, ip_b = _ip(a), _ip(b)
    return ip_a == ip_b if ip_a is not None and ip_b is not None else a.lower() == b.lower()


def parse_server_line(tokens: list[str]) -> Server | str:
    """``["server", name, address, *options]`` → a :class:`Server`, or why it is not a plain one."""
    if len(tokens) < 3:
        return f"'{' '.join(tokens)}' has no address"
    name, address, options = tokens[1], tokens[2], tokens[3:]
    if not _TOKEN_RE.fullmatch(name):
        return f"server name {name!r} has characters the runtime API cannot take"
    match = _ADDRESS_RE.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return f"server {name} has an address without a plain host:port ({address!r})"
    host = match["v6"] or match["host"]
    if match["v6"] and _ip(host) is None:
        return f"server {name} has an invalid IPv6 address ({address!r})"
    i = 0
    while i < len(options):
        arity = SERVER_OPTIONS.get(options[i])
        if arity is None or i + arity > len(options) - 1:
            return f"server {name} has option {options[i]!r}, which is not changed at runtime"
        if not all(_TOKEN_RE.fullmatch(value) for value in options[i + 1 : i + 1 + arity]):
            return f"server {name} has an option value the runtime API cannot take"
        i += 1 + arity
    return Server(name, host, int(match["port"]), tuple(options))


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


class _Parser:
    """One pass over the config lines; sections start at their keyword, wherever indented."""

    def __init__(self) -> None:
        self.skeleton: list[str] = []
        self.backends: dict[str, dict[str, Server]] = {}
        self.dynamic: set[str] = set()
        self.static = ""
        self.section: tuple[str, str] = ("", "")
        self.defaults: dict[str, list[str]] = {}
        self.backend_opts: dict[str, list[str]] = {}

    def line(self, tokens: list[str]) -> None:
        keyword = tokens[0]
        if keyword in SECTIONS:
            self._end_backend()
            self.section = (keyword, tokens[1] if len(tokens) > 1 else "")
            if keyword == "defaults":
                self.defaults = {}
            elif keyword == "backend":
                self.backends.setdefault(self.section[1], {})
                self.backend_opts = {}
        elif keyword == "default-server" and not self.static:
            self.static = _default_server_reason(tokens)
        elif keyword in ("balance", "hash-type"):
            target = self.defaults if self.section[0] == "defaults" else self.backend_opts
            target[keyword] = tokens[1:]
        elif keyword == "server" and self.section[0] == "backend":
            self._server(tokens)
            return
        self.skeleton.append(" ".join(tokens))

    def _server(self, tokens: list[str]) -> None:
        parsed = parse_server_line(tokens)
        backend = self.section[1]
        if isinstance(parsed, str):
            self.static = self.static or parsed
            self.skeleton.append(" ".join(tokens))
        elif parsed.name in self.backends[backend]:
            self.static = self.static or f"server {parsed.name} appears twice in backend {backend}"
        else:
            self.backends[backend][parsed.name] = parsed

    def _end_backend(self) -> None:
        if self.section[0] != "backend":
            return
        balance = self.backend_opts.get("balance", self.defaults.get("balance", []))
        hash_type = self.backend_opts.get("hash-type", self.defaults.get("hash-type", []))
        if _balance_is_dynamic(balance, hash_type):
            self.dynamic.add(self.section[1])

    def model(self) -> ServerModel:
        self._end_backend()
        self.section = ("", "")
        return ServerModel(tuple(self.skeleton), self.backends, frozenset(self.dynamic), self.static)


def parse_config(body: str) -> ServerModel:
    """Split an HAProxy config into skeleton and servers."""
    parser = _Parser()
    for raw in body.splitlines():
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        parser.line(tokens)
    return parser.model()


def runtime_change(old: ServerModel, new: ServerModel) -> str:
    """Why going from ``old`` to ``new`` needs a reload, or ``""`` when servers can change at runtime."""
    if old.static or new.static:
        return new.static or old.static
    if old.skeleton != new.skeleton:
        changed = next(
            (line for line in new.skeleton if line not in set(old.skeleton)),
            next((line for line in old.skeleton if line not in set(new.skeleton)), "the line order"),
        )
        return f"the config changed beyond servers ({changed!r})"
    for backend, servers in new.backends.items():
        before = old.backends.get(backend, {})
        for name, server in servers.items():
            previous = before.get(name)
            if previous == server:
                continue
            if previous is None and backend not in new.dynamic:
                return f"backend {backend} balances with an algorithm that cannot add servers at runtime"
            if previous is not None and previous.options != server.options:
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
    target = f"{backend}/{server.name}"
    options = f" {' '.join(server.options)}" if server.options else ""
    commands = [Command(f"add server {target} {server.address}{options}", ("New server registered.",))]
    if "check" in server.options:
        commands.append(Command(f"enable health {target}", ("",)))
    commands.append(Command(f"enable server {target}", ("",)))
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
