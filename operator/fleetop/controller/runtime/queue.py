"""The work queue between the informers and the reconcile workers (client-go's workqueue, in asyncio).

Events only say *which* key to look at, so the queue stores keys, never deltas, and a burst of events
for one key collapses into one pass. Three guarantees make level-triggered reconciling safe:

* dedupe: a key waiting in the queue is not added twice;
* exclusion: a key is never handed to two workers at once; a key added while it is being processed
  is remembered ("dirty") and queued again when that pass is done, so the later event is not lost;
* backoff: a key whose pass failed comes back after an exponential, jittered, capped delay
  (5 ms, 10 ms, ... 60 s) until a pass succeeds and :meth:`WorkQueue.forget` resets it.

:func:`run_workers` is the one place that turns a pass's (result, exception) into a queue action
(controller-runtime's ``reconcileHandler``): reconcilers return "requeue after" or raise, and never
touch the queue; what each outcome means is the table in :mod:`fleetop.controller.runtime.contract`.
Delayed adds are timer callbacks, so the queue owns no tasks of its own. Every delay is measured on the
queue's :class:`~fleetop.clock.Clock` (a FakeClock in tests, stepped instead of slept).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fleetop.backoff import exponential, spread
from fleetop.clock import SYSTEM_CLOCK, Clock, Timer
from fleetop.controller.runtime.contract import RACE_ERRORS, TERMINAL_ERRORS
from fleetop.errors import NotLeader, TemporaryError

log = logging.getLogger(__name__)

Reconcile = Callable[[str], Awaitable[float | None]]
Observer = Callable[[str, float, str], None]
"""Called after every pass with (key, seconds, outcome): outcome is success, requeue, error, terminal."""


class QueueShutDownError(Exception):
    """:meth:`WorkQueue.get` was called, or was waiting, when the queue shut down."""


@dataclass(frozen=True)
class Backoff:
    """Per-key exponential backoff: ``base * 2**failures`` capped at ``cap``, +/- ``jitter`` of it."""

    base: float = 0.005
    cap: float = 60.0
    jitter: float = 0.1

    def delay(self, failures: int) -> float:
        raw = exponential(failures, initial=self.base, cap=self.cap)
        return spread(raw, (1 - self.jitter, 1 + self.jitter), cap=self.cap)


class WorkQueue:
    """A deduplicating, per-key exclusive, rate-limited queue of string keys."""

    def __init__(self, backoff: Backoff | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, tuple[float, Timer]] = {}
        self._ready = asyncio.Event()
        self._shutting_down = False
        self.adds_total = 0
        self.retries_total = 0

    # -- adding ---------------------------------------------------------------------------------------
    def add(self, key: str) -> None:
        """Queue ``key`` now, unless it is already waiting. Cancels a pending delayed add of it."""
        if self._shutting_down:
            return
        self._cancel_timer(key)
        if key in self._dirty:
            return
        self.adds_total += 1
        self._dirty.add(key)
        if key in self._processing:
            return  # queued again by done()
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: str, seconds: float) -> None:
        """Queue ``key`` in ``seconds``; of several pending delays for a key the earliest wins."""
        if self._shutting_down:
            return
        if seconds <= 0:
            self.add(key)
            return
        when = self.clock.now() + seconds
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, self.clock.call_later(seconds, lambda: self._fire(key)))

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _cancel_timer(self, key: str) -> None:
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()

    def add_rate_limited(self, key: str, at_least: float = 0.0) -> float:
        """Queue ``key`` after its next backoff delay (or ``at_least``, if longer); returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.retries_total += 1
        delay = max(self.backoff.delay(failures), at_least)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """A pass succeeded: the next failure of ``key`` starts its backoff from the beginning."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def resync(self, keys: Iterable[str]) -> int:
        """Queue every key in ``keys`` (a periodic resync); returns how many there were."""
        count = 0
        for key in keys:
            self.add(key)
            count += 1
        return count

    # -- taking ---------------------------------------------------------------------------------------
    async def get(self) -> str:
        """Wait for a key and mark it processing; the caller must call :meth:`done` with it."""
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDownError
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        if not self._queue:
            self._ready.clear()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: str) -> None:
        """The pass over ``key`` ended; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._ready.set()

    def shut_down(self) -> None:
        """Wake every waiting :meth:`get` with :class:`QueueShutDownError`; drop pending delayed adds."""
        self._shutting_down = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._ready.set()

    # -- looking --------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Keys waiting to be handed out (not those being processed or waiting on a delay)."""
        return len(self._queue)

    @property
    def delayed(self) -> int:
        return len(self._timers)

    @property
    def processing(self) -> frozenset[str]:
        return frozenset(self._processing)

    def __len__(self) -> int:
        return self.depth

    def __contains__(self, key: object) -> bool:
        return key in self._dirty


async def run_resync(queue: WorkQueue, period: float, keys: Callable[[], Iterable[str]]) -> None:
    """Every ``period`` seconds (on the queue's clock), queue every key ``keys()`` names (drift the
    events did not show)."""
    while True:
        await queue.clock.sleep(period)
        count = queue.resync(keys())
        log.debug("resync queued %d keys", count)


async def run_workers(
    queue: WorkQueue, reconcile: Reconcile, workers: int, observe: Observer | None = None
) -> None:
    """Run ``workers`` concurrent passes over the queue until cancelled or the queue shuts down."""
    async with asyncio.TaskGroup() as group:
        for index in range(max(1, workers)):
            group.create_task(_worker(queue, reconcile, observe), name=f"worker-{index}")


async def _worker(queue: WorkQueue, reconcile: Reconcile, observe: Observer | None) -> None:
    while True:
        try:
            key = await queue.get()
        except QueueShutDownError:
            return
        started = queue.clock.now()
        outcome = "error"
        try:
            outcome = await _handle(queue, reconcile, key)
        finally:
            queue.done(key)
            if observe is not None:
                _observe(observe, key, queue.clock.now() - started, outcome)


def _observe(observe: Observer, key: str, seconds: float, outcome: str) -> None:
    """Metrics are a report: failing to record one must not end a worker."""
    try:
        observe(key, seconds, outcome)
    except Exception:
        log.exception("recording the pass over %s failed", key)


async def _handle(queue: WorkQueue, reconcile: Reconcile, key: str) -> str:
    """One pass; the outcome decides the queue action. CancelledError passes through untouched."""
    try:
        requeue_after = await reconcile(key)
    except TemporaryError as exc:
        delay = queue.add_rate_limited(key, exc.delay or 0.0)
        log.warning("reconcile %s: %s (retry in %.2fs)", key, exc, delay)
        return "error"
    except NotLeader:
        log.info("reconcile %s: no longer the leader, dropping the key", key)
        queue.forget(key)
        return "terminal"
    except TERMINAL_ERRORS as exc:
        log.error("reconcile %s: %s (not retried until the next change or resync)", key, exc)
        queue.forget(key)
        return "terminal"
    except RACE_ERRORS as exc:
        # A race with another writer is expected and explained by its message: no traceback.
        delay = queue.add_rate_limited(key)
        log.warning("reconcile %s: %s (retry in %.2fs)", key, exc, delay)
        return "error"
    except Exception as exc:
        delay = queue.add_rate_limited(key)
        log.exception("reconcile %s failed: %s (retry in %.2fs)", key, exc, delay)
        return "error"
    queue.forget(key)
    if requeue_after is not None and requeue_after > 0:
        queue.add_after(key, requeue_after)
        return "requeue"
    return "success"
