"""ProxySpec: an nginx or HAProxy in front of services, with routes by host and path."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fleetop.models.base import Duration, StrictModel, check_line, check_name
from fleetop.models.networks import DEFAULT_ALLOWED_NETWORKS, NetworkList
from fleetop.models.service import Placement

HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
PATH_RE = re.compile(r"^/[A-Za-z0-9._~/\-]*$")
_CONFIG_PATH_RE = re.compile(r"^/[A-Za-z0-9._/\-]+$")


def parse_listen(value: str | int) -> str:
    """``8080`` / ``"8080"`` / ``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``"*:80"`` → ``host:port``
    (host ``*`` means every address)."""
    if isinstance(value, bool):
        raise ValueError("listen must be a port or host:port")
    text = str(value).strip()
    if text.isdigit():
        host, port_text = "*", text
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"listen {text!r} must be a port or host:port")
        if host.startswith("["):
            if not host.endswith("]"):
                raise ValueError(f"listen {text!r}: unterminated IPv6 address")
            ipaddress.IPv6Address(host[1:-1])
        elif host != "*":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                if not HOST_RE.match(host) or host.startswith("*"):
                    raise ValueError(f"listen {text!r}: {host!r} is not an address") from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"listen port {port} must be 1-65535")
    return f"{host}:{port}"


class Route(StrictModel):
    """Requests for ``host`` (any host when absent) under ``path`` (``/`` when absent) go to ``service``."""

    service: str
    host: str | None = None
    path: str | None = None

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return check_name(value, "service")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not HOST_RE.match(value)):
            raise ValueError(f"host {value!r} must be a DNS name like 'www.example.com' or '*.example.com'")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not PATH_RE.match(value):
            raise ValueError(f"path {value!r} must start with '/' and use only letters, digits and ._~/-")
        return value


class Wait(StrictModel):
    """Render coalescing (consul-template's quiescence): a change renders at once when the proxy has
    been quiet; during a burst, renders wait for ``min`` of quiet but never longer than ``max``."""

    min: Duration = 0.05
    max: Duration = 1.0

    @model_validator(mode="after")
    def _order(self) -> Wait:
        if self.min > self.max:
            raise ValueError("wait.min must not exceed wait.max")
        return self


class Headers(StrictModel):
    """Response headers the built-in templates add. ``handler``: ``X-Handler: <backend address>``."""

    handler: bool = False


Command = list[str] | str


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
    routes: list[Route] = Field(default_factory=list)
    managed: bool = True
    replicas: int = Field(default=1, ge=0, le=100)
    placement: Placement = Field(default_factory=Placement)
    config_path: str | None = None
    check_cmd: Command | None = None
    reload_cmd: Command | None = None
    template: str | None = None
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
            raise ValueError(f"configPath {value!r} must be an absolute path of letters, digits and ._/-")
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
