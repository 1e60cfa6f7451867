"""The operator's Prometheus metrics, in a registry of its own.

A registry per :class:`OperatorMetrics` (never prometheus_client's global one) keeps the operator
importable and testable many times in one process: two operators in a test do not collide, and nothing
is registered at import time. Values that other components already count (the work queue's depth and
retries, the fleet client's calls and errors, the leader flag) are read when Prometheus scrapes, by a
collector, instead of being copied into gauges on every change.

Names (all prefixed ``fleetop_``):

=============================================  =========  ===============================================
``reconcile_duration_seconds{outcome}``        histogram  one reconcile pass (success/requeue/error/terminal)
``workqueue_depth``                            gauge      keys waiting for a worker
``workqueue_delayed``                          gauge      keys waiting on a delay or backoff
``workqueue_adds_total``                       counter    keys added (after dedupe)
``workqueue_retries_total``                    counter    rate-limited re-adds after a failed pass
``convergence_lag_seconds{service}``           gauge      since the spec changed, while not yet converged
``fleet_api_calls_total{operation}``           counter    fleet API requests, by client operation
``fleet_api_errors_total{kind}``               counter    fleet API failures: unavailable, server, client
``fleet_api_retries_total``                    counter    fleet API requests retried by the client
``leader``                                     gauge      1 while this process is the leader
``informer_synced{informer}``                  gauge      1 once an informer's first list is in its cache
``events_recorded_total{reason}``              counter    events written to etcd
``writes_total{what,result}``                  counter    the executor's write-if-changed of status and
                                                          published configs: written / unchanged /
                                                          deleted / fenced / failed
=============================================  =========  ===============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetop.controller.runtime.queue import WorkQueue
from fleetop.fleet.client import ClientStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Sources:
    """Where the scrape-time values come from; filled in by the manager as components start."""

    queue: WorkQueue | None = None
    fleet_stats: ClientStats | None = None
    is_leader: Callable[[], bool] = lambda: False
    synced: Callable[[], Mapping[str, bool]] = lambda: {}
    lag: dict[str, float] = field(default_factory=dict)


class _LiveCollector(Collector):
    """Reads the queue, the fleet client's counters and the leader flag at scrape time."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        queue = src.queue
        depth = GaugeMetricFamily("fleetop_workqueue_depth", "Keys waiting for a worker.")
        delayed = GaugeMetricFamily("fleetop_workqueue_delayed", "Keys waiting on a delay or backoff.")
        adds = CounterMetricFamily("fleetop_workqueue_adds", "Keys added to the work queue (after dedupe).")
        retries = CounterMetricFamily(
            "fleetop_workqueue_retries", "Rate-limited re-adds after a failed pass."
        )
        depth.add_metric([], queue.depth if queue else 0)
        delayed.add_metric([], queue.delayed if queue else 0)
        adds.add_metric([], queue.adds_total if queue else 0)
        retries.add_metric([], queue.retries_total if queue else 0)
        yield from (depth, delayed, adds, retries)
        yield from self._fleet(src.fleet_stats)
        leader = GaugeMetricFamily("fleetop_leader", "1 while this process is the leader.")
        leader.add_metric([], 1.0 if src.is_leader() else 0.0)
        yield leader
        synced = GaugeMetricFamily(
            "fleetop_informer_synced", "1 once an informer's first list is in its cache.", labels=["informer"]
        )
        for name, ok in sorted(src.synced().items()):
            synced.add_metric([name], 1.0 if ok else 0.0)
        yield synced
        lag = GaugeMetricFamily(
            "fleetop_convergence_lag_seconds",
            "Seconds since a service's spec changed, while it has not converged (0 when converged).",
            labels=["service"],
        )
        for service, seconds in sorted(src.lag.items()):
            lag.add_metric([service], seconds)
        yield lag

    @staticmethod
    def _fleet(stats: ClientStats | None) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "fleetop_fleet_api_calls", "fleet API requests, by client operation.", labels=["operation"]
        )
        errors = CounterMetricFamily(
            "fleetop_fleet_api_errors", "fleet API failures: unavailable, server, client.", labels=["kind"]
        )
        retries = CounterMetricFamily(
            "fleetop_fleet_api_retries", "fleet API requests retried by the client."
        )
        failovers = CounterMetricFamily(
            "fleetop_fleet_api_failovers", "Switches to another fleet endpoint after one did not answer."
        )
        if stats is not None:
            for operation, count in sorted(stats.calls.items()):
                calls.add_metric([operation], count)
            for kind, count in sorted(stats.errors.items()):
                errors.add_metric([kind], count)
            retries.add_metric([], stats.retries)
            failovers.add_metric([], stats.failovers)
        else:
            retries.add_metric([], 0)
            failovers.add_metric([], 0)
        yield from (calls, errors, retries, failovers)


class OperatorMetrics:
    """Every metric of one operator process, in its own :class:`CollectorRegistry`."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sources = sources or Sources()
        self.reconcile_duration = Histogram(
            "fleetop_reconcile_duration_seconds",
            "Duration of one reconcile pass, by outcome.",
            ["outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.events_recorded = Counter(
            "fleetop_events_recorded",
            "Events written to etcd, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.writes = Counter(
            "fleetop_writes",
            "Write-if-changed of status and published configs (what): written, unchanged (skipped),"
            " deleted, fenced (refused: not the leader), failed.",
            ["what", "result"],
            registry=self.registry,
        )
        self.leader_since = Gauge(
            "fleetop_leader_since_seconds",
            "Unix time this process last became the leader (0 if it never was).",
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self.sources))

    def observe_reconcile(self, key: str, seconds: float, outcome: str) -> None:
        """The work queue's observer: ``run_workers(..., observe=metrics.observe_reconcile)``."""
        self.reconcile_duration.labels(outcome).observe(seconds)

    def set_lag(self, service: str, seconds: float | None) -> None:
        """Convergence lag of a service; None forgets it (the service is gone)."""
        if seconds is None:
            self.sources.lag.pop(service, None)
        else:
            self.sources.lag[service] = max(0.0, seconds)

    def render(self) -> bytes:
        """The text exposition format, as ``/metrics`` serves it."""
        return generate_latest(self.registry)
