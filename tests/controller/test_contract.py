"""The reconciler contract's table, row by row, against what the work queue and the dispatcher do: each
error class a pass can raise, what the queue does with its key (retry with backoff, requeue after,
terminal), and whether the failure is reported on the key."""

from __future__ import annotations

import pytest

from fleetop.clock import FakeClock
from fleetop.controller.runtime.contract import Dispatcher, queue_meaning
from fleetop.controller.runtime.queue import Reconcile, WorkQueue, _handle
from fleetop.errors import (
    Compacted,
    ConfigError,
    Conflict,
    EtcdDenied,
    EtcdUnavailable,
    FleetAPIError,
    FleetUnavailable,
    InputError,
    NameTaken,
    NotFound,
    NotLeader,
    ProxyError,
    SpecInvalid,
    TemporaryError,
)

KEY = "proxies/edge"

RETRIED: list[BaseException] = [
    TemporaryError("etcd busy"),
    EtcdUnavailable("etcd unreachable"),
    FleetUnavailable("fleet answered 503"),
    Conflict("lost a compare-and-swap"),
    NotFound("gone meanwhile"),
    RuntimeError("a bug"),
    MemoryError("exhausted"),
]
TERMINAL: list[BaseException] = [
    FleetAPIError(400, "bad request"),
    FleetAPIError(404, "no such unit"),
    FleetAPIError(409, "conflict"),
    FleetAPIError(422, "unprocessable"),
    EtcdDenied("permission denied"),
    Compacted(12),
    ProxyError("check failed"),
    InputError("bad input", where="key /desired/proxies/edge"),
    SpecInvalid([("$.listen", "not an address")]),
    NameTaken("the name 'edge' is taken by service 'edge'"),
    ConfigError("bad flag"),
]
REPORTED_RETRIED = (RuntimeError, MemoryError)


def raising(exc: BaseException) -> Reconcile:
    async def reconcile(key: str) -> float | None:
        raise exc

    return reconcile


def returning(value: float | None) -> Reconcile:
    async def reconcile(key: str) -> float | None:
        return value

    return reconcile


@pytest.mark.parametrize("exc", RETRIED, ids=lambda e: type(e).__name__)
async def test_retried_errors_come_back_with_backoff(exc: BaseException) -> None:
    queue = WorkQueue()
    assert await _handle(queue, raising(exc), KEY) == "error"
    assert queue.failures(KEY) == 1 and queue.delayed == 1 and queue.retries_total == 1
    assert queue_meaning(exc) == "retry"
    queue.shut_down()


@pytest.mark.parametrize("exc", TERMINAL, ids=lambda e: f"{type(e).__name__}-{e}"[:40])
async def test_terminal_errors_are_forgotten(exc: BaseException) -> None:
    queue = WorkQueue()
    queue.add_rate_limited(KEY)  # an earlier failure: its backoff is forgotten too
    assert await _handle(queue, raising(exc), KEY) == "terminal"
    assert queue.failures(KEY) == 0
    assert queue_meaning(exc) == "terminal"
    queue.shut_down()


async def test_not_leader_is_dropped() -> None:
    queue = WorkQueue()
    assert await _handle(queue, raising(NotLeader("deposed")), KEY) == "terminal"
    assert queue.failures(KEY) == 0 and queue.delayed == 0
    assert queue_meaning(NotLeader("deposed")) == "dropped"


async def test_a_temporary_error_s_delay_is_the_least_wait() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    await _handle(queue, raising(TemporaryError("render pool busy", delay=30.0)), KEY)
    assert KEY not in queue and queue.delayed == 1  # waiting on its timer, not queued now
    await clock.step(29.0)
    assert KEY not in queue, "the error's delay (30 s), not the first backoff step (5 ms)"
    await clock.step(2.0)
    assert KEY in queue
    queue.shut_down()


async def test_results_requeue_after_or_end_the_key() -> None:
    queue = WorkQueue()
    queue.add_rate_limited(KEY)
    assert await _handle(queue, returning(None), KEY) == "success"
    assert queue.failures(KEY) == 0
    queue.shut_down()
    queue = WorkQueue()
    assert await _handle(queue, returning(2.0), KEY) == "requeue"
    assert queue.delayed == 1 and queue.failures(KEY) == 0
    queue.shut_down()


class Raising:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def reconcile(self, name: str) -> float | None:
        raise self.exc


@pytest.mark.parametrize("exc", RETRIED + TERMINAL + [NotLeader("deposed")], ids=lambda e: type(e).__name__)
async def test_the_dispatcher_reports_what_the_queue_does_not_simply_retry(exc: BaseException) -> None:
    reports: list[tuple[str, str, str]] = []

    async def report(kind: str, name: str, error: BaseException) -> None:
        reports.append((kind, name, queue_meaning(error)))

    dispatcher = Dispatcher({"proxies": Raising(exc)}, report=report)
    with pytest.raises(type(exc)):
        await dispatcher.reconcile(KEY)
    meaning = queue_meaning(exc)
    if meaning == "terminal":
        assert reports == [("proxies", "edge", "terminal")]
    elif isinstance(exc, REPORTED_RETRIED):
        assert reports == [("proxies", "edge", "retry")]
    else:  # retried fleetop errors and NotLeader: the queue's business alone
        assert reports == []
