"""Watches that survive etcd: resume without loss or duplicates, relist after compaction.

etcd3aio's own watch resumes from the header revision of the last response. During a backlog that
header is the store's *current* revision while the batch only reaches some older revision, so a
stream that breaks mid-backlog silently skips events; and after a compaction cancel it waits forever.
Informers cannot live with either. So the rules here are:

- resume from the last *event's* revision + 1 (a batch never splits one revision: fragments are
  joined before a batch is yielded), or from a progress notification's revision + 1, which etcd only
  sends once a watcher has caught up;
- a broken stream (etcd killed, restarted, network) is reopened with capped, jittered backoff, for
  as long as it takes, and at once when the client's channel reconnects (:func:`retry_pause`);
- a compacted start revision ends the watch with :class:`~fleetop.errors.Compacted`; the reflector
  (:func:`reflect`) answers it by listing again and handing out a fresh Snapshot, which consumers use
  to replace their cache (keys deleted meanwhile disappear with it).

Nothing here talks gRPC: the single raw stream is :meth:`fleetop.etcd.client.Etcd.watch_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol

from fleetop.backoff import HALF_JITTER, Backoff
from fleetop.errors import Compacted, EtcdUnavailable
from fleetop.etcd.model import RECONNECT_CAP, Events, KeyValue, Snapshot, WatchBatch

log = logging.getLogger(__name__)


class Watchable(Protocol):
    """The two calls a watch is built from (:class:`fleetop.etcd.client.Etcd` has them). Declared here,
    where they are used, so that the client may build on this module without this module importing it."""

    def watch_stream(
        self, prefix: str, start_revision: int, *, progress_notify: bool = False
    ) -> AsyncGenerator[WatchBatch, None]: ...

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> tuple[list[KeyValue], int]: ...

    async def reconnected(self) -> None: ...


async def retry_pause(etcd: Watchable, delay: float) -> None:
    """After a failure to reach etcd: wait ``delay`` seconds, or less if the client reconnects first
    (etcd is back: retry now rather than a back-off later)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await etcd.reconnected()


async def resume_watch(
    etcd: Watchable,
    prefix: str,
    start_revision: int,
    *,
    progress_notify: bool = False,
    backoff: Backoff | None = None,
) -> AsyncGenerator[WatchBatch, None]:
    """Batches of events under ``prefix`` from ``start_revision`` on, reconnecting forever.

    Each event is yielded exactly once, in revision order. Raises Compacted (the revision needed
    next is gone) and EtcdDenied; every EtcdUnavailable is retried.
    """
    next_revision = start_revision
    delays = backoff or Backoff(0.1, RECONNECT_CAP, jitter=HALF_JITTER)
    while True:
        try:
            stream = etcd.watch_stream(prefix, next_revision, progress_notify=progress_notify)
            async with aclosing(stream):
                async for batch in stream:
                    delays.reset()
                    accepted = _accept(batch, next_revision)
                    if accepted is None:
                        continue
                    next_revision = accepted.revision + 1
                    yield accepted
        except EtcdUnavailable as exc:
            delay = delays.next()
            log.warning(
                "watch %s from revision %d: %s; reconnecting within %.2f s", prefix, next_revision, exc, delay
            )
            await retry_pause(etcd, delay)


def _accept(batch: WatchBatch, next_revision: int) -> WatchBatch | None:
    """The part of ``batch`` not delivered yet (None: nothing new)."""
    if batch.progress:  # news even when nothing changed, as long as it does not go backwards
        return batch if batch.revision + 1 >= next_revision else None
    events = [e for e in batch.events if e.mod_revision >= next_revision]
    if not events:
        return None
    if len(events) == len(batch.events):
        return batch
    return WatchBatch(events, events[-1].mod_revision)


async def reflect(
    etcd: Watchable, prefix: str, *, page_size: int = 1000, backoff: Backoff | None = None
) -> AsyncGenerator[Snapshot | Events, None]:
    """List ``prefix`` at one revision, yield it as a Snapshot, then yield Events from the next
    revision on; after a compaction list again and yield a new Snapshot. etcd outages are retried
    with capped, jittered backoff; the only errors that end it are permanent (EtcdDenied)."""
    delays = backoff or Backoff(0.1, RECONNECT_CAP, jitter=HALF_JITTER)
    while True:
        try:
            items, revision = await etcd.list(prefix, page_size=page_size)
        except EtcdUnavailable as exc:
            delay = delays.next()
            log.warning("list %s: %s; retrying within %.2f s", prefix, exc, delay)
            await retry_pause(etcd, delay)
            continue
        delays.reset()
        yield Snapshot(items, revision)
        try:
            stream = resume_watch(etcd, prefix, revision + 1, progress_notify=True)
            async with aclosing(stream):
                async for batch in stream:
                    yield Events(batch.events, batch.revision)
        except Compacted as exc:
            log.info("watch %s: history compacted (revision %d); listing again", prefix, exc.compact_revision)
