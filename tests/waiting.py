"""Waiting in tests: poll a condition until it holds, with a generous deadline (never a timing assert)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float = 30.0,
    what: str = "the condition",
    every: float = 0.1,
) -> Any:
    """Call ``check`` (sync or async) until it returns something truthy, and return that; fail with
    ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)
