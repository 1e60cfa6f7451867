"""The gRPC side of :mod:`fleetop.etcd.client`: the channel, error translation, protobuf ↔ dataclasses.

Together with :mod:`fleetop.etcd.client` this is the only place that imports etcd3aio or grpc (the
import-linter contract in ``pyproject.toml`` names both). It is split out so ``etcd.py`` reads as the
client API while this module holds the mechanics that an etcd3aio or grpcio upgrade may touch.

Why the channel is built here rather than by ``etcd3aio.Etcd3Client``: its connection manager
replaces the text ``localhost`` and accepts only IP addresses (an ``ipv4:`` target), and it enables
TLS only when a CA file is given. Here names are resolved when connecting (IPv4 preferred), every
member is in one round-robin target (a dead member is skipped: failover), the reconnect timings
are etcd's (:func:`open_channel`) rather than gRPC's defaults, and ``https://`` without a CA file
verifies against the system roots.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb
from etcd3aio.kv import KVService, prefix_range_end

from fleetop.config import EtcdSettings
from fleetop.errors import (
    Compacted,
    ConfigError,
    EtcdDenied,
    EtcdUnavailable,
    FleetopError,
    NotFound,
    PermanentError,
)
from fleetop.etcd.model import Compare, KeyValue, Op, OpResult, WatchEvent, decode_key

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Certificate problems do not go away by retrying; other handshake hiccups (a member restarting) do.
_TLS_REJECTED = ("certificate", "peer name", "hostname verification")
_DENIED = ("permission denied", "authentication failed", "invalid user id or password")
_TEMPORARY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_TARGETS = {
    "value": pb.Compare.VALUE,
    "version": pb.Compare.VERSION,
    "create": pb.Compare.CREATE,
    "mod": pb.Compare.MOD,
    "lease": pb.Compare.LEASE,
}
_FIELDS = {"value": "value", "version": "version", "create": "create_revision", "mod": "mod_revision"}
_OPS = {"==": pb.Compare.EQUAL, "!=": pb.Compare.NOT_EQUAL, "<": pb.Compare.LESS, ">": pb.Compare.GREATER}


def translate(exc: BaseException, what: str, settings: EtcdSettings) -> FleetopError:
    """The fleetop error for an etcd3aio/grpc/timeout failure of operation ``what``."""
    if isinstance(exc, FleetopError):
        return exc
    if isinstance(exc, TimeoutError):
        where = ",".join(settings.endpoints)
        return EtcdUnavailable(
            f"{what}: etcd at {where} did not answer within {settings.command_timeout:g} s"
        )
    rpc = exc if isinstance(exc, grpc.aio.AioRpcError) else exc.__cause__
    code = rpc.code() if isinstance(rpc, grpc.aio.AioRpcError) else None
    detail = (rpc.details() if isinstance(rpc, grpc.aio.AioRpcError) else None) or str(exc)
    lowered = detail.lower()
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
        marker in lowered for marker in _DENIED
    ):
        return EtcdDenied(f"{what}: etcd denied the request: {detail}")
    if "user name is empty" in lowered:
        return EtcdDenied(f"{what}: etcd requires authentication, set ETCDCTL_USER ({detail})")
    if any(marker in lowered for marker in _TLS_REJECTED):
        return EtcdDenied(
            f"{what}: TLS handshake with etcd failed; check the https:// endpoints, ETCDCTL_CACERT, "
            f"ETCDCTL_CERT and ETCDCTL_KEY: {detail}"
        )
    if "required revision has been compacted" in lowered:
        return Compacted(0)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {detail}")
    if code in _TEMPORARY and "larger than max" not in lowered:
        return EtcdUnavailable(f"{what}: etcd unavailable: {detail}")
    return PermanentError(f"{what}: etcd refused the request: {detail}")


def _split_host(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


async def _grpc_target(endpoints: Sequence[str]) -> str:
    """An ``ipv4:a:p,b:p`` (or ``ipv6:``) target with every member; names resolved now."""
    loop = asyncio.get_running_loop()
    v4: list[str] = []
    v6: list[str] = []
    for endpoint in endpoints:
        host, port = _split_host(endpoint)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve etcd endpoint %s: %s", endpoint, exc)
            continue
        for family, _, _, _, sockaddr in infos:
            address = str(sockaddr[0])
            if family == socket.AF_INET and f"{address}:{port}" not in v4:
                v4.append(f"{address}:{port}")
            elif family == socket.AF_INET6 and f"[{address}]:{port}" not in v6:
                v6.append(f"[{address}]:{port}")
    if v4:
        return "ipv4:" + ",".join(v4)
    if v6:
        return "ipv6:" + ",".join(v6)
    raise EtcdUnavailable(f"cannot resolve any etcd endpoint of {','.join(endpoints)}")


def _read_file(path: Path | None, variable: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from exc


def _system_roots() -> bytes | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return None  # grpc falls back to its own bundled roots


def _tls_name(settings: EtcdSettings) -> str:
    if settings.tls_server_name:
        return settings.tls_server_name
    hosts = [_split_host(e)[0] for e in settings.endpoints]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return host
    return hosts[0]


RECONNECT_BACKOFF_MS = (100, 500)
"""gRPC's pause between two connection attempts to a member: the first, and the cap it grows to (1.6 times
each attempt, ±20 % jitter). gRPC's defaults are 1 s and 120 s, so an etcd back after a minute away
was found up to two minutes later. With 500 ms a returned etcd is found within about half a second;
the cost while it is down is about 120 connection attempts a minute per client process (a refused
connect each: two packets), past the first second's few quicker ones."""
CONNECT_TIMEOUT_MS = 3_000
"""How long one connection attempt may take before it counts as failed (gRPC calls this
``grpc.min_reconnect_backoff_ms``; the attempt's deadline is this or the next back-off, the longer).
A restarted etcd accepts connections at once but answers none until its raft has a leader (1-2 s for
a single member): an attempt that waits it out is connected the moment etcd serves, where a short
timeout (it was 100 ms) failed every attempt of that window and then waited a back-off. Also the
time a TLS handshake over a slow link gets. A host that drops packets instead of refusing costs one
attempt per 3 s."""


async def open_channel(settings: EtcdSettings) -> Any:
    """A grpc.aio channel to all members: round-robin, keepalive, etcd's reconnect timings."""
    initial_backoff, max_backoff = RECONNECT_BACKOFF_MS
    options: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        # Ping only while calls or watches are open (etcd refuses idle pings), but keep pinging an
        # idle watch: that is how a member that died without closing the connection is noticed.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", initial_backoff),
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
        ("grpc.max_reconnect_backoff_ms", max_backoff),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
    ]
    target = await _grpc_target(settings.endpoints)
    if not settings.tls:
        return grpc.aio.insecure_channel(target, options=options)
    roots = _read_file(settings.cacert, "ETCDCTL_CACERT") or _system_roots()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=_read_file(settings.key, "ETCDCTL_KEY"),
        certificate_chain=_read_file(settings.cert, "ETCDCTL_CERT"),
    )
    options.append(("grpc.ssl_target_name_override", _tls_name(settings)))
    return grpc.aio.secure_channel(target, credentials, options=options)


def key_value(kv: Any, strip: int) -> KeyValue:
    return KeyValue(
        key=decode_key(kv.key[strip:]),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        version=int(kv.version),
        lease=int(kv.lease),
    )


def watch_event(event: Any, strip: int) -> WatchEvent:
    kv = event.kv
    return WatchEvent(
        type="delete" if event.type == 1 else "put",
        key=decode_key(kv.key[strip:]),
        value=bytes(kv.value),
        mod_revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
        version=int(kv.version),
        lease=int(kv.lease),
    )


def compare_message(compare: Compare, key: bytes) -> Any:
    """The protobuf ``Compare`` for ``compare`` on the full ``key``."""
    message = pb.Compare(result=_OPS[compare.op], target=_TARGETS[compare.target], key=key)
    setattr(message, _FIELDS.get(compare.target, compare.target), compare.operand)
    return message


def request_op(op: Op, key: bytes) -> Any:
    """The protobuf ``RequestOp`` for ``op`` on the full ``key``."""
    end = prefix_range_end(key) if op.prefix else None
    if op.kind == "put":
        return KVService.txn_op_put(key, op.value, lease=op.lease)
    if op.kind == "get":
        return KVService.txn_op_get(key, range_end=end)
    return KVService.txn_op_delete(key, range_end=end)


def op_result(response: Any, revision: int, strip: int) -> OpResult:
    """An :class:`OpResult` from a protobuf ``ResponseOp``."""
    kind = response.WhichOneof("response")
    if kind == "response_range":
        return OpResult("get", revision, [key_value(kv, strip) for kv in response.response_range.kvs])
    if kind == "response_delete_range":
        return OpResult("delete", revision, deleted=int(response.response_delete_range.deleted))
    return OpResult("put", revision)
