"""The reconciler contract: what a pass may do, what it returns, and what the queue does with it.

Both kinds follow it (``services/<n>``: :class:`~fleetop.controller.services.reconciler.
ServiceReconciler`, ``proxies/<n>``: :class:`~fleetop.controller.proxies.reconciler.ProxyReconciler`),
as controller-runtime's ``reconcile.go`` lays it down for a Kubernetes controller:

* **The request is a key, nothing more.** ``reconcile(name)`` is told *which* object to look at, never
  what changed. Every pass reads the informers' caches (specs, status, registrations, published
  configs, agents' reports, the per-poll fleet index) and decides from scratch; two passes over the
  same world decide the same.
* **Read caches → pure plan → executor.** A pass writes nothing itself: the executor
  (:class:`~fleetop.controller.runtime.executor.Executor`) owns every write: fleet actions, status,
  events and published proxy configs. Status and configs go through one write-if-changed
  (:meth:`~fleetop.controller.runtime.executor.Executor.write_if_changed`) that returns what it did and
  counts it (``fleetop_writes_total{what,result}``); the executor also remembers its own last writes,
  so a pass never mistakes a cache that lags by one watch event for a change. (The only other things
  a pass awaits are what no cache can hold and no write changes: DNS answers through the resolver's
  cache, a custom template's sandboxed render.)
* **No worker waits for fleet.** fleet has no watch: a pass that acted records an expectation for its
  key (:meth:`~fleetop.controller.runtime.informers.FleetInformer.expect`) and returns. Until a poll that
  *began* after those actions has completed (:meth:`~fleetop.controller.runtime.informers.FleetInformer.
  fresh_for` is False), the key's passes change nothing in fleet; that poll queues the key again.
  A cache that has not synced yet is not waited for either: the pass returns
  :data:`~fleetop.controller.runtime.informers.SYNC_WAIT`.
* **The result is "requeue after N seconds" or None**, and an exception. The queue is the only place
  that turns them into a queue action (:func:`~fleetop.controller.runtime.queue.run_workers`);
  a reconciler never touches the queue.

What a pass's outcome means to the queue (``fleetop.errors``; each row is checked against the queue by
``tests/controller/test_contract.py``):

==============================  ==========================================================================
outcome of ``reconcile``        what the queue does with the key
==============================  ==========================================================================
returns None                    forget its failures; nothing more until an informer queues it again (or
                                the periodic resync)
returns N > 0                   forget its failures; queue it again in N seconds ("requeue after": a
                                coalescing wait, a cache syncing, a rollout's next check)
TemporaryError                  retry with rate-limited backoff (5 ms doubling to 60 s, jittered), or
 (EtcdUnavailable,              after the error's ``delay`` if that is longer: the same pass may
 FleetUnavailable: fleet        succeed once etcd or fleet answers again
 unreachable or 5xx)
Conflict, NotFound              retry with backoff: a race with another writer; the next pass reads
                                again
NotLeader                       terminal: forget it, report nothing (this process may not write); the
                                new leader's informers queue every key
PermanentError                  terminal: forget it, reported on the key's status (``Degraded``,
 (FleetAPIError: fleet          ``ReconcileFailed``, "not retried") and as a Warning event; retried only
 answered 4xx; EtcdDenied,      when something queues the key again (a spec change, a poll that shows
 Compacted, ProxyError)         a change, the resync)
InputError, SpecInvalid,        terminal, as above: the same input fails the same way; a spec change
 ConfigError                    queues the key
any other exception (a bug,     reported on the key's status (``Degraded``, ``ReconcileFailed``) and as
 an exhausted resource)         a Warning event, then retried with backoff, so no other key notices
CancelledError                  passes through: the worker is being stopped
==============================  ==========================================================================

Errors that a pass handles itself never reach the queue, and are reported where they belong:

* an invalid spec (the later of a service and a proxy sharing a name included, reason ``NameTaken``),
  or one over an instance ceiling: ``Invalid=True`` in status, one Warning event per generation,
  nothing changed in fleet; the pass returns None;
* fleet answering a write with 4xx: the executor returns it in its :class:`~fleetop.controller.runtime.
  executor.Outcome` (a 404 on destroy is "already gone"; a 404 or 409 on a desired-state change is left
  to the next pass); the reconciler records it in status (``lastError``) and as an event, and returns
  normally: the next poll, spec change or resync plans again;
* fleet not answering at all (:attr:`~fleetop.controller.runtime.informers.FleetInformer.loss`): nothing
  is planned in fleet; status marks what cannot be judged ``Unknown``; the poll that succeeds again
  queues every key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, NamedTuple, Protocol

from fleetop.errors import (
    ConfigError,
    Conflict,
    FleetopError,
    InputError,
    NotFound,
    NotLeader,
    PermanentError,
    TemporaryError,
)
from fleetop.keys import Kind

log = logging.getLogger(__name__)

TERMINAL_ERRORS: tuple[type[FleetopError], ...] = (PermanentError, InputError, ConfigError)
"""Errors the same pass would hit again: the queue forgets the key (see the table above)."""
RACE_ERRORS: tuple[type[FleetopError], ...] = (Conflict, NotFound)
"""Lost races with another writer: retried with backoff, like a TemporaryError."""

UNREPORTED: tuple[type[FleetopError], ...] = (TemporaryError, NotLeader, *RACE_ERRORS)
"""What the dispatcher leaves to the queue without a report: retried, or NotLeader."""

Meaning = Literal["retry", "terminal", "dropped"]
KIND_LABELS: dict[Kind, str] = {"services": "service", "proxies": "proxy"}


def queue_meaning(exc: BaseException) -> Meaning:
    """What the queue does with a pass that raised ``exc``: ``retry`` (rate-limited backoff),
    ``terminal`` (forgotten until queued again) or ``dropped`` (NotLeader: forgotten, not reported)."""
    if isinstance(exc, NotLeader):
        return "dropped"
    if isinstance(exc, TERMINAL_ERRORS):
        return "terminal"
    return "retry"


class ObjectRef(NamedTuple):
    """One object a reconciler owns: ``("services", "web")`` is the queue key ``services/web``."""

    kind: Kind
    name: str

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def label(self) -> str:
        """As the CLI prints it: ``service/web``, ``proxy/edge``."""
        return f"{KIND_LABELS[self.kind]}/{self.name}"

    @property
    def event_kind(self) -> Literal["Service", "Proxy"]:
        return "Service" if self.kind == "services" else "Proxy"


class Reconciler(Protocol):
    """One kind's reconcile: ``name`` -> requeue after (seconds) or None. Raises as the table says."""

    async def reconcile(self, name: str) -> float | None: ...


FailureReport = Callable[[str, str, BaseException], Awaitable[None]]
"""(kind, name, exception): report a pass that failed on its own key."""


class Dispatcher:
    """Hands a queue key to its kind's reconciler (``services/web``, ``proxies/edge``).

    A pass that raises anything but a retried fleetop error (TemporaryError, a race) or NotLeader is
    reported on its key through ``report`` (:class:`~fleetop.controller.runtime.contain.FailureReporter`):
    a terminal error as not retried, anything else (a bug, an exhausted resource) as retried with
    backoff. The exception is then re-raised for the queue, so no other key notices."""

    def __init__(self, kinds: Mapping[str, Reconciler], report: FailureReport | None = None) -> None:
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
        except UNREPORTED:
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
