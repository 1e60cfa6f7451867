"""Containment: a pass that fails unexpectedly is one key's problem, reported on that key.

Anyone who may write ``/desired`` or a registration is a client of the operator, so a value no test
foresaw (or a bug it reaches) must not stop anything but its own key. Reading is already contained
(a spec that cannot be read becomes an invalid entry, see :meth:`~fleetop.store.Store.entry`); this
module covers planning and acting. :class:`FailureReporter` is called by the dispatcher
(:class:`~fleetop.controller.runtime.contract.Dispatcher`) when a pass raises something the queue does
not simply retry (see the table in :mod:`~fleetop.controller.runtime.contract`): the key's status gets
``Degraded=True`` with reason ``ReconcileFailed`` and the exception, and a Warning event is recorded
(repeats bump its count), both through the executor. The exception then goes on to the work queue: a
bug is retried with backoff (up to a minute) while every other key is reconciled as usual, a terminal
error (fleet's 4xx, a denied etcd request, bad input) is not retried until the key is queued again;
the next pass that succeeds writes the status it decides, which replaces the condition.
``CancelledError`` is not an ``Exception`` and is never caught here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fleetop.controller.runtime.contract import ObjectRef, queue_meaning
from fleetop.controller.runtime.executor import Executor
from fleetop.errors import FleetopError
from fleetop.models import Condition, ProxyStatus, ServiceStatus
from fleetop.models.base import shown
from fleetop.timefmt import rfc3339

log = logging.getLogger(__name__)

REASON = "ReconcileFailed"


def failure_message(exc: BaseException) -> str:
    """What status and the event say: the exception's type and (shortened) text, and what the queue
    does next."""
    text = shown(str(exc), 300)
    then = "retried with backoff" if queue_meaning(exc) == "retry" else "not retried until the next change"
    return f"reconcile failed: {type(exc).__name__}{': ' + text if text else ''} ({then})"


def degraded(status: ServiceStatus | ProxyStatus, message: str, now: float) -> ServiceStatus | ProxyStatus:
    """``status`` with ``Degraded=True, ReconcileFailed`` (its transition time kept while it holds)."""
    previous = status.condition("Degraded")
    held = previous is not None and previous.status == "True" and previous.last_transition_time
    since = previous.last_transition_time if previous is not None and held else rfc3339(now)
    condition = Condition(
        type="Degraded", status="True", reason=REASON, message=message, last_transition_time=since
    )
    kept = [c for c in status.conditions if c.type != "Degraded"]
    return status.model_copy(update={"conditions": [*kept, condition], "last_error": message})


class FailureReporter:
    """Reports a failed pass on its key: a Degraded condition and a Warning event (both fenced)."""

    def __init__(self, executor: Executor, clock: Callable[[], float] = time.time) -> None:
        self.executor = executor
        self.clock = clock

    async def report(self, kind: str, name: str, exc: BaseException) -> None:
        ref = ObjectRef("services" if kind == "services" else "proxies", name)
        message = failure_message(exc)
        await self.executor.record(ref, REASON, message, warning=True)
        try:
            await self._degrade(ref, message)
        except FleetopError as error:
            log.warning("could not mark %s degraded: %s", ref.label, error)

    async def _degrade(self, ref: ObjectRef, message: str) -> None:
        model = ServiceStatus if ref.kind == "services" else ProxyStatus
        key = self.executor.keys.status(ref.kind, ref.name)
        cache = await self.executor.read_now(key)  # outside the informers' view: read it now
        kv = cache.get(key)
        try:
            stored = model.model_validate_json(kv.value) if kv is not None else model()
        except ValueError:
            stored = model()
        await self.executor.write_status(ref, degraded(stored, message, self.clock()), cache)
