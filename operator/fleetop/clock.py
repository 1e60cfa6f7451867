"""The monotonic clock of the controller's timing code, injectable (client-go's ``clock.Clock``).

The work queue's delays and backoff, the fleet informer's polling and stall detection, and the leader
elector's renew deadline all read time and wait through a :class:`Clock` instead of calling
``time.monotonic()``, ``asyncio.sleep`` or ``asyncio.timeout`` themselves. Production uses
:data:`SYSTEM_CLOCK` (exactly those calls); tests pass a :class:`FakeClock`, whose time moves only when
the test calls :meth:`FakeClock.step`, so a test of "retried after 60 s" or "steps down after the renew
deadline" neither sleeps nor depends on how busy the machine is.

Only monotonic time lives here. UNIX time stamps written to status and events stay plain
``Callable[[], float]`` clocks where they are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Timer(Protocol):
    """A pending callback (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and the ways to wait on it."""

    def now(self) -> float:
        """Seconds on a monotonic clock (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback`` (on the running event loop) in ``seconds``, unless cancelled first."""
        ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Like ``asyncio.timeout``: cancel the block after ``seconds`` and raise TimeoutError."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` (the event loop's time) and asyncio's own waits."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, callback)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class _FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that stands still until :meth:`step` moves it (tests).

    Sleeps, timers and timeouts wait on this clock's time only. :meth:`step` fires what falls due in
    order of due time (ties in order of scheduling), letting the event loop run after each one, so a
    task woken by one timer that waits again inside the same step is woken again in that step.
    """

    SETTLE_ROUNDS = 20
    """Event-loop iterations run after each fired timer (and before and after a step): enough for
    woken tasks to reach their next wait when that wait involves no I/O."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await woken
        finally:
            timer.cancel()

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        if seconds <= 0:  # due now: run soon, as the event loop would, without waiting for a step
            return asyncio.get_running_loop().call_soon(callback)
        timer = _FakeTimer(self._now + seconds, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return self._timeout(seconds)

    @contextlib.asynccontextmanager
    async def _timeout(self, seconds: float | None) -> AsyncIterator[object]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as scope:
            timer = None
            if seconds is not None and seconds <= 0:
                scope.reschedule(loop.time())  # already past, as asyncio.timeout(0) is
            elif seconds is not None:
                timer = self.call_later(seconds, lambda: scope.reschedule(loop.time()))
            try:
                yield scope
            finally:
                if timer is not None:
                    timer.cancel()

    @property
    def pending(self) -> int:
        """Timers (sleeps, delayed calls, timeouts) waiting on this clock."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def next_due(self) -> float | None:
        """When the earliest pending timer falls due, or None."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    async def step(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due on the way."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds:g}s)")
        target = self._now + seconds
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._timers or self._timers[0][0] > target:
                break
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            timer.callback()
            await self.settle()
        self._now = target
        await self.settle()

    async def settle(self) -> None:
        """Let the event loop run a few iterations (tasks woken by a step reach their next wait)."""
        for _ in range(self.SETTLE_ROUNDS):
            await asyncio.sleep(0)

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
