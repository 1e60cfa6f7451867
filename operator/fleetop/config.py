"""Where etcd is and how to talk to it, from flags and the environment the ecosystem already uses.

People who run fleet clusters already have these settings in place: etcdctl's own variables
(``ETCDCTL_ENDPOINTS``, ``ETCDCTL_CACERT``, ``ETCDCTL_CERT``, ``ETCDCTL_KEY``, ``ETCDCTL_USER``,
``ETCDCTL_PASSWORD``, ``ETCDCTL_DIAL_TIMEOUT``, ``ETCDCTL_COMMAND_TIMEOUT``) and the
``ETCD_ENDPOINT=...`` line that etcd's unit writes to ``/etc/etcd.environment`` for containers and
sidekicks. So fleetop reads exactly those, in this order, with command-line flags winning:

1. ``--endpoints`` (flag), 2. ``ETCDCTL_ENDPOINTS``, 3. ``ETCD_ENDPOINT``, 4. the environment file
(``FLEETOP_ETCD_ENV_FILE``, default ``/etc/etcd.environment`` when it exists, read like systemd's
``EnvironmentFile=``), 5. ``127.0.0.1:2379``.

fleet is found the way fleetctl finds it: ``--fleet-endpoint``, else ``FLEETCTL_ENDPOINT``, else
``unix:///var/run/fleet.sock``; unlike fleetctl, which uses the first entry of a comma-separated list,
fleetop keeps every entry and fails over between them (:func:`fleet_endpoints_from`).

The precedence is explicit code rather than a settings framework because one variable may come from a
file and the error must name the exact variable (or flag) that was wrong. The password is a
:class:`SecretStr`: it never appears in ``repr()``, ``str()`` or logs. Standard library only, so that
the lean sidekick and the CLI's first screen pay nothing for it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from fleetop.errors import ConfigError
from fleetop.timefmt import parse_go_duration

DEFAULT_ENDPOINT = "127.0.0.1:2379"
DEFAULT_FLEET_ENDPOINT = "unix:///var/run/fleet.sock"
DEFAULT_ENV_FILE = Path("/etc/etcd.environment")
ENV_FILE_VAR = "FLEETOP_ETCD_ENV_FILE"

_DNS_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")


class SecretStr:
    """A password that never shows itself: ``repr()`` and ``str()`` print stars."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __str__(self) -> str:
        return "**********"


class EtcdSettings(NamedTuple):
    """How to reach etcd. Build it with :func:`settings_from`; the fields are already validated.

    ``endpoints`` are ``host:port`` without scheme (IPv6 hosts in brackets); ``tls`` says whether to
    speak TLS (an ``https://`` endpoint or any certificate file turns it on). ``prefix`` is the key
    root of this installation: ``""`` means ``/``, otherwise it starts with ``/`` and has no trailing
    ``/``; :class:`fleetop.etcd.client.Etcd` prepends it to every key transparently.

    A named tuple rather than a dataclass: ``dataclasses`` imports ``inspect``, a megabyte in every
    sidekick.
    """

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    tls: bool = False
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    tls_server_name: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    dial_timeout: float = 5.0
    command_timeout: float = 5.0
    prefix: str = ""

    def key_of(self, path: str) -> str:
        """The full etcd key of a logical key (``/desired/services/web``) under this installation."""
        return self.prefix + path

    def describe(self) -> str:
        """One line for logs and ``fleetop status``; never contains the password."""
        scheme = "https" if self.tls else "http"
        who = f" as {self.user}" if self.user else ""
        root = self.prefix or "/"
        return f"etcd {','.join(f'{scheme}://{e}' for e in self.endpoints)}{who} (root {root})"

    def __str__(self) -> str:
        return self.describe()


def parse_env_file(path: Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines the way systemd's ``EnvironmentFile=`` does.

    Blank lines and lines starting with ``#`` or ``;`` are skipped, a trailing backslash continues a
    line, whitespace around key and value is dropped, and one pair of surrounding single or double
    quotes is removed (with ``\\"`` and ``\\\\`` escapes inside double quotes).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{ENV_FILE_VAR}: cannot read {path}: {exc.strerror or exc}") from exc
    result: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        if name.startswith("export "):
            name = name[len("export ") :].strip()
        result[name] = _unquote(value.strip())
    return result


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == '"':
            inner = re.sub(r"\\(.)", r"\1", inner)
        return inner
    return value


def parse_endpoints(value: str, source: str) -> tuple[tuple[str, ...], bool]:
    """``"http://a:2379,b:2379"`` → (``("a:2379", "b:2379")``, tls). Mixed http/https is an error."""
    endpoints: list[str] = []
    schemes: set[str] = set()
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        scheme, rest = "", item
        if "://" in item:
            scheme, _, rest = item.partition("://")
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                raise ConfigError(f"{source}: unsupported scheme {scheme!r} in {item!r} (use http or https)")
            schemes.add(scheme)
        endpoints.append(_host_port(rest.rstrip("/"), item, source))
    if not endpoints:
        raise ConfigError(f"{source}: no endpoint given")
    if len(schemes) > 1:
        raise ConfigError(f"{source}: mixes http:// and https:// endpoints")
    return tuple(endpoints), schemes == {"https"}


def _host_port(text: str, original: str, source: str) -> str:
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1 :]) if end > 0 else ("", "")
        valid_host = _is_ip(host, 6) and (not rest or rest.startswith(":"))
        port, shown = rest[1:], f"[{host}]"
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
        valid_host = _is_ip(host, 4) or _is_dns_name(host)
        shown = host
    if not valid_host:
        raise ConfigError(f"{source}: {original!r} is not host:port")
    if not port:
        port = "2379"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: {original!r} has an invalid port")
    return f"{shown}:{int(port)}"


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def _is_dns_name(host: str) -> bool:
    if not host or len(host) > 253 or host.replace(".", "").isdigit():
        return False
    return all(_DNS_LABEL.match(label) for label in host.rstrip(".").split("."))


def parse_fleet_endpoint(item: str, source: str) -> str:
    """One fleet endpoint as fleetctl takes it: ``unix:///path`` (or ``file:///path``) or
    ``http(s)://host[:port][/prefix]``. Returns it stripped; raises ConfigError naming it."""
    text = item.strip()
    expected = "expected unix:///path or http://host:port"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{source}: {text!r} is not a fleet endpoint ({expected})") from None
    if parts.scheme in ("unix", "file"):
        if not (parts.netloc + parts.path):
            raise ConfigError(f"{source}: {text!r}: the unix socket path is empty")
        return text
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: {text!r} is not a fleet endpoint ({expected})")
    host = parts.hostname
    if not (_is_ip(host, 4) or _is_ip(host, 6) or _is_dns_name(host)) or port == 0:
        raise ConfigError(f"{source}: {text!r} is not a fleet endpoint ({expected})")
    return text.rstrip("/")


def parse_fleet_endpoints(value: str, source: str) -> tuple[str, ...]:
    """``"unix:///a.sock,http://10.0.0.2:49153"`` → each endpoint, in order (the client fails over
    between them). An empty entry or a bad endpoint is a ConfigError naming it and ``source``."""
    items = value.split(",")
    if not value.strip():
        raise ConfigError(f"{source}: no fleet endpoint given")
    found: list[str] = []
    for position, item in enumerate(items, start=1):
        if not item.strip():
            raise ConfigError(f"{source}: entry {position} of {value!r} is empty")
        endpoint = parse_fleet_endpoint(item, source)
        if endpoint not in found:
            found.append(endpoint)
    return tuple(found)


def fleet_endpoints_from(flags: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, ...]:
    """fleet's endpoints from ``--fleet-endpoint`` (flag name ``fleet_endpoint``), else
    ``FLEETCTL_ENDPOINT``, else ``unix:///var/run/fleet.sock``; validated (ConfigError names the bad one)."""
    found = Lookup(flags, environ).get("fleet_endpoint", "FLEETCTL_ENDPOINT")
    if found is None:
        return (DEFAULT_FLEET_ENDPOINT,)
    return parse_fleet_endpoints(*found)


def _timeout(value: str, source: str) -> float:
    """An etcd timeout flag (Go's duration syntax, as etcdctl): more than 0, at most an hour."""
    try:
        seconds = parse_go_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not 0 < seconds <= 3600:
        raise ConfigError(f"{source}: {value!r} must be between 0 and 1h")
    return seconds


def _normalize_prefix(value: str, source: str) -> str:
    prefix = value.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ConfigError(f"{source}: {value!r} must start with /")
    if any(c.isspace() or ord(c) < 32 for c in prefix):
        raise ConfigError(f"{source}: {value!r} contains whitespace or control characters")
    return prefix


def _file(value: str, source: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}: {value} is not a readable file")
    return path


class Lookup:
    """Looks a setting up in flags first, then the environment; remembers where it came from.

    The one lookup of every fleetop setting (etcd's here, ``fleetop run``'s in
    :mod:`fleetop.controller.runtime.settings`): :meth:`get` returns the value with its source
    (``--lease-duration``, ``FLEETOP_LEASE_DURATION``; the environment file's values carry
    ``ETCDCTL_ENDPOINTS in /etc/etcd.environment``), and every parser puts that source first in its
    error, so a bad value is always traced to the place it was written."""

    def __init__(self, flags: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.flags = flags
        self.environ = environ

    def get(self, flag: str, *variables: str) -> tuple[str, str] | None:
        """(value, source name) from ``--flag`` or the first set variable; None when unset."""
        value = self.flags.get(flag)
        if value is not None and value != "":
            if isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)
            return str(value), f"--{flag.replace('_', '-')}"
        for name in variables:
            env_value = self.environ.get(name, "")
            if env_value.strip():
                return env_value, name
        return None


def _endpoints(look: Lookup) -> tuple[tuple[str, ...], bool]:
    found = look.get("endpoints", "ETCDCTL_ENDPOINTS", "ETCD_ENDPOINT")
    if found is None:
        found = _from_env_file(look)
    if found is None:
        return (DEFAULT_ENDPOINT,), False
    return parse_endpoints(*found)


def _from_env_file(look: Lookup) -> tuple[str, str] | None:
    explicit = look.get("env_file", ENV_FILE_VAR)
    if explicit is not None:
        path = Path(explicit[0]).expanduser()
        if not path.is_file():
            raise ConfigError(f"{explicit[1]}: {explicit[0]} is not a readable file")
    elif DEFAULT_ENV_FILE.is_file():
        path = DEFAULT_ENV_FILE
    else:
        return None
    values = parse_env_file(path)
    for name in ("ETCDCTL_ENDPOINTS", "ETCD_ENDPOINT"):
        if values.get(name, "").strip():
            return values[name], f"{name} in {path}"
    return None


def _credentials(look: Lookup) -> tuple[str | None, SecretStr | None]:
    found = look.get("user", "ETCDCTL_USER")
    if found is None:
        return None, None
    value, source = found
    user, sep, password = value.partition(":")
    if not user.strip():
        raise ConfigError(f"{source}: empty user name (use user:password)")
    if not sep:
        secret = look.get("password", "ETCDCTL_PASSWORD")
        if secret is None:
            raise ConfigError(f"{source}: no password: use user:password or set ETCDCTL_PASSWORD")
        password = secret[0]
    return user.strip(), SecretStr(password)


def inherited_flags(root: object) -> dict[str, Any]:
    """The main CLI's global connection flags (``fleetop --endpoints E <verb>``), read from its context
    object ``root`` (``ctx.find_root().obj``, which holds them as ``flags``); {} when a verb runs on its
    own. Duck-typed, so that the verbs of the separate programs need not import the main CLI."""
    flags = getattr(root, "flags", None)
    return dict(flags) if isinstance(flags, dict) else {}


def etcd_flags(inherited: Mapping[str, Any], endpoints: str | None, root: str | None) -> dict[str, Any]:
    """The etcd flags for :func:`settings_from`: the main CLI's global ones (``fleetop --endpoints E
    --prefix /root register ...``), overridden by the verb's own ``--endpoints`` and ``--root``
    (``fleetop register`` and the sidekick)."""
    flags = dict(inherited)
    if endpoints:
        flags["endpoints"] = endpoints
    if root:
        flags["prefix"] = root
    return flags


def settings_from(flags: Mapping[str, Any], environ: Mapping[str, str]) -> EtcdSettings:
    """Settings from CLI ``flags`` (None or "" means not given) over ``environ``.

    Flag names: ``endpoints`` (str or list), ``cacert``, ``cert``, ``key``, ``tls_server_name``,
    ``user`` (``user`` or ``user:password``), ``password``, ``dial_timeout``, ``command_timeout``,
    ``prefix``, ``env_file``. Raises :class:`ConfigError` naming the flag or variable at fault.
    """
    look = Lookup(flags, environ)
    endpoints, tls = _endpoints(look)
    files: dict[str, Path | None] = {}
    for field, variable in (("cacert", "ETCDCTL_CACERT"), ("cert", "ETCDCTL_CERT"), ("key", "ETCDCTL_KEY")):
        found = look.get(field, variable)
        files[field] = _file(*found) if found else None
    if (files["cert"] is None) != (files["key"] is None):
        missing = "ETCDCTL_KEY (--key)" if files["key"] is None else "ETCDCTL_CERT (--cert)"
        raise ConfigError(f"{missing}: a client certificate needs both a certificate and a key")
    user, password = _credentials(look)
    timeouts: dict[str, float] = {}
    for field, variable, default in (
        ("dial_timeout", "ETCDCTL_DIAL_TIMEOUT", 5.0),
        ("command_timeout", "ETCDCTL_COMMAND_TIMEOUT", 5.0),
    ):
        found = look.get(field, variable)
        timeouts[field] = _timeout(*found) if found else default
    prefix_found = look.get("prefix", "FLEETOP_PREFIX")
    server_name = look.get("tls_server_name", "FLEETOP_ETCD_TLS_SERVER_NAME")
    return EtcdSettings(
        endpoints=endpoints,
        tls=tls or any(files.values()),
        cacert=files["cacert"],
        cert=files["cert"],
        key=files["key"],
        tls_server_name=server_name[0].strip() if server_name else None,
        user=user,
        password=password,
        dial_timeout=timeouts["dial_timeout"],
        command_timeout=timeouts["command_timeout"],
        prefix=_normalize_prefix(*prefix_found) if prefix_found else "",
    )


def settings_from_environment(flags: Mapping[str, Any] | None = None) -> EtcdSettings:
    """:func:`settings_from` over this process's environment."""
    return settings_from(flags or {}, os.environ)
