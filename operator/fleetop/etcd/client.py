"""fleetop's only door to etcd: typed reads and writes, transactions, leases and one raw watch stream.

This module and :mod:`fleetop.etcd.rpc` (channel, error translation, protobuf conversion) are the
only ones that import etcd3aio or grpc (an import-linter contract enforces it), so the rest of fleetop
sees frozen dataclasses (:mod:`fleetop.etcd.model`) and the errors of :mod:`fleetop.errors`, never a
protobuf message or a gRPC exception. Every call has a deadline (``command_timeout``); every failure
is translated with ``raise ... from``.

etcd3aio's services do the unary calls on our own channel. Its watch (it resumes from a batch's
header revision, which skips the rest of a backlog, and hangs after a compaction cancel) and its
lease keepalive are replaced: :meth:`Etcd.watch_stream` is one raw stream, :mod:`fleetop.etcd.watch`
resumes and relists, :mod:`fleetop.etcd.lease` keeps leases.

Keys are logical: the installation prefix (``--prefix``) is prepended on the way in and removed on
the way out. Auth tokens are renewed by re-authenticating when etcd calls one invalid (it forgets
tokens when it restarts and expires idle ones).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb
from etcd3aio.auth import AuthService
from etcd3aio.errors import EtcdError
from etcd3aio.kv import KVService, prefix_range_end
from etcd3aio.lease import LeaseService
from etcd3aio.maintenance import MaintenanceService

from fleetop.config import EtcdSettings
from fleetop.errors import (
    Compacted,
    Conflict,
    EtcdDenied,
    EtcdUnavailable,
    InputError,
    NotFound,
    NotLeader,
    PermanentError,
)
from fleetop.etcd.lease import LeaseKeeper
from fleetop.etcd.model import (
    Compare,
    Events,
    KeyValue,
    Op,
    OpResult,
    Snapshot,
    WatchBatch,
    WatchEvent,
    dial_failure,
    encode_key,
    to_bytes,
)
from fleetop.etcd.rpc import (
    compare_message,
    key_value,
    op_result,
    open_channel,
    request_op,
    translate,
    watch_event,
)
from fleetop.etcd.watch import reflect, resume_watch

__all__ = [
    "Compare",
    "Etcd",
    "Events",
    "KeyValue",
    "LeaseKeeper",
    "Op",
    "OpResult",
    "Snapshot",
    "WatchBatch",
    "WatchEvent",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_READ_ATTEMPTS = 3  # reads are retried on UNAVAILABLE (another member may answer); writes are not
_WRITE_ATTEMPTS = 1
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")


class Etcd:
    """A connection to an etcd cluster. Create with ``await Etcd.connect(settings)``; ``close()`` or
    ``async with``. Safe to share between tasks."""

    def __init__(self, settings: EtcdSettings, channel: Any) -> None:
        self.settings = settings
        self._channel = channel
        self._timeout = settings.command_timeout
        self._prefix = encode_key(settings.prefix)
        self._kv = KVService(channel, max_attempts=_READ_ATTEMPTS)
        self._lease = LeaseService(channel, max_attempts=_READ_ATTEMPTS)
        self._auth = AuthService(channel, max_attempts=_READ_ATTEMPTS)
        self._maintenance = MaintenanceService(channel, max_attempts=_READ_ATTEMPTS)
        self._watch_stub = pb.WatchStub(channel)
        self._lease_stub = pb.LeaseStub(channel)
        self._token: str | None = None
        self._auth_generation = 0
        self._auth_lock = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: EtcdSettings) -> Etcd:
        """Open the channel and prove etcd answers (authenticating when a user is set) within
        ``dial_timeout``. Raises EtcdUnavailable, EtcdDenied or ConfigError."""
        etcd = cls(settings, await open_channel(settings))
        try:
            await etcd._dial()
        except BaseException:
            await etcd.close()
            raise
        log.info("connected to %s", settings.describe())
        return etcd

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.dial_timeout
        while True:
            try:
                if self.settings.user:
                    await self._authenticate()
                else:
                    await self.status()
                return
            except EtcdUnavailable as exc:
                if loop.time() + 0.1 >= deadline:
                    settings = self.settings
                    raise dial_failure(
                        settings.endpoints, settings.dial_timeout, settings.tls, exc, "socket closed"
                    ) from exc
                await asyncio.sleep(0.1)

    async def reconnected(self) -> None:
        """Return the next time the channel connects to a member after being disconnected: at once
        when it reconnects, never while it stays connected. A loop that failed on an unreachable
        etcd waits for this and its back-off delay, whichever is first (:func:`fleetop.etcd.watch.
        retry_pause`), so it retries the moment gRPC's own reconnect gets through instead of up to a
        back-off later; a failure on a connected channel (an error etcd sent) waits out the delay."""
        ready = grpc.ChannelConnectivity.READY
        state = self._channel.get_state(try_to_connect=True)
        was_down = state != ready
        while True:
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=True)
            if state == ready and was_down:
                return
            was_down = was_down or state != ready

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _once(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise translate(exc, what, self.settings) from exc

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one etcd call with the deadline; re-authenticate once if etcd dropped our token."""
        generation = self._auth_generation
        try:
            return await self._once(what, call)
        except PermanentError as exc:
            if not self.settings.user or not any(s in str(exc) for s in _STALE_TOKEN):
                raise
        await self._reauthenticate(generation)
        return await self._once(what, call)

    async def _reauthenticate(self, generation: int) -> None:
        async with self._auth_lock:
            if generation == self._auth_generation:
                await self._authenticate()

    async def _authenticate(self) -> None:
        user, secret = self.settings.user, self.settings.password
        assert user is not None
        password = secret.get_secret_value() if secret else ""
        try:
            response = await self._once(
                f"authenticate as {user}",
                partial(self._auth.authenticate, user, password, timeout=self._timeout),
            )
        except PermanentError as exc:
            if "authentication is not enabled" in str(exc):
                log.info("etcd has authentication disabled; continuing without a token")
                return
            if isinstance(exc, EtcdDenied) and "invalid user ID or password" in str(exc):
                raise EtcdDenied(
                    f"etcd rejected the user name or password of {user!r} (ETCDCTL_USER)"
                ) from exc
            raise
        self._token = str(response.token)
        self._auth_generation += 1
        for service in (self._kv, self._lease, self._auth, self._maintenance):
            service.set_token(self._token)

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self._token),) if self._token else None

    def _key(self, key: str) -> bytes:
        return self._prefix + encode_key(key)

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        start = self._key(prefix)
        return (start, prefix_range_end(start)) if start else (b"\0", b"\0")

    # -- keys ---------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        response = await self._call(
            f"get {key}", partial(self._kv.get, self._key(key), timeout=self._timeout)
        )
        return key_value(response.kvs[0], len(self._prefix)) if response.kvs else None

    async def list(
        self, prefix: str = "", *, keys_only: bool = False, page_size: int = 1000
    ) -> tuple[builtins.list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, read in pages of ``page_size`` keys.
        Returns (items sorted by key, revision). Starts over if compaction overtakes the read."""
        for _ in range(5):
            try:
                return await self._list_at_one_revision(prefix, keys_only, page_size)
            except Compacted:
                log.info("list %s: revision compacted between pages, starting over", prefix)
        raise EtcdUnavailable(f"list {prefix}: compaction kept overtaking the read")

    async def _list_at_one_revision(
        self, prefix: str, keys_only: bool, page_size: int
    ) -> tuple[builtins.list[KeyValue], int]:
        start, end = self._range(prefix)
        revision = 0
        items: builtins.list[KeyValue] = []
        while True:
            response = await self._call(
                f"list {prefix}",
                partial(
                    self._kv.get,
                    start,
                    range_end=end,
                    revision=revision,
                    limit=page_size,
                    keys_only=keys_only,
                    timeout=self._timeout,
                ),
            )
            revision = revision or int(response.header.revision)
            items.extend(key_value(kv, len(self._prefix)) for kv in response.kvs)
            if not response.more or not response.kvs:
                return items, revision
            start = bytes(response.kvs[-1].key) + b"\0"

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        lease: int = 0,
        prev_mod_revision: int | None = None,
        fence: tuple[str, bytes] | None = None,
    ) -> int:
        """Write ``key``; returns the new revision. ``prev_mod_revision`` makes it a compare-and-swap
        (0: the key must not exist) raising Conflict; ``fence=(key, value)`` requires that key to hold
        exactly that value (the leader key) and raises NotLeader otherwise."""
        data = to_bytes(value)
        if prev_mod_revision is None and fence is None:
            response = await self._call(
                f"put {key}",
                partial(
                    self._kv.put,
                    self._key(key),
                    data,
                    lease,
                    timeout=self._timeout,
                    max_attempts=_WRITE_ATTEMPTS,
                ),
            )
            return int(response.header.revision)
        results = await self._guarded(key, Op.put(key, data, lease=lease), prev_mod_revision, fence)
        return results[0].revision

    async def delete(
        self, key: str, *, prev_mod_revision: int | None = None, fence: tuple[str, bytes] | None = None
    ) -> bool:
        """Delete ``key``; True if it existed. Guards as for :meth:`put`."""
        if prev_mod_revision is None and fence is None:
            response = await self._call(
                f"delete {key}",
                partial(self._kv.delete, self._key(key), timeout=self._timeout, max_attempts=_WRITE_ATTEMPTS),
            )
            return int(response.deleted) > 0
        results = await self._guarded(key, Op.delete(key), prev_mod_revision, fence)
        return results[0].deleted > 0

    async def _guarded(
        self, key: str, op: Op, prev_mod_revision: int | None, fence: tuple[str, bytes] | None
    ) -> builtins.list[OpResult]:
        compares = [] if fence is None else [Compare.value_is(*fence)]
        if prev_mod_revision is not None:
            compares.append(Compare.mod_revision_is(key, prev_mod_revision))
        reads = [Op.get(key)] if fence is None else [Op.get(fence[0]), Op.get(key)]
        succeeded, results = await self.txn(compares, [op], reads)
        if succeeded:
            return results
        if fence is not None:
            holder = results[0].kvs
            if not holder or holder[0].value != fence[1]:
                raise NotLeader(f"{op.kind} {key} refused: {fence[0]} no longer names this process")
        current = results[-1].kvs
        now = f"mod revision {current[0].mod_revision}" if current else "absent"
        raise Conflict(f"{op.kind} {key}: expected mod revision {prev_mod_revision}, found {now}")

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many. Refuses to empty the whole keyspace."""
        start, end = self._range(prefix)
        if start == b"\0":
            raise InputError("refusing to delete every key in etcd (empty prefix without --prefix)")
        response = await self._call(
            f"delete prefix {prefix}",
            partial(
                self._kv.delete, start, range_end=end, timeout=self._timeout, max_attempts=_WRITE_ATTEMPTS
            ),
        )
        return int(response.deleted)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> tuple[bool, builtins.list[OpResult]]:
        """An atomic transaction: if every compare holds run ``success``, else ``failure``.
        Returns (succeeded, one OpResult per executed op)."""
        request = partial(
            self._kv.txn,
            [compare_message(c, self._key(c.key)) for c in compares],
            [request_op(o, self._key(o.key)) for o in success],
            [request_op(o, self._key(o.key)) for o in failure],
            timeout=self._timeout,
            max_attempts=_WRITE_ATTEMPTS,
        )
        response = await self._call("txn", request)
        revision = int(response.header.revision)
        results = [op_result(r, revision, len(self._prefix)) for r in response.responses]
        return bool(response.succeeded), results

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (watches from older revisions get Compacted)."""
        await self._call("compact", partial(self._kv.compact, revision, physical=True, timeout=self._timeout))

    # -- leases -------------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        response = await self._call("lease grant", partial(self._lease.grant, ttl, timeout=self._timeout))
        return int(response.ID)

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease`` (deleting its keys). A lease that is already gone is fine."""
        with suppress(NotFound):
            await self._call("lease revoke", partial(self._lease.revoke, lease, timeout=self._timeout))

    async def keepalive_once(self, lease: int) -> int:
        """Renew ``lease`` once; returns the remaining TTL in seconds (0 or less: the lease is gone)."""

        async def renew() -> int:
            # The stream is written by this task (grpc's reader/writer style). Given a request
            # iterator, grpc would start a task of its own to send it, and when the call fails before
            # its headers are sent (etcd going away) that task waits for them forever.
            call = self._lease_stub.LeaseKeepAlive(metadata=self._metadata())
            try:
                await call.write(pb.LeaseKeepAliveRequest(ID=lease))
                response = await call.read()
                return 0 if response is grpc.aio.EOF else int(response.TTL)
            finally:
                call.cancel()

        return await self._call("lease keepalive", renew)

    # -- health -------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The answering member's status: version, ids, leader, revision, db size, errors."""
        response = await self._call("status", partial(self._maintenance.status, timeout=self._timeout))
        return {
            "endpoints": builtins.list(self.settings.endpoints),
            "version": str(response.version),
            "member_id": int(response.header.member_id),
            "cluster_id": int(response.header.cluster_id),
            "leader": int(response.leader),
            "has_leader": int(response.leader) != 0,
            "raft_term": int(response.raftTerm),
            "revision": int(response.header.revision),
            "db_size": int(response.dbSize),
            "errors": [str(e) for e in response.errors],
        }

    async def ping(self) -> int:
        """Prove a leader and a quorum (a linearizable read of the prefix root); returns the revision.
        A user without read permission there still proves it: etcd checks permissions after the read
        barrier."""
        status = await self.status()
        if not status["has_leader"]:
            raise EtcdUnavailable("etcd member has no leader")
        with suppress(EtcdDenied):
            await self._call("ping", partial(self._kv.get, self._key("/"), timeout=self._timeout))
        return int(status["revision"])

    # -- watch --------------------------------------------------------------------------------------

    async def watch_stream(
        self, prefix: str, start_revision: int, *, progress_notify: bool = False
    ) -> AsyncGenerator[WatchBatch, None]:
        """ONE watch stream over ``prefix`` from ``start_revision``, without reconnecting: yields
        batches until the stream breaks (EtcdUnavailable), the revision is compacted
        (Compacted) or access is denied (EtcdDenied). Use :meth:`watch` to resume."""
        start, end = self._range(prefix)
        create = pb.WatchCreateRequest(
            key=start, range_end=end, start_revision=start_revision, progress_notify=progress_notify
        )
        strip, what = len(self._prefix), f"watch {prefix}"
        yielded = False
        for attempt in (1, 2):
            call = self._watch_stub.Watch(metadata=self._metadata())
            try:
                await self._once(what, partial(call.write, pb.WatchRequest(create_request=create)))
                pending: builtins.list[WatchEvent] = []
                while True:
                    response = await self._read(call, what)
                    if response.canceled:
                        self._watch_canceled(response, what)
                    events = pending + [watch_event(e, strip) for e in response.events]
                    if response.fragment:
                        pending = events
                        continue
                    pending = []
                    if events:
                        yielded = True
                        yield WatchBatch(events, events[-1].mod_revision)
                    elif not response.created:
                        yielded = True
                        yield WatchBatch([], int(response.header.revision), progress=True)
            except EtcdDenied as exc:
                if attempt == 2 or yielded or not self.settings.user:
                    raise  # only a stale token at creation is worth one more try
                log.info("%s: denied (%s); re-authenticating once", what, exc)
                await self._reauthenticate(self._auth_generation)
            finally:
                call.cancel()

    async def _read(self, call: Any, what: str) -> Any:
        try:
            response = await call.read()
        except grpc.RpcError as exc:
            raise translate(exc, what, self.settings) from exc
        if response is grpc.aio.EOF:
            raise EtcdUnavailable(f"{what}: etcd closed the watch stream")
        return response

    def _watch_canceled(self, response: Any, what: str) -> None:
        if response.compact_revision:
            raise Compacted(int(response.compact_revision))
        reason = str(response.cancel_reason) or "no reason given"
        if "permission denied" in reason or "auth" in reason:
            raise EtcdDenied(f"{what}: etcd canceled the watch: {reason}")
        raise EtcdUnavailable(f"{what}: etcd canceled the watch: {reason}")

    async def watch(
        self, prefix: str, start_revision: int, *, progress_notify: bool = False
    ) -> AsyncGenerator[WatchBatch, None]:
        """Event batches under ``prefix`` from ``start_revision`` on, each event exactly once and in
        order across broken streams and etcd restarts (reconnects with backoff). Raises Compacted
        when the next revision needed is gone. A batch is a ``list[WatchEvent]`` with ``.revision``;
        with ``progress_notify`` empty batches (``.progress``) report progress. Close with ``aclose()``."""
        stream = resume_watch(self, prefix, start_revision, progress_notify=progress_notify)
        async with aclosing(stream):
            async for batch in stream:
                if batch or progress_notify:
                    yield batch

    async def list_watch(
        self, prefix: str, *, page_size: int = 1000
    ) -> AsyncGenerator[Snapshot | Events, None]:
        """A reflector: Snapshot, then Events from the snapshot's revision on; a new Snapshot after
        compaction. Never ends on its own; retries etcd outages with capped jittered backoff."""
        stream = reflect(self, prefix, page_size=page_size)
        async with aclosing(stream):
            async for item in stream:
                yield item
