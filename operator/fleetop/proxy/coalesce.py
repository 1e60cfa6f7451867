"""Render coalescing: consul-template's quiescence (``wait {min, max}``) and publish-on-change.

A rolling update of 20 instances makes 40 registration changes in a few seconds; rendering and
reloading the proxy 40 times would drop connections for nothing. The rule, as consul-template's:

- a change that arrives after a quiet spell (no change seen within ``min`` before it) renders at once
  (leading edge), so a single change is not delayed;
- changes during a burst wait until nothing changed for ``min``, but never longer than ``max``
  after the first change not yet rendered, so a never-ending trickle still renders.

:class:`Quiescence` is the pure rule with the clock as an argument (tested with a fake clock); the
proxy reconciler drives it from its passes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Quiescence:
    """The pure min/max rule. All times are seconds on one monotonic clock, passed in."""

    min: float
    max: float
    last_render: float | None = None
    first_pending: float | None = None
    last_change: float | None = None
    leading: bool = False
    last_seen: float | None = None  # the latest change ever recorded, rendered or not

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min:
            raise ValueError("wait needs 0 <= min <= max")

    @property
    def pending(self) -> bool:
        return self.first_pending is not None

    def changed(self, now: float, *, burst_start: float | None = None) -> None:
        """Record a change seen at ``now`` (when the input changed, if known; else when it was seen).

        ``burst_start``, when the caller knows it, is when the burst this change belongs to began
        (the first of a run of input changes less than ``min`` apart). The change renders at once only
        if that burst began after the last render: nothing of it has been rendered yet. Without it,
        quiet means no change was seen within ``min`` before this one.
        """
        if self.first_pending is None:
            self.first_pending = now
            if burst_start is not None:
                self.leading = self.last_render is None or burst_start > self.last_render
            else:
                self.leading = self.last_seen is None or now - self.last_seen >= self.min
        self.last_change = now if self.last_change is None else max(self.last_change, now)
        self.last_seen = now if self.last_seen is None else max(self.last_seen, now)

    def due(self) -> float | None:
        """When the pending changes should render (may be in the past); None when nothing is pending."""
        if self.first_pending is None or self.last_change is None:
            return None
        if self.leading:
            return self.first_pending
        return min(self.last_change + self.min, self.first_pending + self.max)

    def ready(self, now: float) -> bool:
        due = self.due()
        return due is not None and now >= due

    def rendered(self, now: float) -> None:
        """A render started at ``now`` and saw every change recorded so far."""
        self.last_render = now
        self.first_pending = None
        self.last_change = None
        self.leading = False
