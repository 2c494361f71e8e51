"""The worker's metrics and probes over HTTP (protocol.md section 6.13).

Paths: ``/metrics`` (Prometheus text, negotiated with ``prometheus_client``'s encoder),
``/healthz`` and ``/readyz`` (200 or 503, with a one-line reason), ``/assignments`` (JSON from
the provider callable), anything else 404. Served by :class:`~worker.metrics.endpoint.HttpEndpoint`
on a thread of its own, bound at construction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from worker.metrics.endpoint import TEXT, HttpEndpoint, MetricsBindError, Reply, Route
from worker.metrics.instruments import WorkerMetrics

__all__ = [
    "AssignmentsProvider",
    "MetricsBindError",
    "MetricsServer",
    "prometheus_route",
    "serve_metrics",
]

logger = logging.getLogger("worker.metrics")

#: Returns what ``/assignments`` serves: a JSON-able snapshot. Called on the HTTP thread, so it
#: must only read data the trio side replaces whole (never await or touch trio objects).
AssignmentsProvider = Callable[[], Any]

_JSON: Final = "application/json"


def _no_assignments() -> Any:
    return {"slots": [], "recent": []}


def prometheus_route(registry: CollectorRegistry) -> Route:
    """The ``/metrics`` route of ``registry`` (text or OpenMetrics, as the scraper accepts)."""

    def route(accept: str) -> Reply:
        encoder, content_type = choose_encoder(accept)
        return HTTPStatus.OK, content_type, encoder(registry)

    return route


class MetricsServer(HttpEndpoint):
    """Serves one worker's ``metrics`` on ``host:port``; bound on construction.

    ``assignments`` provides the ``/assignments`` snapshot; it may be replaced later.
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        host: str,
        port: int,
        assignments: AssignmentsProvider = _no_assignments,
    ) -> None:
        self.metrics = metrics
        self.assignments: AssignmentsProvider = assignments
        super().__init__(
            host,
            port,
            {
                "/metrics": prometheus_route(metrics.registry),
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/assignments": self._assignments,
            },
        )

    def _healthz(self, _accept: str) -> Reply:
        problem = self.metrics.health.liveness_problem()
        if problem is None:
            return HTTPStatus.OK, TEXT, b"ok\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, TEXT, f"{problem}\n".encode()

    def _readyz(self, _accept: str) -> Reply:
        if self.metrics.health.ready:
            return HTTPStatus.OK, TEXT, b"ready\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, TEXT, b"not ready\n"

    def _assignments(self, _accept: str) -> Reply:
        body = json.dumps(self.assignments(), indent=2, sort_keys=True) + "\n"
        return HTTPStatus.OK, _JSON, body.encode()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self


def serve_metrics(
    host: str,
    port: int,
    metrics: WorkerMetrics,
    assignments: AssignmentsProvider = _no_assignments,
) -> MetricsServer:
    """Bind ``host:port`` and start serving ``metrics`` (and ``assignments`` on
    ``/assignments``); logs the INFO line with the bound port (``metrics_port``). Raises
    :class:`MetricsBindError` when the address is taken."""
    server = MetricsServer(metrics, host, port, assignments)
    server.start()
    logger.info(
        "metrics endpoint serving",
        extra={"fields": {"metrics_host": host, "metrics_port": server.port}},
    )
    return server
