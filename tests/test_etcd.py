"""fleetop.etcd.client against a real etcd: keys, guarded writes, transactions, paged lists, leases,
failover."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from fleetop.config import EtcdSettings, settings_from
from fleetop.errors import Conflict, EtcdUnavailable, InputError, NotLeader
from fleetop.etcd.client import Compare, Etcd, LeaseKeeper, Op
from fleetop.local.etcdserver import EtcdServer, free_port
from waiting import eventually


def settings_for(endpoints: str, prefix: str = "", **flags: str) -> EtcdSettings:
    return settings_from({"endpoints": endpoints, "prefix": prefix, **flags}, {})


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    async with await Etcd.connect(settings_for(etcd_server.endpoint, etcd_prefix)) as client:
        yield client


async def test_put_get_delete(etcd: Etcd) -> None:
    revision = await etcd.put("/a", "one")
    kv = await etcd.get("/a")
    assert kv is not None
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease) == (
        "/a",
        b"one",
        revision,
        revision,
        1,
        0,
    )
    second = await etcd.put("/a", b"two")
    kv = await etcd.get("/a")
    assert kv is not None and kv.value == b"two" and kv.mod_revision == second > revision and kv.version == 2
    assert await etcd.get("/missing") is None
    assert await etcd.delete("/a") is True
    assert await etcd.delete("/a") is False
    assert await etcd.get("/a") is None


async def test_keys_are_isolated_by_prefix(etcd: Etcd, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    await etcd.put("/desired/services/web", "{}")
    async with await Etcd.connect(settings_for(etcd_server.endpoint)) as raw:
        kv = await raw.get(f"{etcd_prefix}/desired/services/web")
        assert kv is not None and kv.key == f"{etcd_prefix}/desired/services/web"
    items, revision = await etcd.list("/desired/")
    assert [kv.key for kv in items] == ["/desired/services/web"]
    assert revision >= items[0].mod_revision


async def test_list_sorted_and_keys_only(etcd: Etcd) -> None:
    for name in ("c", "a", "b"):
        await etcd.put(f"/l/{name}", name * 3)
    await etcd.put("/lx", "outside the prefix /l/")
    items, _ = await etcd.list("/l/")
    assert [(kv.key, kv.value) for kv in items] == [("/l/a", b"aaa"), ("/l/b", b"bbb"), ("/l/c", b"ccc")]
    keys, _ = await etcd.list("/l/", keys_only=True, page_size=2)
    assert [kv.key for kv in keys] == ["/l/a", "/l/b", "/l/c"] and all(kv.value == b"" for kv in keys)


async def test_compare_and_swap(etcd: Etcd) -> None:
    first = await etcd.put("/cas", "v1", prev_mod_revision=0)
    with pytest.raises(Conflict, match="/cas"):
        await etcd.put("/cas", "again", prev_mod_revision=0)
    second = await etcd.put("/cas", "v2", prev_mod_revision=first)
    with pytest.raises(Conflict):
        await etcd.put("/cas", "stale", prev_mod_revision=first)
    with pytest.raises(Conflict):
        await etcd.delete("/cas", prev_mod_revision=first)
    kv = await etcd.get("/cas")
    assert kv is not None and kv.value == b"v2" and kv.mod_revision == second
    assert await etcd.delete("/cas", prev_mod_revision=second) is True


async def test_fenced_writes(etcd: Etcd) -> None:
    await etcd.put("/fleetop/leader", b"me")
    fence = ("/fleetop/leader", b"me")
    await etcd.put("/status/x", "ok", fence=fence)
    await etcd.put("/fleetop/leader", b"someone-else")
    with pytest.raises(NotLeader):
        await etcd.put("/status/x", "stale leader", fence=fence)
    with pytest.raises(NotLeader):
        await etcd.delete("/status/x", fence=fence)
    await etcd.delete("/fleetop/leader")
    with pytest.raises(NotLeader):
        await etcd.put("/status/x", "no leader at all", fence=fence)
    kv = await etcd.get("/status/x")
    assert kv is not None and kv.value == b"ok"
    # Fence and CAS together: a CAS loss with a valid fence is a Conflict, not NotLeader.
    await etcd.put("/fleetop/leader", b"me")
    with pytest.raises(Conflict):
        await etcd.put("/status/x", "x", fence=fence, prev_mod_revision=1)


async def test_txn_create_if_absent_with_lease(etcd: Etcd) -> None:
    lease = await etcd.grant(30)
    try:
        ok, results = await etcd.txn(
            [Compare.absent("/leader")], [Op.put("/leader", "a", lease=lease)], [Op.get("/leader")]
        )
        assert ok and results[0].kind == "put" and results[0].revision > 0
        ok, results = await etcd.txn(
            [Compare.absent("/leader")], [Op.put("/leader", "b", lease=lease)], [Op.get("/leader")]
        )
        assert not ok and results[0].kvs[0].value == b"a" and results[0].kvs[0].lease == lease
        ok, _ = await etcd.txn([Compare.value_is("/leader", "a"), Compare.lease_is("/leader", lease)], [])
        assert ok
        await etcd.put("/p/1", "x")
        await etcd.put("/p/2", "y")
        ok, results = await etcd.txn([], [Op.get("/p/", prefix=True), Op.delete("/p/", prefix=True)])
        assert [kv.key for kv in results[0].kvs] == ["/p/1", "/p/2"] and results[1].deleted == 2
    finally:
        await etcd.revoke(lease)
    assert await etcd.get("/leader") is None


async def test_delete_prefix(etcd: Etcd, etcd_server: EtcdServer) -> None:
    for i in range(5):
        await etcd.put(f"/dp/{i}", "x")
    await etcd.put("/dpx", "stays")
    assert await etcd.delete_prefix("/dp/") == 5
    assert [kv.key for kv in (await etcd.list(""))[0]] == ["/dpx"]
    async with await Etcd.connect(settings_for(etcd_server.endpoint)) as unprefixed:
        with pytest.raises(InputError):
            await unprefixed.delete_prefix("")


async def test_paged_list_of_large_prefix_is_pinned_to_one_revision(etcd: Etcd) -> None:
    value = b"v" * 2048
    for start in range(0, 3000, 100):  # 3,000 keys of 2 KiB: about 6 MiB, more than one 4 MiB message
        await etcd.txn([], [Op.put(f"/big/a{i:05d}", value) for i in range(start, start + 100)])
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            await etcd.put(f"/big/zz{n:05d}", b"new")
            await etcd.put(f"/big/a{n:05d}", b"changed")
            n += 1

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.05)
        items, revision = await etcd.list("/big/", page_size=200)
    finally:
        stop.set()
        await task
    assert all(kv.mod_revision <= revision for kv in items)
    originals = [kv for kv in items if kv.key.startswith("/big/a")]
    assert len(originals) == 3000
    assert [kv.key for kv in items] == sorted(kv.key for kv in items)
    created, _ = await etcd.list("/big/zz")
    expected_new = sorted(kv.key for kv in created if kv.create_revision <= revision)
    assert [kv.key for kv in items if kv.key.startswith("/big/zz")] == expected_new
    assert sum(len(kv.value) for kv in items) > 4 * 1024 * 1024
    await etcd.delete_prefix("/big/")


async def test_key_disappears_when_lease_expires(etcd: Etcd) -> None:
    lease = await etcd.grant(1)
    await etcd.put("/ephemeral", "x", lease=lease)
    kv = await etcd.get("/ephemeral")
    assert kv is not None and kv.lease == lease
    await eventually(lambda: _absent(etcd, "/ephemeral"), 15.0)
    assert await etcd.keepalive_once(lease) <= 0


async def _absent(etcd: Etcd, key: str) -> bool:
    return await etcd.get(key) is None


async def test_lease_keeper_keeps_key_alive_and_revokes_on_exit(etcd: Etcd) -> None:
    async with LeaseKeeper(etcd, 0, ttl=2) as keeper:
        await etcd.put("/kept", "x", lease=keeper.lease)
        await asyncio.sleep(4.5)  # more than two TTLs
        assert await etcd.get("/kept") is not None
        assert not keeper.lost.is_set()
        assert await etcd.keepalive_once(keeper.lease) > 0
    assert await etcd.get("/kept") is None


async def test_lease_keeper_regrants_and_registers_again(etcd: Etcd) -> None:
    registered: list[int] = []

    async def register(lease: int) -> None:
        registered.append(lease)
        await etcd.put("/sidekick", "10.0.0.1:8001", lease=lease)

    async with LeaseKeeper(etcd, 0, ttl=2, regrant=True, on_regrant=register) as keeper:
        first = keeper.lease
        await register(first)
        await etcd.revoke(first)  # as if it had expired: the key goes with it
        await eventually(lambda: len(registered) == 2)
        assert keeper.lease != first and registered[-1] == keeper.lease
        kv = await etcd.get("/sidekick")
        assert kv is not None and kv.lease == keeper.lease
        await eventually(lambda: not keeper.lost.is_set())


async def test_lease_keeper_sets_lost_when_etcd_is_down_longer_than_ttl(own_etcd: EtcdServer) -> None:
    async with await Etcd.connect(settings_for(own_etcd.endpoint, command_timeout="1s")) as etcd:
        keeper = LeaseKeeper(etcd, 0, ttl=2)
        async with keeper:
            await etcd.put("/leader", "me", lease=keeper.lease)
            await asyncio.sleep(0.5)
            assert not keeper.lost.is_set()
            own_etcd.stop()
            await asyncio.wait_for(keeper.lost.wait(), 15)
            assert not keeper.expired  # lost because it could not be proven alive, not reported expired
            await asyncio.to_thread(own_etcd.start)


async def test_failover_to_a_live_endpoint(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    for endpoints in (f"{dead},{etcd_server.endpoint}", f"{etcd_server.endpoint},{dead}"):
        async with await Etcd.connect(settings_for(endpoints, etcd_prefix)) as etcd:
            for i in range(20):
                await etcd.put(f"/fo/{i}", str(i))
            assert len((await etcd.list("/fo/"))[0]) == 20
            assert (await etcd.status())["has_leader"]


async def test_dns_name_endpoint(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    async with await Etcd.connect(
        settings_for(f"http://localhost:{etcd_server.client_port}", etcd_prefix)
    ) as etcd:
        await etcd.put("/dns", "ok")
        assert await etcd.ping() > 0


async def test_unreachable_etcd_fails_within_dial_timeout() -> None:
    settings = settings_for(f"127.0.0.1:{free_port()}", dial_timeout="1s")
    with pytest.raises(EtcdUnavailable, match="cannot reach etcd"):
        await Etcd.connect(settings)


async def test_calls_while_etcd_is_down_raise_etcd_unavailable(own_etcd: EtcdServer) -> None:
    async with await Etcd.connect(settings_for(own_etcd.endpoint, command_timeout="1s")) as etcd:
        await etcd.put("/k", "v")
        own_etcd.kill()
        for call in (etcd.get("/k"), etcd.put("/k", "w"), etcd.list("/"), etcd.grant(5), etcd.status()):
            with pytest.raises(EtcdUnavailable):
                await call
        await asyncio.to_thread(own_etcd.start)
        await eventually(lambda: _reachable(etcd))
        kv = await etcd.get("/k")
        assert kv is not None and kv.value == b"v"


async def _reachable(etcd: Etcd) -> bool:
    with contextlib.suppress(EtcdUnavailable):
        await etcd.get("/k")
        return True
    return False
