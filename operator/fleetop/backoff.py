"""Exponential back-off: how long a retry loop waits before its next attempt.

Every loop that retries (the work queue, leader election, etcd watches and leases, the fleet
informer, the proxy agent, registration checks, ``fleetop up``'s supervisor, the planner's crash-loop
back-off) waits ``initial * factor**n`` seconds after its n-th failure in a row (n from 0), at most
``cap``:

- :func:`exponential` is that formula, pure (the planner calls it with the restarts it counted);
- :func:`spread` draws a delay at random from a range around it (jitter), so that many clients
  failing together do not retry together;
- :class:`Backoff` counts the failures of one loop: :meth:`Backoff.next` is the delay before the
  next attempt, :meth:`Backoff.reset` forgets the failures after a success, and ``reset_after``
  forgets them when what failed had run that long first.

Standard library only: the sidekick imports it.
"""

from __future__ import annotations

import math
import random

Jitter = tuple[float, float]
"""A delay is multiplied by a random factor from ``low`` to ``high``; ``(1.0, 1.0)``: no jitter."""
NO_JITTER: Jitter = (1.0, 1.0)
HALF_JITTER: Jitter = (0.5, 1.0)
"""Half to all of the delay: never longer than the delay, never shorter than half of it."""


def exponential(attempt: int, *, initial: float, cap: float, factor: float = 2.0) -> float:
    """``initial * factor**attempt`` seconds, at most ``cap`` (attempt 0 is ``initial``)."""
    if attempt <= 0 or initial <= 0:
        return min(cap, initial)
    try:
        return min(cap, initial * float(factor) ** attempt)
    except OverflowError:  # factor**attempt past a float: long past any cap
        return cap


def spread(delay: float, jitter: Jitter, *, cap: float = math.inf, rng: random.Random | None = None) -> float:
    """``delay`` times a random factor from ``jitter``, within 0..``cap``."""
    low, high = jitter
    if low == high == 1.0:
        return min(cap, delay)
    drawn = (rng or random).uniform(delay * low, delay * high)
    return max(0.0, min(cap, drawn))


class Backoff:
    """The failures in a row of one retry loop and the delay before its next attempt.

    ``next()`` after each failure: ``initial``, then ``factor`` times longer each time, at most
    ``cap``, times a random factor from ``jitter``. ``reset()`` after a success. With ``reset_after``,
    ``next(ran_for)`` starts over from ``initial`` when what failed had run ``reset_after`` seconds
    first (a process that ran for a while and exited is not crash-looping).
    """

    __slots__ = ("cap", "factor", "failures", "initial", "jitter", "reset_after", "rng")

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: Jitter = NO_JITTER,
        reset_after: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if initial < 0 or cap < 0 or factor < 1:
            raise ValueError(
                f"back-off needs initial ({initial}) and cap ({cap}) >= 0, factor ({factor}) >= 1"
            )
        low, high = jitter
        if not 0 <= low <= high:
            raise ValueError(f"back-off jitter needs 0 <= low ({low}) <= high ({high})")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.reset_after = reset_after
        self.rng = rng
        self.failures = 0

    def delay(self, attempt: int) -> float:
        """The delay after ``attempt`` failures before this one (pure without jitter)."""
        raw = exponential(attempt, initial=self.initial, cap=self.cap, factor=self.factor)
        return spread(raw, self.jitter, cap=self.cap, rng=self.rng)

    def next(self, ran_for: float | None = None) -> float:
        """One more failure: the delay before the next attempt."""
        if self.reset_after is not None and ran_for is not None and ran_for >= self.reset_after:
            self.failures = 0
        delay = self.delay(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.failures = 0
