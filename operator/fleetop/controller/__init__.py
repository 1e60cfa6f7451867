"""The operator (``fleetop run``): reconcilers for services and proxies on a generic runtime.

Decisions live in pure functions (planners) so they can be tested with large tables and property
tests; I/O stays at the edges (informers read, the executor writes). The layers, checked by
import-linter (``pyproject.toml``), from the top: :mod:`~.cli`, :mod:`~.operator`, the two kinds
(:mod:`~.services`, :mod:`~.proxies`, which never import each other), :mod:`~.runtime`, and the
shared vocabulary (:mod:`~.conditions`, :mod:`~.unitfile`, :mod:`~.world`).

Module map
----------

``cli``                   ``fleetop run``: flags and environment into settings, then ``run_operator``.
``operator``              the wiring: the reconcilers of ``services/<n>``, ``proxies/<n>``, what each needs.
``services/``             the service kind:
  ``reconciler``          ``reconcile(name)``: cached world → planner → executor → status.
  ``planner``             the pure planner: (spec, fleet, registrations, now, memory) → plan.
  ``instances``           ownership and the scene: which units are this service's, slot by slot.
  ``readiness``           what fleet's states mean for one instance (ready, failed, unscheduled).
  ``rollout``             Deployment arithmetic: how many to create, which to destroy.
  ``restarts``            crash-loop back-off per unit.
  ``rollback``            ``rollout.autoRollback`` to the last available template.
  ``machineloss``         instances whose machine left the cluster.
  ``report``              the service's status and new memory from one pass.
  ``memory``              what the planner remembers between passes, and its answer (``Plan``).
  ``limits``              ceilings on instances (refusals); the setting is ``runtime.settings.WorkLimits``.
  ``unitrender``          a ServiceSpec into its main and sidekick units.
``proxies/``              the proxy kind:
  ``reconciler``          ``reconcile(name)``: render, publish, run the managed units, report.
  ``cache``               the proxy side's informers: published configs, proxy statuses, agents' reports.
  ``plan``                the pure planner of a managed proxy's units.
  ``status``              backends, what to publish, the status: decisions without I/O.
  ``units``               a managed ProxySpec into its proxy and agent units.
``runtime/``              the generic machinery (controller-runtime's), no kind by name:
  ``run``                 logging and signals around the manager.
  ``manager``             connects, owns the task group, gates workers on leadership.
  ``settings``            ``fleetop run``'s settings in small documented groups.
  ``contract``            the reconcile contract: what a pass may do, what each error means to the
                          queue (the table), the dispatcher of queue keys.
  ``queue``               the work queue (client-go's): dedup, one worker per key, backoff.
  ``informers``           caches of etcd prefixes and of fleet's poll (snapshot, index); they enqueue keys.
  ``executor``            every write of a pass: fleet actions, events, and status and published configs
                          through one write-if-changed; fenced.
  ``leader``              leader election on an etcd lease, with a renew deadline.
  ``contain``             a pass that fails unexpectedly is reported on its own key.
  ``observed``            the leader's heartbeat of what it sees (``/fleetop/observed``).
  ``health``, ``metrics`` ``/healthz``, ``/readyz``, ``/metrics``.
``world``                 the shared vocabulary: observed values, the poll's index, actions.
``conditions``            Available / Progressing / Degraded, and the unit rows of a status.
``unitfile``              what every unit fleetop writes shares: ownership mark, template, settings.

Glossary
--------

key
    A queue entry, ``<kind>/<name>`` (``services/web``). A reconcile gets only the key and reads the
    rest from the caches (level-based: it never depends on which event queued it).
snapshot
    One poll of fleet (:class:`~.runtime.informers.FleetSnapshot`, fleet's own types): units, unit
    states, machines, and each owned unit's owner key. fleet has no watch, so the snapshot is all the
    operator sees of it.
index
    The same poll as planner values (:class:`~.world.FleetIndex`: units by name, states by unit,
    machines, owned units grouped by owner key), built once per poll and shared by every pass of
    both kinds, so a pass costs what its own key owns.
scene
    The observations of one service's pass (:class:`~.services.instances.Scene`), cut from the index:
    its units, states and registrations by unit name, and now.
plan
    A planner's answer (:class:`~.services.memory.Plan`): actions, status, events, new memory, requeue-after.
action
    One fleet write a plan asks for: :class:`~.world.CreateUnit`, :class:`~.world.SetDesiredState`,
    :class:`~.world.DestroyUnit`, applied in that order.
executor
    Every write of a pass (:mod:`~.runtime.executor`): carries a plan's actions out (at most a batch per
    pass), records events (with their object's kind), and writes status and published configs through
    one write-if-changed that returns and counts what it did; fenced on leadership. Errors of fleet
    actions come back as a value.
expectation
    A key that just wrote to fleet is not planned again until a poll that began after the write has
    completed (:meth:`~.runtime.informers.FleetInformer.expect`, client-go's expectations); that poll
    queues the key again. No worker waits for fleet.
queue meaning
    What the work queue does with a pass's result or exception: requeue after N seconds, retry with
    backoff, or terminal (the table in :mod:`~.runtime.contract`).
template
    ``Template=`` in a unit's ``[X-Fleetop]`` section: a short hash of its options with the instance
    as ``%i``; all instances of one spec share it, a changed spec is a new template (a rolling update).
owner
    The service or proxy named by a unit's ``[X-Fleetop]`` section (``Service=``, ``Role=``,
    :mod:`fleetop.fleet.ownership`). Ownership is never inferred from a name; unowned units are left alone.
memory
    What a planner keeps between passes because fleet does not report it
    (:class:`~.services.memory.PlanMemory`:
    when units were first seen ready, transitions, restart records, placements, the last available
    template; :class:`~.proxies.reconciler.ProxyMemory` for a proxy). Re-seeded from the stored status
    after a restart or a failover, forgotten at the start of every term as leader.
published config
    A proxy's rendered config at ``/fleetop/proxies/<name>/config`` (:class:`fleetop.models.PublishedConfig`,
    generation and hash), written only when its hash changed.
agent
    ``fleetop proxy-agent``, one per proxy instance and machine: follows the published config, stages,
    checks and reloads the proxy, and reports to ``/status/agents/<proxy>/<machine>``.
sidekick
    ``fleetop register``, the discovery unit next to each instance of a service that asks for one: it
    keeps the instance's registration under ``/services/<service>/<instance>`` while it is healthy.
"""
