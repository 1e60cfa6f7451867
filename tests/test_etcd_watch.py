"""Watches against a real etcd that gets killed, restarted and compacted underneath them.

These pin the behaviour etcd3aio's own watch gets wrong (DESIGN.md §9): every event exactly once and
in order across a kill -9 and restart, including when the stream breaks in the middle of a backlog
whose responses carry the store's current revision in their header; and a compacted revision ends
in a relist instead of a hang. A dependency upgrade that changes this fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetop.config import settings_from
from fleetop.errors import Compacted, EtcdUnavailable
from fleetop.etcd.client import Etcd, Events, Op, Snapshot, WatchBatch
from fleetop.local.etcdserver import EtcdServer

Seen = tuple[str, str, int, bytes]  # (type, key, mod_revision, value)


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test alone (own data dir), to kill and restart on the same port."""
    server = EtcdServer(tmp_path / "data", extra_args=["--experimental-watch-progress-notify-interval=500ms"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def own_client(own_etcd: EtcdServer) -> AsyncIterator[Etcd]:
    settings = settings_from({"endpoints": own_etcd.endpoint, "command_timeout": "2s"}, {})
    async with await Etcd.connect(settings) as client:
        yield client


async def restart(server: EtcdServer, etcd: Etcd, *, kill: bool = True) -> None:
    """kill -9 (or stop) etcd, start it again on the same port and data dir, wait until it answers."""
    if kill:
        server.kill()
    else:
        server.stop()
    await asyncio.to_thread(server.start)
    for _ in range(150):
        with contextlib.suppress(EtcdUnavailable):
            await etcd.status()
            return
        await asyncio.sleep(0.1)
    raise AssertionError("etcd did not come back")


class Collector:
    """Consumes ``etcd.watch`` in a task and records every event."""

    def __init__(self, etcd: Etcd, prefix: str, start: int, *, delay: float = 0.0) -> None:
        self.seen: list[Seen] = []
        self.batches = 0
        self.first_batch = asyncio.Event()
        self._delay = delay
        self._task = asyncio.create_task(self._run(etcd, prefix, start))

    async def _run(self, etcd: Etcd, prefix: str, start: int) -> None:
        stream = etcd.watch(prefix, start)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                self.seen.extend((e.type, e.key, e.mod_revision, e.value) for e in batch)
                self.batches += 1
                self.first_batch.set()
                if self._delay:
                    await asyncio.sleep(self._delay)

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.seen) < count and loop.time() < deadline:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_watch_yields_puts_and_deletes_in_order(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    settings = settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})
    async with await Etcd.connect(settings) as etcd:
        first = await etcd.put("/w/a", "1")
        collector = Collector(etcd, "/w/", first)
        second = await etcd.put("/w/a", "2")
        await etcd.put("/wx", "not under /w/")
        deleted = (await etcd.txn([], [Op.delete("/w/a")]))[1][0].revision
        both = (await etcd.txn([], [Op.put("/w/b", "b"), Op.put("/w/c", "c")]))[1][0].revision
        await collector.wait_for(5)
        await collector.stop()
    assert collector.seen == [
        ("put", "/w/a", first, b"1"),
        ("put", "/w/a", second, b"2"),
        ("delete", "/w/a", deleted, b""),
        ("put", "/w/b", both, b"b"),
        ("put", "/w/c", both, b"c"),
    ]


async def test_watch_survives_kill_and_restart(own_etcd: EtcdServer, own_client: Etcd) -> None:
    etcd = own_client
    start = await etcd.put("/other", "x") + 1
    collector = Collector(etcd, "/k/", start)
    expected: list[Seen] = []
    for i in range(100):
        value = f"before-{i}".encode()
        expected.append(("put", f"/k/{i % 7}", await etcd.put(f"/k/{i % 7}", value), value))
    await collector.wait_for(50)
    await restart(own_etcd, etcd)
    for i in range(100):
        value = f"after-{i}".encode()
        expected.append(("put", f"/k/{i % 5}", await etcd.put(f"/k/{i % 5}", value), value))
    rev = (await etcd.txn([], [Op.delete("/k/6")]))[1][0].revision
    expected.append(("delete", "/k/6", rev, b""))
    await collector.wait_for(len(expected))
    await collector.stop()
    assert collector.seen == expected


async def test_watch_broken_in_the_middle_of_a_backlog(
    own_etcd: EtcdServer, own_client: Etcd, caplog: pytest.LogCaptureFixture
) -> None:
    etcd = own_client
    value = b"x" * 1500
    expected: list[Seen] = []
    start = 0
    for round_ in range(20):
        for i in range(100):  # single-event revisions
            key = f"/b/{(round_ * 100 + i) % 97}"
            revision = await etcd.put(key, value)
            start = start or revision
            expected.append(("put", key, revision, value))
        keys = [f"/b/t{round_}-{i}" for i in range(50)]  # one revision with 50 events
        revision = (await etcd.txn([], [Op.put(k, value) for k in keys]))[1][0].revision
        expected.extend(("put", k, revision, value) for k in keys)
    assert len(expected) == 3000  # 2,020 revisions: etcd sends them in several backlog batches

    caplog.set_level(logging.WARNING, logger="fleetop.etcd.watch")
    collector = Collector(etcd, "/b/", start, delay=0.2)
    await asyncio.wait_for(collector.first_batch.wait(), 20)
    assert len(collector.seen) < len(expected)
    await restart(own_etcd, etcd)
    await collector.wait_for(len(expected), timeout=60)
    await collector.stop()
    assert "reconnecting" in caplog.text  # the stream really broke
    assert len(collector.seen) == len(expected)
    assert collector.seen == expected


async def test_watch_from_a_compacted_revision_raises_compacted(own_client: Etcd) -> None:
    etcd = own_client
    for i in range(10):
        await etcd.put("/c/k", str(i))
    current = await etcd.put("/c/k", "last")
    await etcd.compact(current)
    stream = etcd.watch("/c/", 2)
    with pytest.raises(Compacted) as caught:
        async with contextlib.aclosing(stream):
            await asyncio.wait_for(anext(stream), 10)
    assert caught.value.compact_revision == current


async def test_list_watch_relists_after_compaction_while_disconnected(
    own_etcd: EtcdServer, own_client: Etcd
) -> None:
    etcd = own_client
    for name in "abcde":
        await etcd.put(f"/r/{name}", name)
    cache: dict[str, bytes] = {}
    snapshots = 0

    def apply(update: Snapshot | Events) -> None:
        nonlocal snapshots
        if isinstance(update, Snapshot):
            snapshots += 1
            cache.clear()
            cache.update({kv.key: kv.value for kv in update.items})
            return
        for event in update.events:
            if event.type == "delete":
                cache.pop(event.key, None)
            else:
                cache[event.key] = event.value

    stream = etcd.list_watch("/r/")
    async with contextlib.aclosing(stream):
        apply(await anext(stream))
        assert snapshots == 1 and sorted(cache) == [f"/r/{n}" for n in "abcde"]
        await etcd.put("/r/f", "f")
        apply(await asyncio.wait_for(anext(stream), 10))
        assert cache["/r/f"] == b"f"

        # The consumer is not reading: its stream breaks with etcd, and the history it needs goes.
        await restart(own_etcd, etcd)
        await etcd.delete("/r/a")
        await etcd.put("/r/b", "changed")
        await etcd.put("/r/g", "g")
        await etcd.compact(await etcd.put("/unrelated", "x"))

        update = await asyncio.wait_for(anext(stream), 20)
        assert isinstance(update, Snapshot)
        apply(update)
        assert snapshots == 2
        await etcd.put("/r/h", "h")
        while "/r/h" not in cache:
            apply(await asyncio.wait_for(anext(stream), 10))
    items, _ = await etcd.list("/r/")
    assert cache == {kv.key: kv.value for kv in items}
    assert "/r/a" not in cache and cache["/r/b"] == b"changed"


async def test_progress_notifications(own_client: Etcd) -> None:
    etcd = own_client
    revision = await etcd.put("/p/a", "1")
    stream = etcd.watch("/p/", revision, progress_notify=True)
    batches: list[WatchBatch] = []
    async with contextlib.aclosing(stream):
        while not any(b.progress for b in batches):
            batches.append(await asyncio.wait_for(anext(stream), 10))
    assert batches[0] == [batches[0][0]] and batches[0][0].key == "/p/a"
    progress = next(b for b in batches if b.progress)
    assert progress == [] and progress.revision >= revision
    assert batches[0].events is batches[0] and batches[0].revision == revision
