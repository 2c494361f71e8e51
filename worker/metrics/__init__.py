"""The worker's observability endpoint (protocol.md section 6.13).

* :mod:`worker.metrics.instruments`: the Prometheus metrics and the typed API that moves them;
* :mod:`worker.metrics.observer`: the core's observer that feeds them (slots, records, drain,
  heartbeat loops) and the ``/assignments`` snapshot;
* :mod:`worker.metrics.instrumented`: the port decorators that feed what the ports show (calls,
  answers, errors, outcomes);
* :mod:`worker.metrics.health`: the liveness watchdog and the readiness flag behind the probes;
* :mod:`worker.metrics.server`: the worker's routes (metrics, probes, assignments);
* :mod:`worker.metrics.endpoint`: the plain HTTP endpoint on a thread of its own that serves them
  (the reference cluster's metrics use it too).
"""

from __future__ import annotations

from worker.metrics.endpoint import MetricsBindError
from worker.metrics.health import WATCHDOG_PERIOD_SEC, WATCHDOG_TIMEOUT_SEC, Health, run_watchdog
from worker.metrics.instruments import OUTCOMES, SLOT_STATES, WorkerMetrics
from worker.metrics.server import MetricsServer, serve_metrics

__all__ = [
    "OUTCOMES",
    "SLOT_STATES",
    "WATCHDOG_PERIOD_SEC",
    "WATCHDOG_TIMEOUT_SEC",
    "Health",
    "MetricsBindError",
    "MetricsServer",
    "WorkerMetrics",
    "run_watchdog",
    "serve_metrics",
]
