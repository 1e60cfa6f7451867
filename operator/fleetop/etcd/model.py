"""The typed values that cross the etcd boundary, free of any etcd3aio or protobuf type.

Everything above :mod:`fleetop.etcd.client` (informers, leader election, the store, the CLI) works with these
frozen dataclasses, so no protobuf message leaks out and tests can build them by hand. Keys are
logical (the installation's ``--prefix`` already removed), decoded as UTF-8 with ``surrogateescape``
so that any byte string survives the round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleetop.errors import EtcdUnavailable

CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]
OpKind = Literal["put", "get", "delete"]


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def decode_key(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def to_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd stores it. ``lease`` is 0 when the key is not bound to a lease."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def text(self) -> str:
        return self.value.decode("utf-8")


@dataclass(frozen=True)
class WatchEvent:
    """A put or delete seen by a watch. For a delete ``value`` is ``b""`` and ``mod_revision`` is the
    revision of the delete; ``create_revision``/``version`` are 0 for deletes."""

    type: Literal["put", "delete"]
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0

    @property
    def kv(self) -> KeyValue | None:
        """The key as the event left it; None for a delete."""
        if self.type == "delete":
            return None
        return KeyValue(
            self.key, self.value, self.create_revision, self.mod_revision, self.version, self.lease
        )


class WatchBatch(list[WatchEvent]):
    """The events of one watch response: a plain ``list[WatchEvent]`` that also carries the
    ``revision`` it reaches (the last event's, or a progress notification's) and ``progress``, set on
    an empty progress notification, which promises every event up to ``revision`` was delivered."""

    __slots__ = ("progress", "revision")

    def __init__(
        self, events: Iterable[WatchEvent] = (), revision: int = 0, *, progress: bool = False
    ) -> None:
        super().__init__(events)
        self.revision = revision
        self.progress = progress

    @property
    def events(self) -> list[WatchEvent]:
        return self

    def __repr__(self) -> str:
        kind = "progress" if self.progress else f"{len(self)} events"
        return f"WatchBatch({kind}, revision={self.revision})"


@dataclass(frozen=True)
class Snapshot:
    """What :meth:`fleetop.etcd.client.Etcd.list_watch` yields first and after every relist: the complete
    content of the prefix at ``revision``. Consumers replace their cache with it."""

    items: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class Events:
    """Changes after the last Snapshot/Events, in revision order. ``events`` may be empty for a
    progress notification; ``revision`` is then the revision everything is known up to."""

    events: list[WatchEvent]
    revision: int


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` ``op`` ``operand``.

    A key that does not exist has version, create and mod revision 0 and never equals any value.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "create", "==", 0)

    @classmethod
    def value_is(cls, key: str, value: bytes | str) -> Compare:
        return cls(key, "value", "==", to_bytes(value))

    @classmethod
    def mod_revision_is(cls, key: str, revision: int) -> Compare:
        return cls(key, "mod", "==", revision)

    @classmethod
    def lease_is(cls, key: str, lease: int) -> Compare:
        return cls(key, "lease", "==", lease)


@dataclass(frozen=True)
class Op:
    """One operation of a transaction branch. ``prefix`` turns get/delete into a prefix range."""

    kind: OpKind
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @classmethod
    def put(cls, key: str, value: bytes | str, *, lease: int = 0) -> Op:
        return cls("put", key, to_bytes(value), lease)

    @classmethod
    def get(cls, key: str, *, prefix: bool = False) -> Op:
        return cls("get", key, prefix=prefix)

    @classmethod
    def delete(cls, key: str, *, prefix: bool = False) -> Op:
        return cls("delete", key, prefix=prefix)


@dataclass(frozen=True)
class OpResult:
    """The result of one executed :class:`Op`: ``kvs`` for a get, ``deleted`` for a delete.
    ``revision`` is the transaction's revision (for a put: the key's new mod revision)."""

    kind: OpKind
    revision: int
    kvs: list[KeyValue] = field(default_factory=list)
    deleted: int = 0


RECONNECT_CAP = 0.5
"""Seconds: the longest pause between two attempts to reach an unreachable etcd. An attempt costs one
failed connection, and etcd's return is noticed within this."""


def dial_failure(
    endpoints: Sequence[str], dial_timeout: float, tls: bool, error: Exception, closed: str
) -> EtcdUnavailable:
    """The error of a client that could not reach etcd within its dial timeout. ``closed`` is the
    words the transport uses for a connection the server closed: a plain-text client talking to a TLS
    port gets that, so the message then hints at ``https://``."""
    hint = ""
    if not tls and closed in str(error).lower():
        hint = " (if etcd serves TLS: use https:// endpoints and set ETCDCTL_CACERT)"
    where = ",".join(endpoints)
    return EtcdUnavailable(f"cannot reach etcd at {where} within {dial_timeout:g} s: {error}{hint}")
