"""The reconcile contract and the dispatcher that routes a queue key to its kind.

A queue key is ``<kind>/<name>`` (``services/web``, ``proxies/edge``). A kind's reconciler
(:class:`KindReconciler`) gets only the name and answers only "requeue after N seconds" or None; it
raises to be retried with backoff (:mod:`fleetop.controller.runtime.queue` turns the result or the
exception into the queue's next step). It re-reads the world from the caches on every pass
(level-based), so a pass never depends on which event queued it.

Which reconciler handles which kind is the operator's wiring (:mod:`fleetop.controller.operator`);
this module knows no kind by name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from fleetop.errors import FleetopError, NotLeader

log = logging.getLogger(__name__)


class KindReconciler(Protocol):
    """One kind's reconcile: ``name`` -> requeue after (seconds) or None. Raises to retry."""

    async def reconcile(self, name: str) -> float | None: ...


FailureReport = Callable[[str, str, BaseException], Awaitable[None]]
"""(kind, name, exception): report a pass that failed unexpectedly on its own key."""


class Reconciler:
    """Dispatches a queue key to its kind's reconciler (``services/web``, ``proxies/edge``).

    A pass that raises something other than fleetop's own errors (a bug, an exhausted resource) is
    reported on its key through ``report`` (:class:`~fleetop.controller.runtime.contain.FailureReporter`)
    and re-raised, so the queue retries that key with backoff and no other key notices."""

    def __init__(self, kinds: Mapping[str, KindReconciler], report: FailureReport | None = None) -> None:
        self.kinds = kinds
        self.report = report

    async def reconcile(self, key: str) -> float | None:
        kind, _, name = key.partition("/")
        handler = self.kinds.get(kind)
        if handler is None or not name:
            log.error("unknown key %r: dropped", key)
            return None
        try:
            return await handler.reconcile(name)
        except FleetopError:
            raise
        except Exception as exc:
            await self._report(kind, name, exc)
            raise

    async def _report(self, kind: str, name: str, exc: Exception) -> None:
        if self.report is None:
            return
        try:
            await self.report(kind, name, exc)
        except NotLeader:
            raise
        except Exception:
            log.exception("reporting the failure of %s/%s failed", kind, name)
