"""Quiescence (wait {min, max}) with a fake clock."""

from __future__ import annotations

import pytest

from fleetop.proxy.coalesce import Quiescence


def test_a_change_after_quiet_renders_at_once() -> None:
    rule = Quiescence(min=1.0, max=5.0)
    assert rule.due() is None and not rule.pending
    rule.changed(10.0)
    assert rule.due() == 10.0 and rule.ready(10.0)
    rule.rendered(10.0)
    assert rule.due() is None
    rule.changed(11.5)  # quiet for 1.5 s >= min: leading edge again
    assert rule.due() == 11.5


def test_changes_soon_after_a_render_wait_for_min_of_quiet() -> None:
    rule = Quiescence(min=1.0, max=5.0)
    rule.changed(0.0)
    rule.rendered(0.0)
    rule.changed(0.2)
    assert rule.due() == pytest.approx(1.2)
    rule.changed(0.9)
    assert rule.due() == pytest.approx(1.9)
    assert not rule.ready(1.8) and rule.ready(1.9)


def test_a_never_ending_burst_renders_after_max() -> None:
    rule = Quiescence(min=1.0, max=3.0)
    rule.changed(0.0)
    rule.rendered(0.0)
    renders = []
    now = 0.1
    while now < 10.0:  # a change every 0.5 s: never 1 s of quiet
        rule.changed(now)
        if rule.ready(now):
            renders.append(round(now, 1))
            rule.rendered(now)
        now += 0.5
    # first unrendered change at 0.1 → rendered at 0.1 + max; the next one at 3.6 → 6.6
    assert renders == [3.1, 6.6]


def test_changes_during_a_render_stay_pending() -> None:
    rule = Quiescence(min=0.5, max=2.0)
    rule.changed(0.0)
    rule.rendered(0.0)  # the render started at 0.0 and read the state then
    rule.changed(0.1)  # arrived while it ran
    assert rule.pending and rule.due() == pytest.approx(0.6)


def test_zero_wait_renders_every_change_at_once() -> None:
    rule = Quiescence(min=0.0, max=0.0)
    for t in (0.0, 0.0, 0.001):
        rule.changed(t)
        assert rule.ready(t)
        rule.rendered(t)


def test_invalid_wait_is_refused() -> None:
    with pytest.raises(ValueError):
        Quiescence(min=2.0, max=1.0)


def test_a_burst_seen_by_slow_passes_renders_once_then_at_its_end() -> None:
    """Changes 10 ms apart for 1.3 s, seen by passes 60 ms apart: the first renders at once, the rest
    wait for the burst's quiet end (or max), however far apart the passes that saw them were."""
    from fleetop.prefixes import burst_of

    rule = Quiescence(0.05, 1.0)
    arrivals: list[float] = []
    renders = []
    t = 0.0
    while t < 1.3:
        arrivals.append(t)
        if round(t * 100) % 6 == 0:  # a pass every 60 ms
            last, start = burst_of(arrivals, 0.05) or (t, t)
            rule.changed(last, burst_start=start)
            if rule.ready(t):
                rule.rendered(t)
                renders.append(t)
        t = round(t + 0.01, 2)
    for extra in (1.35, 1.4):  # after the burst: the pass the trailing edge asked for
        if rule.ready(extra):
            rule.rendered(extra)
            renders.append(extra)
    assert renders[0] == 0.0
    assert len(renders) <= 3, renders
    assert not rule.pending


def test_burst_of() -> None:
    from fleetop.prefixes import burst_of

    assert burst_of([], 0.05) is None
    assert burst_of([1.0], 0.05) == (1.0, 1.0)
    assert burst_of([1.0, 2.0, 2.01, 2.02], 0.05) == (2.02, 2.0)
    assert burst_of([2.0, 2.01], 0.05, full=True) == (2.01, float("-inf"))
