"""``reconcile("proxies/<name>")``: render a proxy's config from its routed services' registrations,
publish it when it changed, run the proxy's units when it is managed, and report.

It follows the reconciler contract (:mod:`fleetop.controller.runtime.contract`) as the service
reconciler does: every pass re-reads the spec, the registrations, what is published, what the agents
report and the proxy's own units (from the fleet index of the last poll), all from the informers'
caches, and decides from scratch; every write (units, the published config, status, events) goes
through the executor, whose write-if-changed also bridges the caches' lag behind this process's own
writes. What a pass cannot see is kept in :class:`ProxyMemory`: the coalescing clock, the last
render's inputs and what was reported.

* Coalescing (``wait {min, max}``, :class:`~fleetop.proxy.coalesce.Quiescence`): a pass whose inputs
  (spec revision, backend addresses) differ from the previous pass records a change; the config is
  rendered at once after a quiet spell (leading edge), otherwise the pass returns "requeue after" the
  rule's due time (trailing edge). Units and status are handled on every pass regardless.
* Publishing: the rendered config goes to ``/fleetop/proxies/<name>/config`` only when its hash
  differs from the published one (:meth:`~fleetop.controller.runtime.executor.Executor.publish`), with
  the next generation, fenced on the leader key. A render that
  fails (a broken custom template) leaves the published config alone and is reported in status
  (``Degraded``, ``lastError``) and once as an event. A custom template renders in a worker process
  with a time and a size limit (:mod:`fleetop.proxy.sandbox`), so it cannot stall the event loop.
* Registrations of a routed service that registers through fleetop's sidekick are kept only for
  instances whose main unit fleet holds as launched (:func:`~fleetop.controller.proxies.status.
  collect_backends`); that set is one of a render's inputs, so a poll that shows a new unit or loses
  a destroyed one re-renders (the informers queue the proxies that route to a service whose units
  changed). Others are skipped, counted in status and reported once per distinct set as an event.
* DNS names among the registrations are resolved before a render (:mod:`fleetop.discovery.resolve`:
  timeout, TTL cache, threads of its own) and rendered as their addresses; a name that does not
  resolve, or an address outside the proxy's (and the service's) ``allowedNetworks``, is skipped and
  reported like an invalid value. The answers for the names of the last render are one of a pass's
  inputs, and a pass comes back when one is due, so a changed answer renders again.
* Units: planned from the proxy's own units in the last poll; after acting, the pass records an
  expectation for ``proxies/<name>`` and returns (a worker never waits for fleet). Until a poll that
  began after those actions has completed, passes plan nothing in fleet (the status keeps the units
  last reported) but still render, publish and report; that poll queues the proxy again.
* An invalid spec: ``Invalid=True`` in status (``NameTaken`` when a service declared first has the
  name, ``SpecInvalid`` otherwise), nothing published, its units left as they are.
* A deleted spec: its units are destroyed, its published config and status deleted.
* While fleet does not answer, nothing is changed in fleet: the units are neither planned nor
  destroyed (the status keeps the units last seen), and a deleted proxy waits; configs are still
  rendered and published, since they come from etcd and keep the proxies serving.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetop.controller.proxies.cache import ProxyCaches
from fleetop.controller.proxies.plan import UnitPlan, plan_units
from fleetop.controller.proxies.status import (
    BackendCollector,
    ProxyView,
    RegistrationSource,
    RuleMemo,
    agents_may_follow,
    build_status,
    decode_published,
    describe_invalid,
    describe_unlaunched,
    follow_rules,
    invalid_status,
    published_hash,
    summarize_agents,
)
from fleetop.controller.proxies.units import DesiredUnit, ProxyLayout, desired_units
from fleetop.controller.runtime.contract import ObjectRef
from fleetop.controller.runtime.executor import Executor
from fleetop.controller.runtime.informers import CONVERGING_POLL, SYNC_WAIT, Informers
from fleetop.controller.unitfile import DEFAULT_UNITS, UnitSettings, needs_sidekick
from fleetop.controller.world import launched_instances
from fleetop.discovery.resolve import Resolution, Resolver, resolved_view
from fleetop.errors import NameTaken, RenderError, TemporaryError
from fleetop.keys import Keys
from fleetop.models import ProxySpec, ProxyStatus, PublishedConfig, ServiceSpec
from fleetop.models.parse import spec_hash
from fleetop.models.status import FollowedBackend
from fleetop.proxy.backends import BackendSet, Destinations, network_rules
from fleetop.proxy.coalesce import Quiescence
from fleetop.proxy.published import PublishedFormatError, encode_published
from fleetop.proxy.render import (
    DEFAULT_PROXY_ROOT,
    FragmentRenderer,
    RenderPaths,
    block_values,
    routed_services,
)
from fleetop.proxy.sandbox import RenderPool
from fleetop.store import Entry

log = logging.getLogger(__name__)

MIN_REFRESH = 0.05
"""Seconds: the soonest a pass comes back for an expired DNS answer."""

Launched = dict[str, frozenset[str]]
Sources = dict[str, tuple[str, RegistrationSource | None]]
Found = tuple[int, tuple[tuple[str, int], ...], tuple[tuple[str, tuple[str, ...]], ...]]
Inputs = tuple[
    int,
    tuple[tuple[str, int], ...],
    tuple[tuple[str, tuple[str, ...]], ...],
    tuple[tuple[str, tuple[str, ...], str], ...],
]


@dataclass
class ProxyMemory:
    """What one proxy's passes remember: coalescing, and this process's last writes."""

    quiet: Quiescence
    seen: Inputs | None = None
    backends: BackendSet = field(default_factory=BackendSet)
    """The registrations of the last render: what the published config (and the status) reflects."""
    published: PublishedConfig | None = None
    """The config this process last published or found published with the hash it rendered."""
    render_error: str | None = None
    invalid_reported: int = 0
    unlaunched_reported: frozenset[str] = frozenset()
    invalid_generation: int = 0
    reported: set[str] = field(default_factory=set)
    names: frozenset[str] = frozenset()
    """The DNS names among the last render's registrations: re-resolved on every pass (cached), and
    the answers are one of the render's inputs, so a changed answer renders again."""
    renderer: FragmentRenderer = field(default_factory=FragmentRenderer)
    """Keeps the rendered blocks of unchanged services between renders."""
    judged: tuple[int, str] = (0, "")
    """The revision of the spec last judged and its ``specHash`` (computed once per revision: a
    proxy routing thousands of services has a large spec)."""
    rules: RuleMemo = field(default_factory=dict)
    """The follow rules of the last render, per service (:func:`follow_rules`)."""
    collector: BackendCollector = field(default_factory=BackendCollector)
    """Keeps the parsed registrations of unchanged services between renders."""


class ProxyReconciler:
    """Reconciles ``proxies/<name>`` keys."""

    def __init__(
        self,
        informers: Informers,
        caches: ProxyCaches,
        executor: Executor,
        *,
        proxy_root: str = DEFAULT_PROXY_ROOT,
        settings: UnitSettings = DEFAULT_UNITS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sandbox: RenderPool | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.informers = informers
        self.sandbox = sandbox
        """Where custom templates render (a worker process, time and size limits); None: in-process."""
        self.caches = caches
        self.executor = executor
        self.proxy_root = proxy_root
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.memory: dict[str, ProxyMemory] = {}
        self.resolver = resolver if resolver is not None else Resolver()
        self.renders = 0
        self.publishes = 0

    async def reconcile(self, name: str) -> float | None:
        if not all(self.informers.synced().values()) or not self.caches.synced:
            return SYNC_WAIT
        ref = ObjectRef("proxies", name)
        entry = self.informers.entries["proxies"].get(name)
        if entry is None:
            return await self._deleted(ref)
        if entry.error is not None or not isinstance(entry.spec, ProxySpec):
            return await self._invalid(ref, entry)
        spec = entry.spec
        read = self._inputs(entry.mod_revision, spec)
        if read is None:
            return SYNC_WAIT
        found, sources, launched = read
        memory = self._memory(name, spec)
        inputs: Inputs = (*found, await self._resolved(memory.names))
        layout = ProxyLayout.of(name, spec, self.proxy_root, self.settings)
        due, wait = self._coalesce(memory, inputs)
        published = self._published(name)
        if due or (wait is None and self._must_render(memory, published)):
            memory.backends = await self._backends(spec, memory, sources, launched)
            try:
                rules = self._follow_rules(ref.name, spec, memory, sources, launched, layout)
                published = await self._render_and_publish(
                    ref, spec, memory.backends, layout, memory, published, rules
                )
            except BaseException:
                memory.seen = None  # not published: the retry must see these inputs as a change
                raise
            await self._report_invalid(ref, memory, memory.backends)
        units, unit_error = await self._units(ref, spec, layout)
        agents = summarize_agents(self.caches.agents(name), published.hash if published else "")
        if memory.judged[0] != entry.mod_revision:
            memory.judged = (entry.mod_revision, spec_hash(spec))
        view = ProxyView(
            entry.mod_revision,
            published,
            memory.backends,
            agents,
            units.units,
            memory.render_error,
            spec_hash=memory.judged[1],
        )
        problems = [f"{n} exists and is not this proxy's" for n in units.blocked]
        if unit_error is not None or problems:
            view = dataclasses.replace(view, unit_error="; ".join([*problems, unit_error or ""]).strip("; "))
        status = build_status(view, self._stored(name), self.clock())
        await self.executor.write_status(ref, status, self.caches.statuses)
        return self._refresh_after(wait, memory)

    # -- inputs -----------------------------------------------------------------------------------------
    def _inputs(self, generation: int, spec: ProxySpec) -> tuple[Found, Sources, Launched] | None:
        """What a render depends on, cheaply: the spec's revision, the revision of each routed
        service's registration cache (one cache per prefix, so it moves only when that prefix
        changed) and the instances the operator runs of each sidekick service. None while a cache is
        syncing. Parsing waits until a render is due, so the passes of a burst cost next to nothing.
        Also the caches and the launched instances read, which a render of this pass then uses (one
        walk over the routed services per pass, and the render is of the inputs recorded)."""
        revisions: list[tuple[str, int]] = []
        sources: Sources = {}
        for service in routed_services(spec):
            prefix = self.informers.registration_prefix(service)
            cache = self.informers.registrations.cache(prefix)
            if cache is None:
                return None
            revisions.append((prefix, cache.revision))
            sources[service] = (prefix, cache)
        launched = self._launched(spec)
        instances = tuple((s, tuple(sorted(found))) for s, found in sorted(launched.items()))
        return (generation, tuple(revisions), instances), sources, launched

    def _launched(self, spec: ProxySpec) -> Launched:
        """For each routed service whose instances register through fleetop's sidekick, the instances
        whose main unit fleet holds as launched (from the last poll). Others are not listed: trusted."""
        snapshot = self.informers.fleet.snapshot
        found: Launched = {}
        for service in routed_services(spec):
            entry = self.informers.entries["services"].get(service)
            if entry is None or not isinstance(entry.spec, ServiceSpec) or not needs_sidekick(entry.spec):
                continue
            names = snapshot.owners.get(f"services/{service}", frozenset())
            found[service] = launched_instances(
                service, ((n, snapshot.units[n].desired_state) for n in names)
            )
        return found

    async def _backends(
        self, spec: ProxySpec, memory: ProxyMemory, sources: Sources, launched: Launched
    ) -> BackendSet:
        """Registrations of every routed service (``sources``, from :meth:`_inputs`), parsed, names
        resolved, destinations checked."""
        names = frozenset(memory.collector.names(sources))
        resolved = await self.resolver.resolve(names)
        if memory.seen is not None and memory.names != names:  # these answers are what this render saw
            memory.seen = (*memory.seen[:3], resolved_view(resolved))
        memory.names = names
        return memory.collector.collect(sources, launched, self._destinations(spec, resolved))

    async def _resolved(self, names: frozenset[str]) -> tuple[tuple[str, tuple[str, ...], str], ...]:
        """The current answers for the names the last render used (from the cache while fresh)."""
        return resolved_view(await self.resolver.resolve(names)) if names else ()

    def _destinations(self, spec: ProxySpec, resolved: dict[str, Resolution]) -> Destinations:
        """The proxy's ``allowedNetworks`` for every routed service, narrowed by a service's own."""
        lists = self._network_lists(spec)
        return Destinations(resolved, {service: network_rules(*found) for service, found in lists.items()})

    def _network_lists(self, spec: ProxySpec) -> dict[str, tuple[tuple[str, ...], ...]]:
        """Per routed service, the CIDR lists an address must be in: the proxy's, then the service's."""
        mine = tuple(spec.allowed_networks)
        lists: dict[str, tuple[tuple[str, ...], ...]] = {}
        for service in routed_services(spec):
            entry = self.informers.entries["services"].get(service)
            own = (
                entry.spec.discovery.allowed_networks
                if entry and isinstance(entry.spec, ServiceSpec)
                else None
            )
            lists[service] = (mine,) if own is None else (mine, tuple(own))
        return lists

    def _refresh_after(self, wait: float | None, memory: ProxyMemory) -> float | None:
        """Come back when a name the config uses is due for a new lookup (or sooner, for ``wait``)."""
        due = self.resolver.next_refresh(memory.names) if memory.names else None
        if due is None:
            return wait
        due = max(due, MIN_REFRESH)
        return due if wait is None else min(wait, due)

    def _memory(self, name: str, spec: ProxySpec) -> ProxyMemory:
        memory = self.memory.get(name)
        if memory is None:
            memory = self.memory[name] = ProxyMemory(Quiescence(spec.wait.min, spec.wait.max))
        memory.quiet.min, memory.quiet.max = spec.wait.min, spec.wait.max
        return memory

    def _coalesce(self, memory: ProxyMemory, inputs: Inputs) -> tuple[bool, float | None]:
        """(render now, requeue after): a change is rendered when the quiescence rule says it is due;
        until then the pass asks to come back at the due time (the burst's trailing edge)."""
        now = self.monotonic()
        if inputs != memory.seen:
            spec_changed = memory.seen is None or memory.seen[0] != inputs[0]
            memory.seen = inputs
            burst = (
                None if spec_changed else self._burst([prefix for prefix, _ in inputs[1]], memory.quiet.min)
            )
            if burst is None:
                memory.quiet.changed(now)
            else:
                memory.quiet.changed(burst[0], burst_start=burst[1])
        if not memory.quiet.pending:
            return False, None
        if memory.quiet.ready(now):
            memory.quiet.rendered(now)
            memory.render_error = None
            return True, None
        due = memory.quiet.due()
        return False, max(0.001, (due if due is not None else now) - now)

    def _burst(self, prefixes: list[str], gap: float) -> tuple[float, float] | None:
        """When the routed registrations last changed and when that burst began, across prefixes."""
        found = []
        for prefix in prefixes:
            cache = self.informers.registrations.cache(prefix)
            burst = cache.burst(gap) if cache is not None else None
            if burst is not None:
                found.append(burst)
        if not found:
            return None
        return max(last for last, _ in found), max(start for _, start in found)

    @staticmethod
    def _must_render(memory: ProxyMemory, published: PublishedConfig | None) -> bool:
        """With no new inputs, render again only when the published config is not the one this
        process published last (deleted, or written by someone else)."""
        if memory.render_error is not None:
            return False
        return memory.published is None or published is None or published.hash != memory.published.hash

    def _published(self, name: str) -> PublishedConfig | None:
        """The newest published config: the cache's, unless it has not seen this process's last write."""
        return decode_published(self.executor.stored(self.keys.proxy_config(name), self.caches.configs))

    def _follow_rules(
        self,
        name: str,
        spec: ProxySpec,
        memory: ProxyMemory,
        sources: Sources,
        launched: Launched,
        layout: ProxyLayout,
    ) -> list[FollowedBackend]:
        """What the agents may follow themselves (:mod:`fleetop.proxy.follow`), as of this render."""
        if not agents_may_follow(spec):
            return []
        revisions = {service: memory.collector.revision(service) for service in sources}
        block = block_values(name, spec, RenderPaths(layout.runtime_dir))
        lists = self._network_lists(spec)
        return follow_rules(spec, sources, revisions, launched, lists, block, memory.rules)

    @property
    def keys(self) -> Keys:
        return self.informers.keys

    # -- publishing -------------------------------------------------------------------------------------
    async def _render_and_publish(
        self,
        ref: ObjectRef,
        spec: ProxySpec,
        backends: BackendSet,
        layout: ProxyLayout,
        memory: ProxyMemory,
        published: PublishedConfig | None,
        rules: list[FollowedBackend],
    ) -> PublishedConfig | None:
        self.renders += 1
        paths = RenderPaths(layout.runtime_dir)
        try:
            if spec.template is not None and self.sandbox is not None:
                rendered = await self.sandbox.render(ref.name, spec, backends.valid, paths=paths)
            else:
                rendered = memory.renderer.render(ref.name, spec, backends.valid, paths=paths)
            digest = published_hash(rendered.hash, spec, rules)
            generation = (published.generation if published is not None else 0) + 1
            config = rendered.published(spec, generation).model_copy(update={"hash": digest, "follow": rules})
            body = encode_published(config, body_sha256=rendered.hash)
        except (RenderError, PublishedFormatError) as exc:
            memory.render_error = f"render failed: {exc}"
            if memory.render_error not in memory.reported:
                memory.reported.add(memory.render_error)
                await self.executor.record(ref, "RenderFailed", memory.render_error, warning=True)
            return published
        memory.render_error = None
        memory.reported.clear()
        if await self.executor.publish(ref.name, body, self.caches.configs) == "unchanged":
            memory.published = self._published(ref.name)  # this config, already published
            return memory.published
        self.publishes += 1
        memory.published = config
        total = sum(len(v) for v in backends.valid.values())
        log.info(
            "proxy %s: published generation %d (%s, %d backends)", ref.name, generation, digest[:12], total
        )
        return config

    async def _report_invalid(self, ref: ObjectRef, memory: ProxyMemory, backends: BackendSet) -> None:
        count = backends.invalid_count
        if count and count != memory.invalid_reported:
            await self.executor.record(ref, "InvalidRegistrations", describe_invalid(backends), warning=True)
        memory.invalid_reported = count
        unlaunched = backends.unlaunched_keys()
        if unlaunched and unlaunched != memory.unlaunched_reported:
            await self.executor.record(
                ref, "UnlaunchedRegistrations", describe_unlaunched(backends), warning=True
            )
        memory.unlaunched_reported = unlaunched

    # -- units ------------------------------------------------------------------------------------------
    async def _units(
        self, ref: ObjectRef, spec: ProxySpec | None, layout: ProxyLayout | None
    ) -> tuple[UnitPlan, str | None]:
        """Plan the proxy's units and hand the actions to the executor, never waiting for fleet:
        after acting, an expectation makes the passes until the next poll plan nothing in fleet (that
        poll queues the proxy again). Raises TemporaryError (retried) after a transient failure."""
        desired: list[DesiredUnit] = []
        if spec is not None and spec.managed and layout is not None:
            try:
                desired = desired_units(ref.name, spec, layout)
            except RenderError as exc:
                return UnitPlan([], []), f"cannot write the proxy's units: {exc}"
        fleet = self.informers.fleet
        if fleet.loss is not None or not fleet.fresh_for(ref.key):
            stored = self._stored(ref.name)
            return UnitPlan([], list(stored.units) if stored is not None else []), None
        plan = plan_units(ref.name, desired, fleet.snapshot.index)
        if not plan.actions:
            return plan, None
        outcome = await self.executor.apply(ref, plan.actions)
        fleet.hurry(CONVERGING_POLL)
        fleet.expect(ref.key)
        if isinstance(outcome.error, TemporaryError):
            raise outcome.error
        return plan, str(outcome.error) if outcome.error is not None else None

    # -- status -----------------------------------------------------------------------------------------
    def _stored(self, name: str) -> ProxyStatus | None:
        raw = self.executor.stored(self.keys.status("proxies", name), self.caches.statuses)
        if raw is None:
            return None
        try:
            return ProxyStatus.model_validate_json(raw)
        except ValueError:
            return None

    async def _invalid(self, ref: ObjectRef, entry: Entry) -> float | None:
        message = "; ".join(entry.error.all_messages()) if entry.error is not None else "not a proxy spec"
        reason = "NameTaken" if isinstance(entry.error, NameTaken) else "SpecInvalid"
        stored = self._stored(ref.name)
        status = invalid_status(entry.mod_revision, message, stored, self.clock(), reason)
        memory = self.memory.setdefault(ref.name, ProxyMemory(Quiescence(0.0, 0.0)))
        await self.executor.write_status(ref, status, self.caches.statuses)
        if memory.invalid_generation != entry.mod_revision:
            memory.invalid_generation = entry.mod_revision
            await self.executor.record(ref, reason, f"spec is invalid: {message}", warning=True)
        return None

    async def _deleted(self, ref: ObjectRef) -> float | None:
        """Destroy the units, then delete the published config and the status (fenced). While fleet
        is lost, or has not yet been polled since this proxy's last actions: nothing (the poll that
        succeeds, or shows them, queues this proxy)."""
        fleet = self.informers.fleet
        if fleet.loss is not None or not fleet.fresh_for(ref.key):
            return None
        plan, _ = await self._units(ref, None, None)
        await self.executor.publish(ref.name, None, self.caches.configs)
        await self.executor.write_status(ref, None, self.caches.statuses)
        if not plan.actions:
            self.memory.pop(ref.name, None)
            self.executor.forget(ref)
        return None
