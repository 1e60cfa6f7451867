"""ProxySpec: an nginx or HAProxy in front of services, with routes by host and path."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fleetop.models.base import Duration, StrictModel, check_line, check_name, duration_between, shown
from fleetop.models.networks import DEFAULT_ALLOWED_NETWORKS, NetworkList
from fleetop.models.service import COMMAND_CHARS, PATH_CHARS, Placement

HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
PATH_RE = re.compile(r"^/[A-Za-z0-9._~/\-]*$")
_CONFIG_PATH_RE = re.compile(r"^/[A-Za-z0-9._/\-]+$")
ROUTES = 10_000
TEMPLATE_CHARS = 64 * 1024
COMMAND_ARGS = 64
ETCD_PORTS = frozenset({2379, 2380, 4001, 7001})
"""etcd's client and peer ports (and the legacy ones CoreOS machines used): a proxy listening there
could answer in etcd's place on a machine where etcd is not running yet."""
WaitBound = Annotated[Duration, *duration_between(0.0, 60.0, "wait")]


def parse_listen(value: str | int) -> str:
    """``8080`` / ``"8080"`` / ``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``"*:80"`` → ``host:port``
    (host ``*`` means every address). The host is an IP literal a proxy may bind, never a DNS name
    (resolved by whom, and when?); the port is not one of etcd's (:data:`ETCD_PORTS`)."""
    if isinstance(value, bool):
        raise ValueError("listen must be a port or host:port")
    text = str(value).strip()
    if len(text) > 64:
        raise ValueError(f"listen {shown(text, 64)!r} must be a port or host:port")
    if text.isascii() and text.isdigit():
        host, port_text = "*", text
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isascii() or not port_text.isdigit():
            raise ValueError(f"listen {text!r} must be a port or host:port")
        _check_listen_host(host, text)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"listen port {port} must be 1-65535")
    if port in ETCD_PORTS:
        raise ValueError(
            f"listen port {port} is one of etcd's ports ({', '.join(map(str, sorted(ETCD_PORTS)))})"
        )
    return f"{host}:{port}"


def _check_listen_host(host: str, text: str) -> None:
    """``*``, an IPv4 literal or ``[IPv6]``: addresses of this machine's kind, not names."""
    if host == "*":
        return
    try:
        if host.startswith("["):
            if not host.endswith("]"):
                raise ValueError("unterminated")
            ipaddress.IPv6Address(host[1:-1])
        else:
            ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"listen {text!r}: {host!r} is not an IP address ('*', an IPv4 address or [IPv6]; a proxy"
            " binds addresses, not names)"
        ) from None


class Route(StrictModel):
    """Requests for ``host`` (any host when absent) under ``path`` (``/`` when absent) go to ``service``."""

    service: str = Field(max_length=63)
    host: str | None = Field(default=None, max_length=253)
    path: str | None = Field(default=None, max_length=PATH_CHARS)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return check_name(value, "service")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not HOST_RE.match(value)):
            raise ValueError(
                f"host {shown(value)!r} must be a DNS name like 'www.example.com' or '*.example.com'"
            )
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not PATH_RE.match(value):
            raise ValueError(
                f"path {shown(value)!r} must start with '/' and use only letters, digits and ._~/-"
            )
        return value


class Wait(StrictModel):
    """Render coalescing (consul-template's quiescence): a change renders at once when the proxy has
    been quiet; during a burst, renders wait for ``min`` of quiet but never longer than ``max``."""

    min: WaitBound = 0.05
    max: WaitBound = 1.0

    @model_validator(mode="after")
    def _order(self) -> Wait:
        if self.min > self.max:
            raise ValueError("wait.min must not exceed wait.max")
        return self


class Headers(StrictModel):
    """Response headers the built-in templates add. ``handler``: ``X-Handler: <backend address>``."""

    handler: bool = False


CommandText = Annotated[str, Field(max_length=COMMAND_CHARS)]
Command = Annotated[list[CommandText], Field(max_length=COMMAND_ARGS)] | CommandText


def _check_command(value: Command | None, what: str) -> Command | None:
    if value is None:
        return None
    parts = [value] if isinstance(value, str) else value
    if not parts or not all(p.strip() for p in parts):
        raise ValueError(f"{what} must not be empty")
    for part in parts:
        check_line(part, what)
    return value


class ProxySpec(StrictModel):
    """``/desired/proxies/<name>``: a proxy, its routes, and how its config is applied."""

    kind: Literal["nginx", "haproxy"]
    name: str | None = None
    listen: str | int
    routes: list[Route] = Field(default_factory=list, max_length=ROUTES)
    managed: bool = True
    replicas: int = Field(default=1, ge=0, le=100)
    placement: Placement = Field(default_factory=Placement)
    config_path: str | None = Field(default=None, max_length=PATH_CHARS)
    check_cmd: Command | None = None
    reload_cmd: Command | None = None
    template: str | None = Field(default=None, max_length=TEMPLATE_CHARS)
    wait: Wait = Field(default_factory=Wait)
    headers: Headers = Field(default_factory=Headers)
    allowed_networks: NetworkList = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_NETWORKS),
        description="CIDRs the backends may be in (after names are resolved); registrations outside are"
        " skipped and reported. Default: the private and loopback ranges.",
        json_schema_extra={"default": list(DEFAULT_ALLOWED_NETWORKS)},
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return check_name(value) if value is not None else None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | int) -> str:
        return parse_listen(value)

    @field_validator("config_path")
    @classmethod
    def _config_path(cls, value: str | None) -> str | None:
        if value is not None and (not _CONFIG_PATH_RE.match(value) or ".." in value.split("/")):
            raise ValueError(
                f"configPath {shown(value)!r} must be an absolute path of letters, digits and ._/-"
            )
        return value

    @field_validator("check_cmd")
    @classmethod
    def _check(cls, value: Command | None) -> Command | None:
        return _check_command(value, "checkCmd")

    @field_validator("reload_cmd")
    @classmethod
    def _reload(cls, value: Command | None) -> Command | None:
        return _check_command(value, "reloadCmd")

    @model_validator(mode="after")
    def _routes(self) -> ProxySpec:
        seen: set[tuple[str | None, str]] = set()
        for route in self.routes:
            key = (route.host, route.path or "/")
            if key in seen:
                raise ValueError(f"two routes for host {route.host or '*'} and path {route.path or '/'}")
            seen.add(key)
        return self
