"""The one place fleetop speaks HTTP: sessions to a fleet endpoint, health checks.

Everything else in the package stays free of httpx (an import-linter contract enforces it), so swapping
the HTTP library or changing its error behaviour touches this file only. httpx's exceptions never leave
it; they are translated at the boundary::

    httpx.TransportError (connect, read, write, pool, protocol, timeouts)
        └── raised as fleetop.errors.FleetUnavailable (a TemporaryError), ``from`` the original
    httpx.InvalidURL, httpx.UnsupportedProtocol
        └── raised as fleetop.errors.ConfigError

Endpoints are written the way ``FLEETCTL_ENDPOINT`` takes them: ``unix:///var/run/fleet.sock`` or
``http(s)://host:port``. A session talks to one endpoint (given a comma-separated list, its first
entry, as fleetctl does); failing over between several is the fleet client's job, which keeps one
session per endpoint. Tests inject an ``httpx`` transport (``MockTransport``) through
:class:`HttpSession`'s ``transport`` instead of patching anything.

A CLI verb that asks fleet three questions and exits (``fleetop status``) would spend more on importing
httpx (and what it imports: httpcore, anyio, its own command line with click and pygments) than on the
questions: :class:`PlainSession` asks them over the standard library's ``http.client``, one
connection per request in a worker thread, with the same results and errors. httpx is imported when
the first :class:`HttpSession` is made, not with this module.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urlsplit

from fleetop.errors import ConfigError, FleetUnavailable, TemporaryError

if TYPE_CHECKING:
    import http.client
    from typing import TypeAlias

    import httpx

    Transport: TypeAlias = httpx.AsyncBaseTransport
    """What replaces the network under a session (``httpx.MockTransport`` in tests); a name for
    annotations only, so that neither this module nor its callers import httpx to mention it."""

POOL_THREADS = 16
"""Requests of one :class:`PlainSession` in flight at once (each in a thread of the session's own)."""

UNIX_BASE_URL = "http://fleet"
"""The base URL requests carry over a unix socket (the host part is never resolved)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts of one HTTP session, in seconds."""

    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 5.0

    @classmethod
    def uniform(cls, seconds: float) -> Timeouts:
        return cls(seconds, seconds, seconds, seconds)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed endpoint: either a unix socket path or a base URL."""

    raw: str
    base_url: str
    socket_path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.socket_path is not None


def parse_endpoint(endpoint: str) -> Endpoint:
    """Parse ``unix:///path``, ``file:///path`` or ``http(s)://host[:port][/prefix]``.

    Raises ConfigError for anything else.
    """
    first = endpoint.split(",", maxsplit=1)[0].strip()
    parts = urlsplit(first)
    if parts.scheme in ("unix", "file"):
        path = parts.netloc + parts.path
        if not path:
            raise ConfigError(f"endpoint {first!r}: unix socket path is empty")
        return Endpoint(first, UNIX_BASE_URL, path)
    if parts.scheme in ("http", "https") and parts.netloc:
        return Endpoint(first, first.rstrip("/"))
    raise ConfigError(f"endpoint {first!r}: expected unix:///path or http(s)://host:port")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What callers get back: status, headers (names lower-cased, repeated ones comma-joined), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    header_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _response(resp: httpx.Response) -> HttpResponse:
    lists: dict[str, list[str]] = {}
    for key, value in resp.headers.multi_items():
        lists.setdefault(key.lower(), []).append(value)
    return HttpResponse(
        status=resp.status_code,
        headers={k: ", ".join(v) for k, v in lists.items()},
        body=resp.content,
        header_lists={k: tuple(v) for k, v in lists.items()},
    )


class Session(Protocol):
    """What the fleet client needs of a session: :class:`HttpSession` or :class:`PlainSession`."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...


class HttpSession:
    """An HTTP/1.1 session to one endpoint. Use as ``async with`` or call ``aclose()``.

    ``unavailable`` is the TemporaryError subclass raised on transport failures (FleetUnavailable by
    default, since the fleet client is the main user). ``transport`` replaces the network (tests).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeouts: Timeouts | None = None,
        headers: Mapping[str, str] | None = None,
        unavailable: type[TemporaryError] = FleetUnavailable,
        transport: Transport | None = None,
    ) -> None:
        import httpx

        self.endpoint = parse_endpoint(endpoint)
        self._unavailable = unavailable
        t = timeouts or Timeouts()
        if transport is None:
            transport = httpx.AsyncHTTPTransport(uds=self.endpoint.socket_path, retries=0)
        self._client = httpx.AsyncClient(
            base_url=self.endpoint.base_url,
            transport=transport,
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            headers=dict(headers or {}),
            follow_redirects=False,
            trust_env=False,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    ) -> HttpResponse:
        """Send one request; raise ``unavailable`` on any transport failure or timeout."""
        import httpx

        pairs = params.items() if isinstance(params, Mapping) else (params or [])
        query: list[tuple[str, str | int | float | bool | None]] = list(pairs)
        try:
            resp = await self._client.request(
                method, path, params=query or None, content=content, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise self._unavailable(f"{method} {path}: timed out ({type(exc).__name__})") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ConfigError(f"{method} {path}: {exc}") from exc
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise self._unavailable(f"{method} {path}: {detail}") from exc
        return _response(resp)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Timeout(Exception):
    """A timeout of one phase, named as httpx names it (``ConnectTimeout``, ``ReadTimeout``...)."""


class PlainSession:
    """The requests of :class:`HttpSession` over the standard library, for a process that makes a few and
    exits, and for the operator: one connection per request (so requests may run at once), each in a
    thread of the session's own (up to POOL_THREADS at once). The
    same :class:`HttpResponse`, the same errors and messages (``unavailable`` on a transport failure or
    timeout; a refused TCP connection reads ``[Errno 111] Connection refused`` where httpx, through anyio,
    says ``All connection attempts failed``), the same certificate authorities for ``https`` (certifi's,
    as httpx's default)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeouts: Timeouts | None = None,
        headers: Mapping[str, str] | None = None,
        unavailable: type[TemporaryError] = FleetUnavailable,
    ) -> None:
        self.endpoint = parse_endpoint(endpoint)
        self._unavailable = unavailable
        self._timeouts = timeouts or Timeouts()
        self._headers = dict(headers or {})
        base = urlsplit(self.endpoint.base_url)
        self._scheme, self._host, self._port = base.scheme, base.hostname or "", base.port
        self._root = base.path.rstrip("/")
        self._tls: Any = None
        self._pool: ThreadPoolExecutor | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    ) -> HttpResponse:
        """Send one request; raise ``unavailable`` on any transport failure or timeout."""
        pairs = list(params.items() if isinstance(params, Mapping) else (params or []))
        target = self._root + path + (f"?{urlencode(pairs)}" if pairs else "")
        sent = {**self._headers, **dict(headers.items() if isinstance(headers, Mapping) else headers or [])}
        if self._pool is None:
            # threads of its own (made as requests overlap): a long wait elsewhere in the process's default
            # pool (a render, a DNS lookup) never holds up fleet's requests
            self._pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="fleet-http")
        exchange = functools.partial(self._exchange, method, target, content, sent)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, exchange)
        except _Timeout as exc:
            raise self._unavailable(f"{method} {path}: timed out ({exc})") from exc
        except (OSError, ValueError) as exc:  # http.client's errors are OSError or ValueError
            detail = str(exc) or type(exc).__name__
            raise self._unavailable(f"{method} {path}: {detail}") from exc

    def _exchange(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> HttpResponse:
        import http.client

        connection = self._connect()
        try:
            phase = "WriteTimeout"
            try:
                connection.request(method, target, body=body, headers=headers)
                phase = "ReadTimeout"
                response = connection.getresponse()
                data = response.read()
            except TimeoutError:
                raise _Timeout(phase) from None
            except http.client.HTTPException as exc:
                raise OSError(str(exc) or type(exc).__name__) from exc
        finally:
            connection.close()
        lists: dict[str, list[str]] = {}
        for key, value in response.getheaders():
            lists.setdefault(key.lower(), []).append(value)
        return HttpResponse(
            status=response.status,
            headers={k: ", ".join(v) for k, v in lists.items()},
            body=data,
            header_lists={k: tuple(v) for k, v in lists.items()},
        )

    def _connect(self) -> http.client.HTTPConnection:
        import http.client

        t = self._timeouts
        try:
            if self.endpoint.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(t.connect)
                try:
                    sock.connect(self.endpoint.socket_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                port = self._port or (443 if self._scheme == "https" else 80)
                sock = socket.create_connection((self._host, port), timeout=t.connect)
                if self._scheme == "https":
                    self._tls = self._tls or _tls_context()
                    sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except TimeoutError:
            raise _Timeout("ConnectTimeout") from None
        sock.settimeout(max(t.read, t.write))
        connection = http.client.HTTPConnection(self._host or "fleet", self._port)
        connection.sock = sock
        return connection

    async def aclose(self) -> None:
        """No connection is kept open between requests; the threads are let go."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    async def __aenter__(self) -> PlainSession:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def _tls_context() -> Any:
    import ssl

    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


async def raw_request(
    endpoint: str,
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One request on a fresh session: for tools and tests that need exact bytes and headers."""
    async with HttpSession(endpoint, timeouts=Timeouts.uniform(timeout)) as session:
        return await session.request(method, path, content=content, headers=headers)


async def http_check(url: str, timeout: float) -> tuple[bool, str]:
    """GET ``url``; healthy on 2xx and 3xx. Never raises: returns (healthy, detail)."""
    import httpx

    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False
        ) as client:
            resp = await client.get(url)
    except httpx.TimeoutException:
        return False, f"timed out after {timeout:g}s"
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except ValueError as exc:  # malformed URL text
        return False, f"invalid URL: {exc}"
    healthy = 200 <= resp.status_code < 400
    return healthy, f"HTTP {resp.status_code}"


def json_body(data: Any) -> bytes:
    """Compact JSON with a trailing newline, as fleetctl's Go client sends it."""
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
