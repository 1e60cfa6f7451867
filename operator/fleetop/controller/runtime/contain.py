"""Containment: a pass that fails unexpectedly is one key's problem, reported on that key.

Anyone who may write ``/desired`` or a registration is a client of the operator, so a value no test
foresaw (or a bug it reaches) must not stop anything but its own key. Reading is already contained
(a spec that cannot be read becomes an invalid entry, see :meth:`~fleetop.store.Store.entry`); this
module covers planning and acting. :class:`FailureReporter` is called by the dispatcher
(:class:`~fleetop.controller.runtime.reconcile.Reconciler`) when a pass raises something that is not one of
fleetop's own errors: the key's status gets ``Degraded=True`` with reason ``ReconcileFailed`` and the
exception, and a Warning event is recorded (repeats bump its count). The exception then goes on to
the work queue, which retries the key with backoff (up to a minute) while every other key is
reconciled as usual; the next pass that succeeds writes the status it decides, which replaces the
condition. ``CancelledError`` is not an ``Exception`` and is never caught here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fleetop.controller.runtime.executor import Executor, same_status, status_bytes
from fleetop.errors import FleetopError
from fleetop.models import Condition, ProxyStatus, ServiceStatus
from fleetop.models.base import shown
from fleetop.timefmt import rfc3339

log = logging.getLogger(__name__)

REASON = "ReconcileFailed"


def failure_message(exc: BaseException) -> str:
    """What status and the event say: the exception's type and (shortened) text."""
    text = shown(str(exc), 300)
    return f"reconcile failed: {type(exc).__name__}{': ' + text if text else ''} (retried with backoff)"


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
        message = failure_message(exc)
        await self.executor.record(name, REASON, message, warning=True)
        try:
            await self._degrade(kind, name, message)
        except FleetopError as error:
            log.warning("could not mark %s/%s degraded: %s", kind, name, error)

    async def _degrade(self, kind: str, name: str, message: str) -> None:
        model = ServiceStatus if kind == "services" else ProxyStatus
        key = self.executor.keys.status("services" if kind == "services" else "proxies", name)
        kv = await self.executor.etcd.get(key)
        try:
            stored = model.model_validate_json(kv.value) if kv is not None else model()
        except ValueError:
            stored = model()
        status = degraded(stored, message, self.clock())
        if same_status(kv.value if kv is not None else None, status):
            return
        await self.executor.etcd.put(key, status_bytes(status), fence=self.executor.fence())
