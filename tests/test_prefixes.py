"""``fleetop.prefixes.follow``: a prefix etcd refuses to show is tried again, slowly, and said once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fleetop.errors import EtcdDenied
from fleetop.prefixes import follow


class Refused:
    """A cache whose list etcd refuses (the user's role does not cover the prefix)."""

    prefix = "/services/web/"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        raise EtcdDenied("etcdserver: permission denied")


async def test_a_refused_prefix_is_retried_at_its_pace_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = Refused()
    with caplog.at_level(logging.WARNING, logger="fleetop.prefixes"):
        task = asyncio.create_task(follow(cache, denied_retry=0.02))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert cache.runs >= 5  # retried at denied_retry, not at the 1 s of other errors
    warnings = [r for r in caplog.records if "permission denied" in r.getMessage()]
    assert len(warnings) == 1 and "trying again every 0.02s" in warnings[0].getMessage()
