"""Prometheus metrics of the reference cluster (``cluster --metrics-port P``).

A collector that reads the storage and scheduler engines through their read accessors at
scrape time, so nothing on the dispatch path pays for it. Labels stay of low cardinality:
states, lanes, ack reasons, and the ids of workers currently alive (never job or task ids).
The scheduler is looked up on every scrape, because a scheduler restart replaces it; its
counters then start again from zero, as after a process restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.cluster.scheduler import SchedulerEngine
from worker.cluster.storage import JobState, Lane, StorageEngine, TaskState
from worker.metrics.endpoint import TEXT, HttpEndpoint, Reply, Route
from worker.metrics.server import prometheus_route

__all__ = [
    "ACK_REASONS",
    "ClusterCollector",
    "ClusterMetricsEndpoint",
    "cluster_registry",
    "serve_cluster_metrics",
]

#: Why an acknowledgement completed nothing (protocol.md section 7).
ACK_REASONS: Final = ("stale scheduler", "unknown worker", "unknown assignment")
_JOB_STATES: Final = tuple(
    state for state in JobState if state is not JobState.JOB_STATE_UNSPECIFIED
)


class ClusterCollector(Collector):
    """Reads ``storage`` and the scheduler that ``scheduler()`` returns at each scrape."""

    def __init__(self, storage: StorageEngine, scheduler: Callable[[], SchedulerEngine]) -> None:
        self._storage = storage
        self._scheduler = scheduler

    def collect(self) -> Iterable[Metric]:
        """The current values, one family per metric."""
        storage, scheduler = self._storage, self._scheduler()
        queue = GaugeMetricFamily(
            "cluster_scheduler_queue_depth",
            "Assignments queued in the scheduler, not yet handed to a worker.",
        )
        queue.add_metric([], scheduler.queued())
        yield queue
        ready = GaugeMetricFamily(
            "cluster_storage_ready_tasks",
            "Ready tasks in storage's inbound lanes, not yet pulled by the scheduler.",
            labels=["lane"],
        )
        lanes = storage.ready_counts()
        for lane in Lane:
            ready.add_metric([lane.value], lanes.get(lane, 0))
        yield ready
        polls = GaugeMetricFamily(
            "cluster_scheduler_waiting_polls", "NextTask long polls waiting for work now."
        )
        polls.add_metric([], scheduler.waiting_polls)
        yield polls

        outstanding = GaugeMetricFamily(
            "cluster_assignments_outstanding",
            "Assignments handed to a worker and not yet acknowledged, per worker.",
            labels=["worker_id"],
        )
        for em_id, assignments in sorted(scheduler.outstanding().items()):
            outstanding.add_metric([str(em_id)], len(assignments))
        yield outstanding

        job_counts, task_counts = storage.state_counts()
        jobs = GaugeMetricFamily(
            "cluster_jobs", "Jobs in the database, by state.", labels=["state"]
        )
        for state in _JOB_STATES:
            jobs.add_metric([state.name], job_counts.get(state, 0))
        yield jobs
        tasks = GaugeMetricFamily(
            "cluster_tasks", "Tasks of every job in the database, by state.", labels=["state"]
        )
        for task_state in TaskState:
            tasks.add_metric([task_state.value], task_counts.get(task_state.value, 0))
        yield tasks

        acks = CounterMetricFamily(
            "cluster_acks_completed", "Acknowledgements that completed an outstanding assignment."
        )
        acks.add_metric([], scheduler.ack_totals.get("completed", 0))
        yield acks
        skipped = CounterMetricFamily(
            "cluster_acks_skipped",
            "Acknowledgements that completed nothing, by reason (a duplicate-ack signal).",
            labels=["reason"],
        )
        for reason in ACK_REASONS:
            skipped.add_metric([reason], scheduler.ack_totals.get(reason, 0))
        yield skipped
        reschedules = CounterMetricFamily(
            "cluster_reschedules", "Assignments of lost workers put back in the queue."
        )
        reschedules.add_metric([], scheduler.reschedules_total)
        yield reschedules

        rows = storage.execution_managers()
        workers = GaugeMetricFamily(
            "cluster_workers", "Workers registered with storage, by state.", labels=["state"]
        )
        for worker_state in ("alive", "dead"):
            workers.add_metric([worker_state], sum(row.state == worker_state for row in rows))
        yield workers
        heartbeat = GaugeMetricFamily(
            "cluster_worker_last_heartbeat_timestamp_seconds",
            "When each alive worker last heartbeat storage (Unix time).",
            labels=["worker_id"],
        )
        for row in rows:
            if row.state == "alive":
                heartbeat.add_metric([str(row.id)], row.last_heartbeat_at)
        yield heartbeat
        session = GaugeMetricFamily("cluster_storage_session", "Storage's current session.")
        session.add_metric([], storage.session_id)
        yield session


def cluster_registry(
    storage: StorageEngine, scheduler: Callable[[], SchedulerEngine]
) -> CollectorRegistry:
    """A private registry holding only the cluster's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(storage, scheduler))
    return registry


class ClusterMetricsEndpoint(HttpEndpoint):
    """``/metrics`` of a cluster on ``host:port``: bound at construction (before the cluster
    starts, so a taken port stops everything), serving once :meth:`serve` names the engines."""

    def __init__(self, host: str, port: int) -> None:
        self._route: Route | None = None
        super().__init__(host, port, {"/metrics": self._metrics})

    def serve(self, storage: StorageEngine, scheduler: Callable[[], SchedulerEngine]) -> None:
        """Start answering with the metrics of ``storage`` and ``scheduler()``."""
        self._route = prometheus_route(cluster_registry(storage, scheduler))
        self.start()

    def _metrics(self, accept: str) -> Reply:
        route = self._route
        if route is None:  # not reachable before serve(): the thread starts there
            return HTTPStatus.SERVICE_UNAVAILABLE, TEXT, b"starting\n"
        return route(accept)


def serve_cluster_metrics(
    storage: StorageEngine, scheduler: Callable[[], SchedulerEngine], host: str, port: int
) -> ClusterMetricsEndpoint:
    """Bind ``host:port`` (``MetricsBindError`` if taken) and serve ``/metrics`` from a thread."""
    endpoint = ClusterMetricsEndpoint(host, port)
    endpoint.serve(storage, scheduler)
    return endpoint
