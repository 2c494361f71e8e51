"""``python -m worker cluster``: serve the reference storage and scheduler until stopped.

Both run in this process (the scheduler pulls ready work from storage in process, protocol.md §7
[O]); storage persists to ``--db``. Stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from worker.cluster.embedded import ClusterSettings, ClusterStartError, EmbeddedCluster
from worker.cluster.scheduler import SchedulerSettings
from worker.cluster.storage import StorageSettings
from worker.security import make_non_dumpable

__all__ = ["DEFAULT_SCHEDULER_PORT", "DEFAULT_STORAGE_PORT", "main"]

DEFAULT_STORAGE_PORT: Final = 50052
DEFAULT_SCHEDULER_PORT: Final = 50051
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker cluster",
        description="Serve the reference scheduler and storage (SQLite) until stopped.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--storage-port", type=int, default=DEFAULT_STORAGE_PORT)
    parser.add_argument("--scheduler-port", type=int, default=DEFAULT_SCHEDULER_PORT)
    parser.add_argument("--db", type=Path, default=Path("cluster.db"), help="SQLite database")
    parser.add_argument("--stale-cutoff-sec", type=float, default=10.0, help="storage reaper")
    parser.add_argument("--gc-interval-sec", type=float, default=1.0, help="storage GC period")
    parser.add_argument("--job-retention-sec", type=float, default=300.0)
    parser.add_argument("--dead-em-cutoff-sec", type=float, default=10.0, help="scheduler")
    parser.add_argument("--liveness-interval-ms", type=int, default=250, help="scheduler")
    parser.add_argument(
        "--max-long-polls",
        type=int,
        default=SchedulerSettings().max_long_polls,
        help="NextTask calls that may wait at once: at least workers x slots (1024)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve Prometheus metrics on --host:P at /metrics (0: a free port, printed)",
    )
    return parser


def _problem(args: argparse.Namespace) -> str | None:
    """The first bad option, as a message naming it (a zero period would spin a thread)."""
    for option, value in (
        ("--storage-port", args.storage_port),
        ("--scheduler-port", args.scheduler_port),
        ("--metrics-port", args.metrics_port),
    ):
        if value is not None and not 0 <= value <= 65535:
            return f"{option} must be in 0..65535, got {value}"
    for option, number in (
        ("--stale-cutoff-sec", args.stale_cutoff_sec),
        ("--gc-interval-sec", args.gc_interval_sec),
        ("--job-retention-sec", args.job_retention_sec),
        ("--dead-em-cutoff-sec", args.dead_em_cutoff_sec),
        ("--liveness-interval-ms", args.liveness_interval_ms),
        ("--max-long-polls", args.max_long_polls),
    ):
        if not number > 0:
            return f"{option} must be > 0, got {number:g}"
    return None


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m worker cluster``."""
    args = _parser().parse_args(list(argv))
    problem = _problem(args)
    if problem is not None:
        print(f"cluster: {problem}", file=sys.stderr)
        return EXIT_USAGE
    make_non_dumpable()
    metrics = None
    if args.metrics_port is not None:  # bound first: a taken port starts nothing
        from worker.cluster.metrics import ClusterMetricsEndpoint
        from worker.metrics.endpoint import MetricsBindError

        try:
            metrics = ClusterMetricsEndpoint(args.host, args.metrics_port)
        except MetricsBindError as error:
            print(f"cluster: {error}", file=sys.stderr)
            return EXIT_FAILED
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = ClusterSettings(
        database=args.db,
        host=args.host,
        storage_port=args.storage_port,
        scheduler_port=args.scheduler_port,
        storage=StorageSettings(
            execution_manager_stale_cutoff_sec=args.stale_cutoff_sec,
            gc_interval_sec=args.gc_interval_sec,
            terminated_job_retention_sec=args.job_retention_sec,
        ),
        scheduler=SchedulerSettings(
            dead_em_cutoff_sec=args.dead_em_cutoff_sec,
            liveness_tracking_interval_ms=args.liveness_interval_ms,
            max_long_polls=args.max_long_polls,
        ),
    )
    try:
        cluster = EmbeddedCluster(settings)
    except ClusterStartError as error:
        print(f"cluster: cannot start: {error}", file=sys.stderr)
        if metrics is not None:
            metrics.close()
        return EXIT_FAILED
    if metrics is not None:
        metrics.serve(cluster.storage, lambda: cluster.scheduler)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    with cluster:
        print(
            f"storage on {args.host}:{cluster.storage_port}, scheduler on "
            f"{args.host}:{cluster.scheduler_port}, session {cluster.storage.session_id}, "
            f"database {args.db}",
            flush=True,
        )
        if metrics is not None:
            print(f"metrics on http://{args.host}:{metrics.port}/metrics", flush=True)
        while not stopped.wait(1.0):
            pass
    if metrics is not None:
        metrics.close()
    print("cluster stopped", flush=True)
    return 0
