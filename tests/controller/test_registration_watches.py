"""Registration caches against a real etcd: many prefixes under one parent share one watch, and each
prefix still sees exactly its own keys, changes and revision."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from fleetop.config import EtcdSettings
from fleetop.etcd.client import Etcd, Events, KeyValue, Snapshot, WatchEvent
from fleetop.local.etcdserver import EtcdServer
from fleetop.prefixes import (
    SHARED_WATCH_FROM,
    RegistrationCaches,
    SharedPrefixCache,
    parent_prefix,
)
from waiting import eventually

MANY = SHARED_WATCH_FROM + 2


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(
        EtcdSettings(endpoints=(etcd_server.endpoint,), prefix=etcd_prefix)
    ) as client:
        yield client


def prefixes(count: int) -> list[str]:
    return [f"/services/s{n:02d}/" for n in range(count)]


@contextlib.asynccontextmanager
async def running(caches: RegistrationCaches) -> AsyncIterator[RegistrationCaches]:
    task = asyncio.create_task(caches.run())
    try:
        yield caches
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_parent_prefix() -> None:
    assert parent_prefix("/services/web/") == "/services/"
    assert parent_prefix("/skydns/local/web/") == "/skydns/local/"
    assert parent_prefix("/web/") is None  # never the root


async def test_many_prefixes_share_one_watch_and_each_sees_its_own(etcd: Etcd) -> None:
    await etcd.put("/services/s01/a", b"10.0.0.1:80")
    await etcd.put("/services/other/x", b"10.0.0.9:80")  # a child no spec names
    await etcd.put("/services/bare", b"ignored")  # right under the parent: no prefix's key
    changes: list[tuple[str, set[str]]] = []
    caches = RegistrationCaches(etcd, lambda prefix, changed: changes.append((prefix, changed)))
    async with running(caches):
        caches.want(prefixes(MANY))
        await eventually(lambda: caches.synced, 10.0, "the registration caches to sync")
        assert caches.watches == 1
        one, two = caches.cache("/services/s01/"), caches.cache("/services/s02/")
        assert one is not None and two is not None
        assert [kv.key for kv in one.under("/services/s01/")] == ["/services/s01/a"]
        assert two.under("/services/s02/") == []
        assert ("/services/s01/", {"/services/s01/a"}) in changes

        # a put under one prefix moves that prefix alone
        before_two, changes[:] = two.revision, []
        await etcd.put("/services/s02/b", b"10.0.0.2:80")
        await eventually(lambda: two.under("/services/s02/"), 10.0, "s02's new key")
        assert two.revision > before_two
        assert changes == [("/services/s02/", {"/services/s02/b"})]
        assert [kv.key for kv in one.under("/services/s01/")] == ["/services/s01/a"]
        assert one.revision < two.revision

        # a delete is seen
        await etcd.delete("/services/s01/a")
        await eventually(lambda: not one.under("/services/s01/"), 10.0, "s01's key to go")

        # a child wanted later starts with what is already stored under it, without a new watch
        caches.want([*prefixes(MANY), "/services/other/"])
        await eventually(lambda: caches.cache("/services/other/"), 10.0, "the cache of other")
        other = caches.cache("/services/other/")
        assert other is not None and [kv.key for kv in other.under("/services/other/")] == [
            "/services/other/x"
        ]
        assert caches.watches == 1

        # below the threshold each prefix follows its own watch again, and still sees its keys
        caches.want(prefixes(3))
        await eventually(lambda: caches.watches == 3 and caches.synced, 10.0, "one watch per prefix")
        again = caches.cache("/services/s02/")
        assert again is not None and [kv.key for kv in again.under("/services/s02/")] == ["/services/s02/b"]
        assert caches.cache("/services/other/") is None


async def test_few_prefixes_are_watched_alone(etcd: Etcd) -> None:
    caches = RegistrationCaches(etcd, lambda prefix, changed: None)
    async with running(caches):
        caches.want([*prefixes(2), "/web/"])
        await eventually(lambda: caches.synced, 10.0, "the registration caches to sync")
        assert caches.watches == 3


def test_a_relist_replaces_every_view() -> None:
    shared = SharedPrefixCache(Etcd.__new__(Etcd), "/services/", lambda prefix, changed: None)
    shared.want(["/services/a/", "/services/b/"])
    kv = KeyValue("/services/a/1", b"x", 5, 5, 1, 0)
    shared.feed(Snapshot([kv, KeyValue("/services/c/1", b"y", 6, 6, 1, 0)], 6))
    view_a, view_b = shared.views["/services/a/"], shared.views["/services/b/"]
    assert view_a.items == {"/services/a/1": kv} and view_b.items == {} and view_b.synced.is_set()
    assert set(shared.others) == {"/services/c/"}
    shared.feed(Events([WatchEvent("put", "/services/c/2", b"z", 7, 7, 1)], 7))
    assert set(shared.others["/services/c/"]) == {"/services/c/1", "/services/c/2"}
    assert view_a.revision == 6  # not touched by a change elsewhere
    shared.feed(Snapshot([], 9))  # after a compaction: everything is gone
    assert view_a.items == {} and shared.others == {} and view_a.revision == 9
