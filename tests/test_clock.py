"""The injectable clock: the system clock is asyncio's, the fake one moves only when stepped."""

from __future__ import annotations

import asyncio

import pytest

from fleetop.clock import SYSTEM_CLOCK, FakeClock


async def test_sleepers_wake_in_order_of_due_time_and_only_when_stepped() -> None:
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 3.0), ("early", 1.0), ("mid", 2.0))]
    await clock.settle()
    assert clock.pending == 3 and clock.next_due() == 1.0
    await clock.step(0.5)
    assert woke == []
    await clock.step(2.0)
    assert woke == [("early", 1.0), ("mid", 2.0)] and clock.now() == 2.5
    await clock.step(0.5)
    assert woke[-1] == ("late", 3.0)
    await asyncio.gather(*tasks)
    assert clock.pending == 0


async def test_a_task_that_sleeps_again_is_woken_again_within_one_step() -> None:
    clock = FakeClock(start=0.0)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(1.0)
            ticks.append(clock.now())

    task = asyncio.create_task(ticker())
    try:
        await clock.step(3.5)
        assert ticks == [1.0, 2.0, 3.0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_timeouts_and_cancelled_timers() -> None:
    clock = FakeClock()
    never = asyncio.Event()

    async def wait_with_timeout() -> None:
        async with clock.timeout(5.0):
            await never.wait()

    task = asyncio.create_task(wait_with_timeout())
    await clock.step(4.9)
    assert not task.done()
    await clock.step(0.1)
    with pytest.raises(TimeoutError):
        await task

    fired: list[str] = []
    timer = clock.call_later(1.0, lambda: fired.append("cancelled"))
    clock.call_later(1.0, lambda: fired.append("kept"))
    timer.cancel()
    async with clock.timeout(1.0):
        pass  # a block that ends in time leaves no timer behind
    await clock.step(2.0)
    assert fired == ["kept"] and clock.pending == 0
    with pytest.raises(ValueError, match="cannot go back"):
        await clock.step(-1.0)


async def test_the_system_clock_is_the_event_loop_s() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    now = SYSTEM_CLOCK.now()
    assert before <= now <= loop.time()
    fired = asyncio.Event()
    SYSTEM_CLOCK.call_later(0, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    with pytest.raises(TimeoutError):
        async with SYSTEM_CLOCK.timeout(0):
            await asyncio.Event().wait()


async def test_what_is_due_now_does_not_wait_for_a_step() -> None:
    clock = FakeClock()
    fired = asyncio.Event()
    clock.call_later(0, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    with pytest.raises(TimeoutError):
        async with clock.timeout(0):
            await asyncio.Event().wait()
    assert clock.pending == 0
