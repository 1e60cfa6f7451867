"""etcd through its v3 HTTP/JSON gateway, with the standard library alone: for processes that must be small.

A sidekick runs next to every instance on a machine, and a CLI verb runs at a prompt; both do a handful
of requests. The gRPC client (:mod:`fleetop.etcd.client`) costs about 35 MB and 0.2 s of CPU to import, more
than the whole job. etcd serves the same API as JSON over HTTP (``/v3/kv/put``, ``/v3/lease/grant``,
...; keys and values in base64, 64-bit numbers as strings), so this module speaks it over a plain socket
(``ssl`` is imported only for TLS): a few hundred kilobytes, nothing to import but the standard library.

What it does like :mod:`fleetop.etcd.client`: several endpoints with failover (a request that cannot reach one
goes to the next and stays with the one that answers), TLS with a CA and a client certificate, user and
password authentication (the token is fetched again when etcd forgets it), a timeout on every request,
the installation's key root put in front of every key, and the same error tree: unreachable or
leaderless etcd is :class:`~fleetop.errors.EtcdUnavailable` (retry), a refused permission
:class:`~fleetop.errors.EtcdDenied`, an unknown lease :class:`~fleetop.errors.NotFound`.

One request at a time per client (a lock), on one kept-alive connection per client.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from typing import Any, NamedTuple

from fleetop.config import EtcdSettings
from fleetop.errors import Compacted, EtcdDenied, EtcdUnavailable, NotFound, PermanentError

_MAX_RESPONSE = 64 << 20
"""A response larger than this is refused (etcd's own limit on a message is 4 MiB by default)."""

# gRPC status codes that the gateway puts in its error bodies.
_NOT_FOUND, _PERMISSION_DENIED, _OUT_OF_RANGE, _UNAUTHENTICATED = 5, 7, 11, 16
_TEMPORARY = {1, 4, 8, 10, 13, 14}  # cancelled, deadline, exhausted, aborted, internal, unavailable


class GatewayRefusesCommonName(PermanentError):
    """etcd's gateway refuses a TLS client certificate that has a CommonName (etcd uses the CommonName
    as the user over gRPC only, and will not let the gateway ignore it silently). The gRPC client
    (:mod:`fleetop.etcd.client`) works with such a certificate."""


class KeyValue(NamedTuple):
    """One key as the gateway returns it; ``key`` without the installation root, decoded as UTF-8
    with ``surrogateescape`` (as :mod:`fleetop.etcd.model` does, so any byte string survives)."""

    key: str
    value: bytes
    lease: int
    mod_revision: int
    create_revision: int = 0
    version: int = 0


class Page(NamedTuple):
    """One answer of :meth:`Gateway.range_page`: the keys, the store's revision, whether more follow."""

    items: list[KeyValue]
    revision: int
    more: bool


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcdctl's ``--prefix``)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


class _Closed(Exception):
    """The kept-alive connection was closed by the server before a response: send again once."""


class Gateway:
    """A small synchronous etcd client over ``/v3/...`` JSON. Close it with :meth:`close`."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._current = 0
        self._token: str | None = None
        self._ssl: Any = None

    # -- the key-value API -------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        found = self.range(key, limit=1)
        return found[0] if found else None

    def range(self, key: str, *, prefix: bool = False, limit: int = 0) -> list[KeyValue]:
        """The key, or every key under ``key`` with ``prefix``, sorted by key."""
        return self.range_page(key, prefix=prefix, limit=limit).items

    def range_page(
        self,
        key: str,
        *,
        prefix: bool = False,
        limit: int = 0,
        revision: int = 0,
        start: bytes | None = None,
        keys_only: bool = False,
    ) -> Page:
        """One page of :meth:`range`: at most ``limit`` keys (0: all) at ``revision`` (0: the newest;
        an older one that etcd compacted raises :class:`~fleetop.errors.Compacted`), from the full key
        ``start`` on (with ``prefix``; a page's last key + ``\\0`` continues a listing)."""
        full = self.settings.key_of(key).encode("utf-8", "surrogateescape")
        if prefix and not full:
            full = b"\0"  # every key (etcd's form for the whole keyspace)
        body: dict[str, Any] = {"key": _b64(start if start is not None else full), "limit": limit}
        if prefix:
            body["range_end"] = _b64(_prefix_end(full) if full != b"\0" else b"\0")
        if revision:
            body["revision"] = str(revision)
        if keys_only:
            body["keys_only"] = True
        reply = self.call("/v3/kv/range", body)
        items = [self._kv(item) for item in reply.get("kvs", [])]
        header = reply.get("header")
        current = int(header.get("revision", 0)) if isinstance(header, dict) else 0
        return Page(items, current, bool(reply.get("more")))

    def put(self, key: str, value: str | bytes, *, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(self.settings.key_of(key)), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("/v3/kv/put", body)

    def delete_if_value(self, key: str, value: str | bytes) -> bool:
        """Delete ``key`` only while it holds ``value`` (a transaction). True when it was deleted."""
        full = _b64(self.settings.key_of(key))
        compare = {"key": full, "target": "VALUE", "result": "EQUAL", "value": _b64(value)}
        reply = self.call(
            "/v3/kv/txn", {"compare": [compare], "success": [{"request_delete_range": {"key": full}}]}
        )
        return bool(reply.get("succeeded"))

    # -- leases -------------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; the TTL it has again, 0 when etcd no longer knows it."""
        reply = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", reply).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys go with it); a lease already gone is fine."""
        with contextlib.suppress(NotFound):
            self.call("/v3/lease/revoke", {"ID": str(lease)})

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` of the endpoint in use (version, leader, ...)."""
        return self.call("/v3/maintenance/status", {})

    # -- the transport ------------------------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to ``path``; the decoded answer, or an error of the tree."""
        with self._lock:
            if self.settings.user and self._token is None and path != "/v3/auth/authenticate":
                self._authenticate()
            try:
                return self._call_failover(path, body)
            except _Unauthenticated:
                if not self.settings.user:
                    raise EtcdDenied("etcd requires authentication: set ETCDCTL_USER") from None
                self._authenticate()  # the token expired or etcd restarted: fetch a new one, once
                try:
                    return self._call_failover(path, body)
                except _Unauthenticated as exc:
                    raise EtcdDenied(f"etcd refused the token: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _authenticate(self) -> None:
        password = self.settings.password.get_secret_value() if self.settings.password else ""
        self._token = None
        try:
            reply = self._call_failover(
                "/v3/auth/authenticate", {"name": self.settings.user, "password": password}
            )
        except PermanentError as exc:
            if "authentication is not enabled" not in str(exc):
                raise
            self._token = ""  # etcd has authentication off: go on without a token, as the gRPC client does
            return
        self._token = str(reply["token"])

    def _call_failover(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        endpoints = self.settings.endpoints
        failures: list[str] = []
        for step in range(len(endpoints)):
            index = (self._current + step) % len(endpoints)
            try:
                return self._call_endpoint(index, path, body)
            except (OSError, _Closed, ValueError, EtcdUnavailable) as exc:
                self._disconnect()  # unreachable, or a member without a leader: try the next one
                failures.append(f"{endpoints[index]}: {_reason(exc)}")
        raise EtcdUnavailable(f"etcd unreachable ({'; '.join(failures)})")

    def _call_endpoint(self, index: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        reused = self._sock is not None and index == self._current
        if not reused:
            self._connect(index)
        try:
            status, data = self._exchange(path, payload)
        except _Closed:
            if not reused:
                raise
            self._connect(index)  # the server closed an idle connection: one fresh attempt
            status, data = self._exchange(path, payload)
        return _decode(status, data, self.settings.endpoints[index])

    def _connect(self, index: int) -> None:
        self._disconnect()
        host, _, port = self.settings.endpoints[index].rpartition(":")
        host = host.strip("[]")
        sock = socket.create_connection((host, int(port)), timeout=self.settings.dial_timeout)
        if self.settings.tls:
            sock = self._tls_context().wrap_socket(
                sock, server_hostname=self.settings.tls_server_name or host
            )
        sock.settimeout(self.settings.command_timeout)
        self._sock, self._current = sock, index

    def _tls_context(self) -> Any:
        if self._ssl is None:
            import ssl  # only a TLS client pays for it

            context = ssl.create_default_context(
                cafile=str(self.settings.cacert) if self.settings.cacert else None
            )
            if self.settings.cert and self.settings.key:
                context.load_cert_chain(str(self.settings.cert), str(self.settings.key))
            self._ssl = context
        return self._ssl

    def _disconnect(self) -> None:
        sock, self._sock, self._buffer = self._sock, None, b""
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _exchange(self, path: str, payload: bytes) -> tuple[int, bytes]:
        assert self._sock is not None
        host = self.settings.endpoints[self._current]
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
        head.append(f"Content-Length: {len(payload)}")
        if self._token:
            head.append(f"Authorization: {self._token}")
        self._sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status_line = self._read_line()
        if not status_line:
            raise _Closed()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        while line := self._read_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = self._read_chunked()
        else:
            data = self._read_exact(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self._disconnect()
        return int(parts[1]), data

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise _Closed()
        self._buffer += chunk
        if len(self._buffer) > _MAX_RESPONSE:
            raise ValueError("response too large")

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            try:
                self._fill()
            except _Closed:
                if self._buffer:
                    raise ValueError("truncated response") from None
                return b""
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _read_exact(self, size: int) -> bytes:
        if size > _MAX_RESPONSE:
            raise ValueError("response too large")
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int(self._read_line().split(b";")[0] or b"0", 16)
            if size == 0:
                while self._read_line():  # trailers, then the blank line
                    pass
                return bytes(out)
            out += self._read_exact(size)
            self._read_exact(2)
            if len(out) > _MAX_RESPONSE:
                raise ValueError("response too large")

    def _kv(self, item: dict[str, Any]) -> KeyValue:
        key = base64.b64decode(item.get("key", "")).decode("utf-8", "surrogateescape")
        root = self.settings.prefix
        return KeyValue(
            key=key[len(root) :] if root and key.startswith(root) else key,
            value=base64.b64decode(item.get("value", "")),
            lease=int(item.get("lease", 0)),
            mod_revision=int(item.get("mod_revision", 0)),
            create_revision=int(item.get("create_revision", 0)),
            version=int(item.get("version", 0)),
        )


class _Unauthenticated(Exception):
    """etcd did not accept the token (expired, or etcd restarted and forgot it)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, _Closed):
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _decode(status: int, data: bytes, endpoint: str) -> dict[str, Any]:
    """The JSON body of a 200, else the gateway's error (``{"code": N, "message": ...}``) as ours.

    A streamed answer (``/v3/lease/keepalive``) carries its error inside: ``{"error": {...}}``.
    """
    try:
        decoded = json.loads(data) if data else {}
    except ValueError:
        decoded = {}
    reply: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
    if status == 200 and "error" not in reply:
        return reply
    inner = reply.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else reply
    code = int(error.get("code", 0) or 0)
    message = str(error.get("message") or error.get("error") or f"HTTP {status}")
    if status == 400 and b"CommonName of client" in data:
        raise GatewayRefusesCommonName(f"{endpoint}: {data.decode(errors='replace').strip()}")
    if code == _UNAUTHENTICATED or "invalid auth token" in message or "user name is empty" in message:
        raise _Unauthenticated(message)
    if code == _NOT_FOUND:
        raise NotFound(message)
    if code == _OUT_OF_RANGE and "compacted" in message:
        raise Compacted(0)  # a read at a compacted revision (the gateway does not say which one is left)
    if code == _PERMISSION_DENIED or "authentication failed" in message or "permission denied" in message:
        raise EtcdDenied(message)
    if code in _TEMPORARY or (status >= 500 and not code):
        raise EtcdUnavailable(f"{endpoint}: {message}")
    raise PermanentError(f"{endpoint}: {message}")
