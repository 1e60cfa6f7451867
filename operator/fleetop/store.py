"""Typed access to specs, status and events in etcd, on top of ``fleetop.etcd.client``.

:class:`StoreReader` reads through anything with the gRPC client's ``get`` and ``list``
(:class:`KeyReads`): the client itself, or :class:`fleetop.etcd.readonly.ReadOnlyEtcd` over etcd's
HTTP/JSON gateway, which the CLI's read-only verbs use so they need not import grpc. :class:`Store`
adds the writes, through the gRPC client.

Specs are stored as the compact JSON people type (defaults left out, no ``kind``/``name``), so a spec
written with ``etcdctl put`` and one written by ``fleetop apply`` look and read the same. A key holding
garbage is returned as an entry with its error, never raised from a listing: one bad key must not
hide the others. That holds for any failure while reading a key, a bug included (the entry then
says what failed): the informers build their caches through :meth:`Store.entry`, and one key must
never stop them.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from fleetop.errors import NameTaken, NotFound, SpecInvalid
from fleetop.etcd.model import KeyValue
from fleetop.keys import KIND_NAMES, Keys
from fleetop.models.base import shown
from fleetop.models.parse import (
    decode_json,
    encode_document,
    encode_spec,
    parse_proxy,
    parse_service,
    validation_errors,
)
from fleetop.models.service import ServiceSpec

if TYPE_CHECKING:
    from typing import TypeAlias

    from fleetop.etcd.client import Etcd
    from fleetop.models.events import Event
    from fleetop.models.proxy import ProxySpec
    from fleetop.models.status import ProxyStatus, ServiceStatus

    # the proxy, status and event models are imported where they are read, so that a verb that reads
    # only service specs (``get services`` of specs no operator judged yet) does not build them
    Spec: TypeAlias = ServiceSpec | ProxySpec
    Status: TypeAlias = ServiceStatus | ProxyStatus

Kind = Literal["services", "proxies"]


def kind_of(spec: Spec) -> Kind:
    return "services" if isinstance(spec, ServiceSpec) else "proxies"


def parse_stored(kind: Kind, name: str, raw: bytes | dict[str, Any], where: str) -> Spec:
    """Read a stored spec exactly as ``apply`` would, naming the key in errors."""
    if kind == "services":
        return parse_service(raw, name=name, where=where)
    return parse_proxy(raw, name=name, where=where)


@dataclass(frozen=True)
class Entry:
    """One desired key: its spec, or the reason it is invalid, with the key's revisions."""

    kind: Kind
    name: str
    key: str
    raw: bytes
    spec: Spec | None
    error: SpecInvalid | None
    create_revision: int
    mod_revision: int

    @property
    def valid(self) -> bool:
        return self.spec is not None


KIND_ORDER: tuple[Kind, Kind] = ("services", "proxies")


def other_kind(kind: Kind) -> Kind:
    return "proxies" if kind == "services" else "services"


def shared_name(kind: Kind, entry: Entry | None, other: Entry | None) -> Entry | None:
    """``entry`` as reconcilers should see it, given the other kind's spec of the same name: a service
    and a proxy of one name would share unit names (``<name>@1.service``, ``Conflicts=<name>@*``),
    so the one declared later (on a tie, the proxy) is invalid (:class:`~fleetop.errors.NameTaken`:
    ``Invalid=True, NameTaken`` in its status) until the other is gone."""
    if entry is None or other is None:
        return entry
    if (entry.create_revision, kind == "proxies") < (other.create_revision, kind != "proxies"):
        return entry
    taken_by = KIND_NAMES[other_kind(kind)].lower()
    message = (
        f"the name {entry.name!r} is taken by {taken_by} {entry.name!r}, declared first (key {other.key}):"
        f" a service and a proxy cannot share a name (both would run units named {entry.name}@<n>.service)"
    )
    return dataclasses.replace(entry, spec=None, error=NameTaken(message, where=f"key {entry.key}"))


@dataclass(frozen=True)
class StatusEntry:
    name: str
    status: Status | None
    error: str | None
    mod_revision: int


class KeyReads(Protocol):
    """The reads :class:`StoreReader` needs: those of :class:`fleetop.etcd.client.Etcd`."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def list(
        self, prefix: str = "", *, keys_only: bool = False, page_size: int = 1000
    ) -> tuple[builtins.list[KeyValue], int]: ...


class StoreReader:
    """Specs, status and events of one installation (one key root), read only."""

    def __init__(self, etcd: KeyReads, keys: Keys) -> None:
        self.etcd = etcd
        self.keys = keys

    def entry(self, kind: Kind, kv: KeyValue) -> Entry | None:
        name = self.keys.name_of(kv.key, kind)
        if name is None:
            return None
        spec: Spec | None = None
        error: SpecInvalid | None = None
        try:
            spec = parse_stored(kind, name, kv.value, where=f"key {kv.key}")
        except SpecInvalid as exc:
            error = exc
        except Exception as exc:  # a bug or an exhausted resource: this key is unreadable, not the rest
            import logging  # not imported until needed: the read verbs log nothing

            logging.getLogger(__name__).exception("reading %r failed", kv.key)
            error = SpecInvalid([("$", f"cannot be read: {type(exc).__name__}: {shown(str(exc), 200)}")])
        return Entry(kind, name, kv.key, kv.value, spec, error, kv.create_revision, kv.mod_revision)

    async def get(self, kind: Kind, name: str) -> Entry | None:
        kv = await self.etcd.get(self.keys.desired(kind, name))
        return self.entry(kind, kv) if kv is not None else None

    async def require(self, kind: Kind, name: str) -> Entry:
        entry = await self.get(kind, name)
        if entry is None:
            raise NotFound(
                f"{KIND_NAMES[kind].lower()} {name!r} not found (key {self.keys.desired(kind, name)})"
            )
        return entry

    async def list(self, kind: Kind) -> tuple[builtins.list[Entry], int]:
        items, revision = await self.etcd.list(self.keys.desired(kind))
        entries = [e for kv in items if (e := self.entry(kind, kv)) is not None]
        return sorted(entries, key=lambda e: e.name), revision

    async def status(self, kind: Kind, name: str) -> StatusEntry | None:
        kv = await self.etcd.get(self.keys.status(kind, name))
        return None if kv is None else self._status_entry(kind, name, kv)

    async def statuses(self, kind: Kind) -> dict[str, StatusEntry]:
        items, _ = await self.etcd.list(self.keys.status(kind))
        out: dict[str, StatusEntry] = {}
        for kv in items:
            name = self.keys.name_of(kv.key, kind, "status")
            if name is not None:
                out[name] = self._status_entry(kind, name, kv)
        return out

    @staticmethod
    def _status_entry(kind: Kind, name: str, kv: KeyValue) -> StatusEntry:
        from fleetop.models.status import ProxyStatus, ServiceStatus

        model: type[BaseModel] = ServiceStatus if kind == "services" else ProxyStatus
        try:
            status = model.model_validate(decode_json(kv.value, f"status of {name}"))
        except (SpecInvalid, ValidationError) as exc:
            reason = exc.describe() if isinstance(exc, SpecInvalid) else str(validation_errors(exc)[0])
            return StatusEntry(name, None, reason, kv.mod_revision)
        assert isinstance(status, ServiceStatus | ProxyStatus)
        return StatusEntry(name, status, None, kv.mod_revision)

    async def events(
        self,
        name: str | None = None,
        *,
        kind: Kind | None = None,
        limit: int | None = None,
        since_revision: int = 0,
    ) -> builtins.list[Event]:
        """Recorded events, oldest first; those that do not parse are skipped.

        ``name`` without ``kind``: the events of the service and of the proxy of that name (at most
        one of them is valid, but the refused one has events too); ``kind`` alone: every event of
        that kind; neither: every event.

        ``since_revision``: only events first written after that etcd revision. Events outlive their
        object by up to an hour, so a spec's ``create_revision`` keeps a deleted object's events
        (one of the same name, deleted and declared again) out of the new one's history; a repeated
        event keeps its key, and with it the revision it was first written at.
        """
        from fleetop.models.events import Event

        if name:
            kinds: builtins.list[Kind] = [kind] if kind is not None else list(KIND_ORDER)
            prefixes = [self.keys.events(k, name) for k in kinds]
        else:
            prefixes = [self.keys.events(kind)]
        items = [kv for prefix in prefixes for kv in (await self.etcd.list(prefix))[0]]
        events: builtins.list[Event] = []
        for kv in items:
            if kv.create_revision <= since_revision:
                continue
            try:
                events.append(Event.model_validate_json(kv.value))
            except ValidationError:
                continue
        events.sort(key=lambda e: e.time)
        return events[-limit:] if limit else events


class Store(StoreReader):
    """Specs, status and events of one installation: reads, and writes through the gRPC client."""

    etcd: Etcd

    def __init__(self, etcd: Etcd, keys: Keys) -> None:
        super().__init__(etcd, keys)
        self.etcd = etcd

    async def put(self, name: str, spec: Spec, *, prev_mod_revision: int | None = None) -> int:
        return await self.etcd.put(
            self.keys.desired(kind_of(spec), name), encode_spec(spec), prev_mod_revision=prev_mod_revision
        )

    async def put_raw(
        self, kind: Kind, name: str, document: dict[str, Any], *, prev_mod_revision: int
    ) -> int:
        """Write a document as given (after validating the very bytes written, as the operator will
        read them), keeping the user's own form."""
        body = encode_document(document)
        parse_stored(kind, name, body, where=f"key {self.keys.desired(kind, name)}")
        return await self.etcd.put(self.keys.desired(kind, name), body, prev_mod_revision=prev_mod_revision)

    async def delete(self, kind: Kind, name: str) -> bool:
        return await self.etcd.delete(self.keys.desired(kind, name))


def sort_entries(entries: Sequence[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.kind, e.name))
