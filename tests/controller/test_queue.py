"""The work queue: dedupe, per-key exclusion, backoff growth and cap, delayed adds, resync, workers.

Every delay runs on a FakeClock that the test steps: nothing here sleeps, so what is asserted (which
key came back, after which delay, how many passes) does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter

import pytest

from fleetop.clock import FakeClock
from fleetop.controller.runtime.queue import Backoff, QueueShutDownError, WorkQueue, run_resync, run_workers
from fleetop.errors import Conflict, PermanentError, TemporaryError


async def test_dedupes_waiting_keys() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add("services/web")
    queue.add("services/api")
    assert queue.depth == 2
    assert await queue.get() == "services/web"
    assert await queue.get() == "services/api"
    assert queue.depth == 0


async def test_key_added_while_processing_is_requeued_after_done() -> None:
    queue = WorkQueue()
    queue.add("k")
    key = await queue.get()
    queue.add("k")
    queue.add("k")
    assert queue.depth == 0, "a key being processed must not be handed to another worker"
    queue.done(key)
    assert queue.depth == 1
    assert await queue.get() == "k"
    queue.done("k")
    assert queue.depth == 0


async def test_workers_never_process_one_key_concurrently() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    active: Counter[str] = Counter()
    overlaps: list[str] = []
    passes: Counter[str] = Counter()

    async def reconcile(key: str) -> float | None:
        active[key] += 1
        if active[key] > 1:
            overlaps.append(key)
        passes[key] += 1
        await clock.sleep(0.005)
        active[key] -= 1
        return None

    task = asyncio.create_task(run_workers(queue, reconcile, workers=8))
    for _ in range(30):
        for key in ("a", "b", "c"):
            queue.add(key)
        await clock.step(0.002)
    await clock.step(0.1)
    assert queue.depth == 0 and not queue.processing
    queue.shut_down()
    await asyncio.wait_for(task, 5)
    assert not overlaps
    assert set(passes) == {"a", "b", "c"}
    assert all(count < 30 for count in passes.values()), "adds during processing are collapsed"


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(base=0.005, cap=60.0, jitter=0.0)
    delays = [backoff.delay(n) for n in range(30)]
    assert delays[0] == pytest.approx(0.005)
    assert delays[1] == pytest.approx(0.01)
    assert delays[5] == pytest.approx(0.16)
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert max(delays) == 60.0
    jittered = Backoff(base=1.0, cap=60.0, jitter=0.1)
    assert all(0.9 * 8 <= jittered.delay(3) <= 1.1 * 8 for _ in range(50))
    assert all(jittered.delay(40) <= 60.0 for _ in range(50))


async def test_rate_limited_adds_back_off_and_forget_resets() -> None:
    queue = WorkQueue(Backoff(base=0.01, cap=0.08, jitter=0.0))
    delays = [queue.add_rate_limited("k") for _ in range(6)]
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.08, 0.08])
    assert queue.failures("k") == 6
    assert queue.retries_total == 6
    queue.forget("k")
    assert queue.add_rate_limited("k") == pytest.approx(0.01)
    assert queue.add_rate_limited("k", at_least=0.5) == pytest.approx(0.5)
    queue.shut_down()


async def test_add_after_keeps_the_earliest_and_add_now_wins() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("k", 10.0)
    queue.add_after("k", 0.02)
    queue.add_after("k", 5.0)
    assert queue.depth == 0 and queue.delayed == 1
    await clock.step(0.019)
    assert queue.depth == 0, "not due yet"
    await clock.step(0.001)
    assert queue.depth == 1 and queue.delayed == 0
    assert await queue.get() == "k"
    queue.done("k")
    await clock.step(10.0)
    assert queue.depth == 0, "the later delays were dropped, not kept for later"
    queue.add_after("j", 10.0)
    queue.add("j")
    assert queue.delayed == 0 and queue.depth == 1
    queue.shut_down()


async def test_failing_key_is_retried_with_growing_delay_then_forgotten() -> None:
    clock = FakeClock()
    queue = WorkQueue(Backoff(base=0.01, cap=1.0, jitter=0.0), clock=clock)
    calls: list[float] = []

    async def reconcile(key: str) -> float | None:
        calls.append(clock.now())
        if len(calls) < 5:
            raise RuntimeError("boom")
        return None

    task = asyncio.create_task(run_workers(queue, reconcile, workers=2))
    queue.add("k")
    await clock.step(10.0)
    assert queue.depth == 0 and queue.delayed == 0
    queue.shut_down()
    await asyncio.wait_for(task, 5)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps == pytest.approx([0.01, 0.02, 0.04, 0.08]), "each retry waits twice as long"
    assert queue.failures("k") == 0


async def test_permanent_error_is_not_retried_temporary_uses_its_delay() -> None:
    clock = FakeClock()
    queue = WorkQueue(Backoff(base=0.001, cap=0.01, jitter=0.0), clock=clock)
    calls: Counter[str] = Counter()
    times: list[float] = []

    async def reconcile(key: str) -> float | None:
        calls[key] += 1
        if key == "temp":
            times.append(clock.now())
        if key == "perm":
            raise PermanentError("never")
        if calls[key] == 1:
            raise TemporaryError("later", delay=0.05)
        return 0.03 if calls[key] == 2 else None

    outcomes: list[tuple[str, str]] = []
    task = asyncio.create_task(
        run_workers(queue, reconcile, 2, observe=lambda k, s, o: outcomes.append((k, o)))
    )
    queue.add("perm")
    queue.add("temp")
    start = clock.now()
    await clock.step(0.3)
    queue.shut_down()
    await asyncio.wait_for(task, 5)
    assert calls["perm"] == 1
    assert calls["temp"] == 3
    assert [t - start for t in times] == pytest.approx([0.0, 0.05, 0.08]), "the error's delay, then 0.03"
    assert ("perm", "terminal") in outcomes
    assert [o for k, o in outcomes if k == "temp"] == ["error", "requeue", "success"]


async def test_a_race_is_retried_and_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Conflict (another writer moved the key) is retried like any failure, but it is expected:
    one warning line with its message, not a traceback; a bug keeps its traceback."""
    clock = FakeClock()
    queue = WorkQueue(Backoff(base=0.01, cap=1.0, jitter=0.0), clock=clock)
    calls: Counter[str] = Counter()

    async def reconcile(key: str) -> float | None:
        calls[key] += 1
        if calls[key] == 1:
            raise Conflict("status/web moved under us") if key == "race" else RuntimeError("boom")
        return None

    task = asyncio.create_task(run_workers(queue, reconcile, workers=2))
    with caplog.at_level(logging.WARNING, logger="fleetop.controller.runtime.queue"):
        queue.add("race")
        queue.add("bug")
        await clock.step(1.0)
    queue.shut_down()
    await asyncio.wait_for(task, 5)
    assert calls == {"race": 2, "bug": 2}, "both are retried"
    race = [r for r in caplog.records if "reconcile race" in r.getMessage()]
    bug = [r for r in caplog.records if "reconcile bug" in r.getMessage()]
    assert len(race) == 1 and race[0].exc_info is None and "moved under us" in race[0].getMessage()
    assert race[0].levelno == logging.WARNING
    assert len(bug) == 1 and bug[0].exc_info is not None


async def test_resync_queues_every_known_key() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    known = ["services/a", "services/b", "proxies/p"]
    rounds: list[float] = []

    def keys() -> list[str]:
        rounds.append(clock.now())
        return known

    task = asyncio.create_task(run_resync(queue, 20.0, keys))
    start = clock.now()
    await clock.step(19.0)
    assert queue.depth == 0 and not rounds
    await clock.step(51.0)
    assert [t - start for t in rounds] == [20.0, 40.0, 60.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = {await queue.get() for _ in range(3)}
    assert seen == set(known)
    assert queue.depth == 0


async def test_shut_down_wakes_waiting_getters() -> None:
    queue = WorkQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.shut_down()
    with pytest.raises(QueueShutDownError):
        await asyncio.wait_for(getter, 1)
