"""The operator's resolver: answers cached with a TTL, failures for a shorter one, a lookup that hangs
bounded by a timeout and shared between callers, a temporary failure keeping the last good answer.

Every lookup is a stub (tests never query real DNS); the clock is a value the test moves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from fleetop.discovery.resolve import LookupFailed, Resolver, names_of, system_lookup


class Stub:
    """Names mapped to addresses; anything else fails as 'name not known'. Counts lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []
        self.temporary = False

    def __call__(self, name: str) -> Sequence[str]:
        self.calls.append(name)
        if self.temporary:
            raise LookupFailed("Temporary failure in name resolution", temporary=True)
        if name not in self.table:
            raise LookupFailed("Name or service not known")
        return self.table[name]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_answers_are_cached_for_the_ttl_and_failures_for_the_negative_ttl() -> None:
    stub, clock = Stub({"good.test": ["127.0.0.2", "127.0.0.3"]}), Clock()
    resolver = Resolver(stub, ttl=30, negative_ttl=5, clock=clock)
    try:
        first = await resolver.resolve(["good.test", "bad.test"])
        assert first["good.test"].addresses == ("127.0.0.2", "127.0.0.3")
        assert first["good.test"].error is None
        assert first["bad.test"].addresses == ()
        assert "bad.test does not resolve: Name or service not known" in (first["bad.test"].error or "")
        await resolver.resolve(["good.test", "bad.test"])
        assert sorted(stub.calls) == ["bad.test", "good.test"]
        assert resolver.next_refresh(["good.test", "bad.test"]) == 5
        clock.now += 6  # the failure is due again, the answer is not
        await resolver.resolve(["good.test", "bad.test"])
        assert sorted(stub.calls) == ["bad.test", "bad.test", "good.test"]
        clock.now += 30
        stub.table["good.test"] = ["127.0.0.4"]
        again = await resolver.resolve(["good.test"])
        assert again["good.test"].addresses == ("127.0.0.4",)
    finally:
        resolver.close()


async def test_a_temporary_failure_keeps_the_last_good_answer_for_a_while() -> None:
    stub, clock = Stub({"good.test": ["127.0.0.2"]}), Clock()
    resolver = Resolver(stub, ttl=30, negative_ttl=5, stale_limit=100, clock=clock)
    try:
        await resolver.resolve(["good.test"])
        stub.temporary = True
        clock.now += 31
        kept = await resolver.resolve(["good.test"])
        assert kept["good.test"].addresses == ("127.0.0.2",)
        assert kept["good.test"].error is None
        clock.now += 100  # past the stale limit: the name is dropped after all
        dropped = await resolver.resolve(["good.test"])
        assert dropped["good.test"].addresses == ()
        assert "Temporary failure" in (dropped["good.test"].error or "")
    finally:
        resolver.close()


async def test_a_name_that_does_not_exist_any_more_is_dropped_at_once() -> None:
    stub, clock = Stub({"good.test": ["127.0.0.2"]}), Clock()
    resolver = Resolver(stub, ttl=30, clock=clock)
    try:
        await resolver.resolve(["good.test"])
        del stub.table["good.test"]
        clock.now += 31
        assert (await resolver.resolve(["good.test"]))["good.test"].addresses == ()
    finally:
        resolver.close()


async def test_a_hanging_lookup_times_out_and_is_shared_not_repeated() -> None:
    release = threading.Event()
    calls: list[str] = []

    def hangs(name: str) -> Sequence[str]:
        calls.append(name)
        release.wait(30)
        return ["127.0.0.9"]

    clock = Clock()
    resolver = Resolver(hangs, timeout=0.2, negative_ttl=0, clock=clock)
    try:
        first = await resolver.resolve(["slow.test"])
        assert "timed out after 0.2 s" in (first["slow.test"].error or "")
        second = await resolver.resolve(["slow.test"])  # expired at once, still in flight
        assert second["slow.test"].error is not None
        assert calls == ["slow.test"]
    finally:
        release.set()
        resolver.close()


async def test_addresses_are_normalised_and_junk_is_refused() -> None:
    stub = Stub({"v6.test": ["0:0:0:0:0:0:0:1", "127.0.0.2"], "junk.test": ["not-an-ip"]})
    resolver = Resolver(stub)
    try:
        found = await resolver.resolve(["v6.test", "junk.test"])
        assert found["v6.test"].addresses == ("127.0.0.2", "::1")
        assert "no usable" in (found["junk.test"].error or "")
    finally:
        resolver.close()


def test_names_of_leaves_addresses_out() -> None:
    assert names_of(["10.0.0.1", "::1", "web.internal"]) == {"web.internal"}


def test_system_lookup_answers_for_an_address_literal_without_dns() -> None:
    # getaddrinfo on a numeric host answers locally (AI_NUMERICHOST path): no query leaves the machine
    assert system_lookup("127.0.0.1") == ["127.0.0.1"]


async def test_many_names_due_at_once_are_not_timed_out_by_their_queue() -> None:
    """200 lookups of 30 ms each on 4 threads take 1.5 s in all, longer than the 1 s timeout; each
    lookup is timed on its own, so none fails."""

    def slowish(name: str) -> Sequence[str]:
        threading.Event().wait(0.03)
        return ["127.0.0.2"]

    resolver = Resolver(slowish, timeout=1.0, threads=4)
    try:
        found = await resolver.resolve(f"n{i}.test" for i in range(200))
        assert all(r.error is None for r in found.values()), [r.error for r in found.values() if r.error]
    finally:
        resolver.close()
