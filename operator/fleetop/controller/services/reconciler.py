"""``reconcile("services/<name>")``: read the cached world, ask the planner, hand the plan to the executor.

The contract (:mod:`fleetop.controller.runtime.contract`) is controller-runtime's: the request is only
a key (``services/web``), the result is only "requeue after N seconds" (or None), an exception means
what the contract's table says, and every pass re-reads the world from the informers' caches and
decides from scratch. The behaviour lives in the pure planner; every write goes through the executor.

Two things the planner cannot see are kept here:

* :class:`~fleetop.controller.services.memory.PlanMemory` per service (times fleet does not report). After a
  restart or a failover it is re-seeded from the stored status: each condition's
  ``lastTransitionTime`` (so a new leader does not rewrite a status that has not changed), and the
  instances the last leader reported ready count as ready since long ago (it had already waited
  ``minReadySeconds`` for them); the restart records, so a crash-loop back-off goes on where it was,
  and the last available template and a rollback in force (``report.memory_from_status``).
* An invalid spec: the service gets ``Invalid=True`` with the JSON path and reason in its status, one
  event per generation, and nothing in the cluster changes for it. Other services are unaffected.
  A spec over an instance ceiling (:mod:`~fleetop.controller.services.limits`) is refused the same way, with
  the ceiling and its setting as the reason.

Work per pass is bounded: the executor applies at most a batch of a plan's actions and the rest wait
for the next pass, which (after the poll that shows this batch) reads the spec and fleet again and
plans from scratch, so a spec deleted or scaled down in the middle of a large creation stops it.

While fleet does not answer (:attr:`FleetInformer.loss`) a pass plans nothing and changes nothing in
fleet: the last snapshot is stale, and a create or destroy decided from it could undo what fleet did
meanwhile (reschedule, restart) or pile up behind a frozen endpoint and land later. It only writes the
status with every condition judged from fleet ``Unknown`` (``FleetUnreachable``, since when fleet was
lost), the last known replica counts and units kept. The poll that succeeds again queues every service.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from fleetop.controller.conditions import source_lost_message, unknown_conditions
from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.informers import (
    CONVERGING_POLL,
    SYNC_WAIT,
    FleetLoss,
    FleetSnapshot,
    Informers,
)
from fleetop.controller.runtime.metrics import OperatorMetrics
from fleetop.controller.runtime.settings import DEFAULT_LIMITS, WorkLimits
from fleetop.controller.services.limits import (
    Demand,
    Refusal,
    cluster_refusals,
    instances_of,
    service_refusal,
)
from fleetop.controller.services.memory import BackoffPolicy, PlanMemory, Seen
from fleetop.controller.services.planner import plan
from fleetop.controller.services.report import memory_from_status
from fleetop.controller.unitfile import DEFAULT_UNITS, UnitSettings, needs_sidekick
from fleetop.controller.world import Transition, launched_instances
from fleetop.discovery.addresses import Registration, registrations_under
from fleetop.errors import NameTaken, SpecInvalid, TemporaryError
from fleetop.fleet.units import unit_hash
from fleetop.models import Backend, Condition, ServiceSpec, ServiceStatus
from fleetop.models.parse import spec_hash
from fleetop.models.status import ReplicaCounts
from fleetop.store import Entry
from fleetop.timefmt import rfc3339

log = logging.getLogger(__name__)


def seed_memory(status: ServiceStatus | None, snapshot: FleetSnapshot) -> PlanMemory:
    """What a new leader can recover of the planner's memory from the status it finds."""
    if status is None:
        return PlanMemory()
    transitions: dict[str, Transition] = {
        c.type: Transition(c.status, c.last_transition_time)
        for c in status.conditions
        if c.last_transition_time
    }
    ready: dict[str, Seen] = {}
    for unit_status in status.units:
        unit = snapshot.units.get(unit_status.name)
        if unit_status.ready and unit is not None:
            ready[unit.name] = Seen(unit_hash(unit.options), 0.0)
    started = {name: seen.hash for name, seen in ready.items()}
    recovered = memory_from_status(status)  # restart records, placements, the last available template
    return replace(recovered, ready_since=ready, transitions=transitions, started=started)


def registrations_of(
    items: Sequence[tuple[str, bytes]], prefix: str, launched: frozenset[str] | None = None
) -> tuple[dict[str, bool], list[Backend], int]:
    """(instance -> registered, backends, invalid count) from the keys directly under ``prefix``.

    ``launched``: for a service whose instances register through fleetop's sidekick, the instances
    fleet holds as launched. A registration of any other instance (a lost delete, a lease etcd
    restored, a hand-written key) is no backend, as the proxies leave it out of their configs."""
    registered: dict[str, bool] = {}
    backends: list[Backend] = []
    invalid = 0
    for instance, parsed in registrations_under(prefix, items):
        if isinstance(parsed, Registration):
            registered[instance] = True
            if launched is None or instance in launched:
                backends.append(Backend(key=parsed.key, address=parsed.address))
        else:
            invalid += 1
    return registered, backends, invalid


class ServiceReconciler:
    """Reconciles ``services/<name>`` keys."""

    def __init__(
        self,
        informers: Informers,
        executor: Executor,
        metrics: OperatorMetrics | None = None,
        clock: Callable[[], float] = time.time,
        *,
        settings: UnitSettings = DEFAULT_UNITS,
        limits: WorkLimits = DEFAULT_LIMITS,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.informers = informers
        self.backoff = backoff or BackoffPolicy()
        self.executor = executor
        self.metrics = metrics
        self.clock = clock
        self.settings = settings  # fleetop's path and the key root, in every unit it writes
        self.limits = limits
        self.memory: dict[str, PlanMemory] = {}
        self._invalid_reported: dict[str, tuple[int, str]] = {}
        self._judged: dict[str, tuple[int, str]] = {}
        """Service -> the revision of the spec last judged valid and its ``specHash`` (computed once per
        revision, not every pass)."""
        self._admission: tuple[int, FleetSnapshot, dict[str, Refusal]] | None = None
        self._unconverged_since: dict[str, float] = {}

    def stored_status(self, name: str) -> tuple[ServiceStatus | None, bytes | None]:
        """The status as stored (the cache's, or this process's last write while the cache lags)."""
        raw = self.executor.stored(self.informers.keys.status("services", name), self.informers.statuses)
        if raw is None:
            return None, None
        try:
            return ServiceStatus.model_validate_json(raw), raw
        except ValueError:
            return None, raw

    async def reconcile(self, name: str) -> float | None:
        informers = self.informers
        if not all(informers.synced().values()):
            return SYNC_WAIT
        entry = informers.entries["services"].get(name)
        stored, _ = self.stored_status(name)
        if entry is not None and entry.error is not None:
            return await self._invalid(name, entry, entry.error, stored)
        spec = entry.spec if entry is not None and isinstance(entry.spec, ServiceSpec) else None
        if informers.fleet.loss is not None:
            return await self._blind(name, spec, stored, informers.fleet.loss)
        if not informers.fleet.fresh_for(f"services/{name}"):
            return None  # the poll that shows this service's last actions queues it again
        snapshot = informers.fleet.snapshot
        if spec is None and f"services/{name}" not in snapshot.owners and stored is None:
            # Registrations under a prefix no spec claims (registrator, a proxy route to a service with no
            # spec): nothing to run or report, and nothing worth parsing on every change.
            self._forget(name)
            return None
        refusal = self._refusal(name, spec, snapshot)
        if refusal is not None and entry is not None:
            return await self._refused(name, entry.mod_revision, refusal.reason, refusal.message, stored)
        prefix = informers.registration_prefix(name)
        cache = informers.registrations.cache(prefix)
        if spec is not None and cache is None:
            return SYNC_WAIT
        items = [(kv.key, kv.value) for kv in cache.under(prefix)] if cache is not None else []
        launched = None
        if spec is not None and needs_sidekick(spec):
            owned = snapshot.index.owned_by(f"services/{name}")
            launched = launched_instances(name, ((u.name, u.desired_state) for u in owned))
        registered, backends, invalid = registrations_of(items, prefix, launched)
        memory = self.memory.get(name) or seed_memory(stored, snapshot)
        now = self.clock()
        generation = entry.mod_revision if entry is not None else 0
        result = plan(
            name,
            spec,
            generation,
            snapshot.index,
            registered,
            now,
            memory,
            settings=self.settings,
            backoff=self.backoff,
            judged_hash=self._spec_hash(name, generation, spec) if spec is not None else None,
        )
        self.memory[name] = result.memory
        status = result.status
        if status is not None:
            status = status.model_copy(update={"backends": backends, "invalid_registrations": invalid})
        ref = ObjectRef("services", name)
        outcome = await self.executor.apply(ref, result.actions)
        if outcome.deferred:
            log.debug("%s: %d actions left for the next pass", name, outcome.deferred)
        if outcome.deferred or outcome.error is not None:
            # a re-creation the planner counted may not have reached fleet: keep the back-off records as
            # they were, so the next pass plans that slot again with its count (not as a new slot)
            self.memory[name] = dataclasses.replace(result.memory, restarts=memory.restarts)
        for event in result.events:
            await self.executor.record(ref, event.reason, event.message, warning=event.warning)
        if outcome.error is not None and status is not None:
            status = status.model_copy(update={"last_error": str(outcome.error)})
        await self.executor.write_status(ref, status, informers.statuses)
        if result.actions:
            informers.fleet.hurry(CONVERGING_POLL)
            informers.fleet.expect(ref.key)
        if spec is None and not result.actions:
            self._forget(name)
        self._track_lag(name, status, bool(result.actions), now)
        if isinstance(outcome.error, TemporaryError):
            raise outcome.error
        return result.requeue_after

    async def _blind(
        self, name: str, spec: ServiceSpec | None, stored: ServiceStatus | None, loss: FleetLoss
    ) -> float | None:
        """fleet is lost: change nothing in it; mark what cannot be judged ``Unknown`` (the poll that
        succeeds again queues this service)."""
        if stored is None and spec is None:
            return None
        since = rfc3339(loss.since)
        message = source_lost_message("fleet", since, loss.error, loss.endpoints)
        base = stored or ServiceStatus(replicas=ReplicaCounts(desired=spec.replicas if spec else 0))
        conditions = unknown_conditions(
            base.conditions, reason="FleetUnreachable", message=message, since=since
        )
        memory = self.memory.get(name)
        if memory is not None:  # so that the first judgement after the outage is a new transition
            moved: dict[str, Transition] = {
                c.type: Transition(c.status, c.last_transition_time) for c in conditions
            }
            self.memory[name] = dataclasses.replace(memory, transitions={**memory.transitions, **moved})
        status = base.model_copy(update={"conditions": conditions})
        await self.executor.write_status(ObjectRef("services", name), status, self.informers.statuses)
        return None

    def _refusal(self, name: str, spec: ServiceSpec | None, snapshot: FleetSnapshot) -> Refusal | None:
        """Why ``spec`` is over an instance ceiling, or None."""
        if spec is None:
            return None
        return service_refusal(spec, self.limits) or self._cluster_refusals(snapshot).get(name)

    def _cluster_refusals(self, snapshot: FleetSnapshot) -> dict[str, Refusal]:
        """The cluster-wide ceiling's verdicts, computed once per change of the specs or of fleet. A
        service whose verdict changed is queued (another one's scale-down may have made room)."""
        revision = self.informers.services.revision
        if self._admission is not None and self._admission[:2] == (revision, snapshot):
            return self._admission[2]
        demands = []
        for other, entry in self.informers.entries["services"].items():
            mains = sum(1 for n in snapshot.owners.get(f"services/{other}", ()) if n.startswith(f"{other}@"))
            spec = entry.spec if isinstance(entry.spec, ServiceSpec) else None
            frozen = spec is None or service_refusal(spec, self.limits) is not None
            wanted = mains if frozen or spec is None else instances_of(spec)
            demands.append(Demand(other, entry.mod_revision, wanted, mains))
        refusals = cluster_refusals(demands, self.limits)
        before = self._admission[2] if self._admission is not None else {}
        self._admission = (revision, snapshot, refusals)
        for other in sorted(before.keys() ^ refusals.keys()):
            self.informers.enqueue(f"services/{other}")
        return refusals

    async def _invalid(
        self, name: str, entry: Entry, error: SpecInvalid, stored: ServiceStatus | None
    ) -> float | None:
        """Report the invalid spec in status (and once in events); touch nothing in fleet."""
        message = "; ".join(error.all_messages())
        reason = "NameTaken" if isinstance(error, NameTaken) else "SpecInvalid"
        event = f"spec is invalid: {message}"
        return await self._refused(name, entry.mod_revision, reason, message, stored, event=event)

    async def _refused(
        self,
        name: str,
        generation: int,
        reason: str,
        message: str,
        stored: ServiceStatus | None,
        *,
        event: str | None = None,
    ) -> float | None:
        """``Invalid=True`` with ``reason`` in status, a Warning event once per generation and reason;
        nothing is touched in fleet."""
        now = self.clock()
        previous = stored.condition("Invalid") if stored is not None else None
        since = (
            previous.last_transition_time
            if previous is not None and previous.status == "True" and previous.last_transition_time
            else rfc3339(now)
        )
        condition = Condition(
            type="Invalid", status="True", reason=reason, message=message, last_transition_time=since
        )
        base = stored or ServiceStatus()
        kept = [c for c in base.conditions if c.type != "Invalid"]
        status = base.model_copy(
            update={
                "observed_generation": generation,
                "conditions": [*kept, condition],
                "last_error": message,
                "spec_hash": "",
            }
        )
        ref = ObjectRef("services", name)
        # the event first: whoever sees the status refused finds the Warning that explains it
        if self._invalid_reported.get(name) != (generation, reason):
            await self.executor.record(ref, reason, event or message, warning=True)
            self._invalid_reported[name] = (generation, reason)  # recorded: not again for this pair
        await self.executor.write_status(ref, status, self.informers.statuses)
        return None

    def _track_lag(self, name: str, status: ServiceStatus | None, acted: bool, now: float) -> None:
        converged = status is None or (
            not acted
            and status.replicas.ready == status.replicas.desired == status.replicas.updated
            and status.replicas.launched == status.replicas.desired
        )
        if converged:
            self._unconverged_since.pop(name, None)
            lag: float | None = 0.0 if status is not None else None
        else:
            since = self._unconverged_since.setdefault(name, now)
            lag = now - since
            self.informers.fleet.hurry(CONVERGING_POLL)
        if self.metrics is not None:
            self.metrics.set_lag(name, lag)

    def _spec_hash(self, name: str, generation: int, spec: ServiceSpec) -> str:
        """``spec``'s ``specHash``, kept per service for the revision it was computed for."""
        judged = self._judged.get(name)
        if judged is None or judged[0] != generation:
            judged = self._judged[name] = (generation, spec_hash(spec))
        return judged[1]

    def _forget(self, name: str) -> None:
        self.memory.pop(name, None)
        self._judged.pop(name, None)
        self._invalid_reported.pop(name, None)
        self._unconverged_since.pop(name, None)
        self.executor.forget(ObjectRef("services", name))
        if self.metrics is not None:
            self.metrics.set_lag(name, None)
