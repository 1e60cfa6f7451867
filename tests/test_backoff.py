"""The one back-off formula, its jitter and the failure counter every retry loop uses."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetop.backoff import HALF_JITTER, Backoff, exponential, spread
from fleetop.controller.services.memory import BackoffPolicy
from fleetop.local.up import restart_backoff
from fleetop.proxy.agent import AgentSettings


@pytest.mark.parametrize(
    ("attempt", "initial", "cap", "factor", "expected"),
    [
        (0, 1.0, 30.0, 2.0, 1.0),
        (1, 1.0, 30.0, 2.0, 2.0),
        (4, 1.0, 30.0, 2.0, 16.0),
        (5, 1.0, 30.0, 2.0, 30.0),
        (-1, 1.0, 30.0, 2.0, 1.0),
        (0, 10.0, 300.0, 2.0, 10.0),  # the planner's crash-loop numbers
        (4, 10.0, 300.0, 2.0, 160.0),
        (5, 10.0, 300.0, 2.0, 300.0),
        (3, 0.005, 60.0, 2.0, 0.04),  # the work queue's
        (2, 0.1, 5.0, 3.0, 0.9),
        (10_000, 0.005, 60.0, 2.0, 60.0),  # past a float: the cap
        (10_000, 1e-300, 1e300, 2.0, 1e300),
        (7, 0.0, 0.0, 2.0, 0.0),
        (0, 5.0, 1.0, 2.0, 1.0),  # initial above the cap: the cap
    ],
)  # fmt: skip
def test_exponential(attempt: int, initial: float, cap: float, factor: float, expected: float) -> None:
    assert exponential(attempt, initial=initial, cap=cap, factor=factor) == pytest.approx(expected)


def test_the_callers_keep_their_numbers() -> None:
    assert [BackoffPolicy().delay(n) for n in range(7)] == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert BackoffPolicy(base=0.0, cap=0.0).delay(50) == 0.0
    agent = AgentSettings("edge", "m1", runtime_dir=Path("/run/x"))
    assert [agent.retry_delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_spread_stays_in_its_range_and_under_the_cap() -> None:
    rng = random.Random(7)
    assert spread(8.0, (1.0, 1.0)) == 8.0
    assert spread(80.0, (1.0, 1.0), cap=60.0) == 60.0
    drawn = [spread(8.0, (0.9, 1.1), rng=rng) for _ in range(500)]
    assert all(7.2 <= d <= 8.8 for d in drawn) and max(drawn) > 8.0 > min(drawn)
    assert all(spread(60.0, (0.9, 1.1), cap=60.0, rng=rng) <= 60.0 for _ in range(100))
    halves = [spread(2.0, HALF_JITTER, rng=rng) for _ in range(500)]
    assert all(1.0 <= d <= 2.0 for d in halves)


def test_backoff_counts_failures_and_resets() -> None:
    delays = Backoff(0.1, 0.5)
    assert [delays.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    delays.reset()
    assert delays.next() == pytest.approx(0.1)


def test_backoff_with_jitter_draws_half_to_all_of_each_step() -> None:
    delays = Backoff(0.1, 0.5, jitter=HALF_JITTER, rng=random.Random(3))
    for step in (0.1, 0.2, 0.4, 0.5, 0.5):
        assert step / 2 <= delays.next() <= step


def test_restart_backoff_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    backoff = restart_backoff()
    assert [backoff.next(2.0) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.next(61.0) == 1.0  # it ran for a while: start over
    assert backoff.next(0.5) == 2.0
    assert backoff.next() == 4.0  # no run time given: a failure in a row


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Backoff(-1.0, 5.0), "initial"),
        (lambda: Backoff(1.0, -5.0), "cap"),
        (lambda: Backoff(1.0, 5.0, factor=0.5), "factor"),
        (lambda: Backoff(1.0, 5.0, jitter=(1.2, 1.0)), "jitter"),
    ],
)
def test_backoff_refuses_nonsense(build: Callable[[], Backoff], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
