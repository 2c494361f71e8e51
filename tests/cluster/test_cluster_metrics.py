"""The reference cluster's Prometheus metrics: collector values, and ``cluster --metrics-port``."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.harness import TASKS_DIR, run_command, serve_cluster, stop_cluster, wait_for
from tests.cluster.test_commands import _job_file, _worker_config
from tests.metrics.scraping import get, scrape
from worker.cluster.db import Database
from worker.cluster.jobs import JobBuilder
from worker.cluster.metrics import serve_cluster_metrics
from worker.cluster.processes import WorkerProcess, worker_environment
from worker.cluster.scheduler import SchedulerEngine, SchedulerSettings
from worker.cluster.storage import Lane, StorageEngine

Labels = tuple[tuple[str, str], ...]


def one(**pairs: str) -> Labels:
    return tuple(sorted(pairs.items()))


def test_collector_follows_jobs_assignments_acks_and_workers() -> None:
    storage = StorageEngine(Database(":memory:"))
    scheduler = SchedulerEngine(storage, SchedulerSettings(dead_em_cutoff_sec=60))
    endpoint = serve_cluster_metrics(storage, lambda: scheduler, "127.0.0.1", 0)
    try:
        empty = scrape(endpoint.port)
        assert empty[("cluster_scheduler_queue_depth", ())] == 0
        assert empty[("cluster_jobs", one(state="RUNNING"))] == 0
        assert empty[("cluster_workers", one(state="alive"))] == 0
        assert empty[("cluster_acks_completed_total", ())] == 0
        assert empty[("cluster_storage_session", ())] == storage.session_id

        builder = JobBuilder("pair", package_dir=TASKS_DIR)
        builder.task("first", "cluster_tasks", "echo", [1])
        builder.task("second", "cluster_tasks", "echo", [2])
        storage.submit(builder.build())
        submitted = scrape(endpoint.port)
        assert submitted[("cluster_jobs", one(state="RUNNING"))] == 1
        assert submitted[("cluster_tasks", one(state="ready"))] == 2
        assert submitted[("cluster_storage_ready_tasks", one(lane="regular"))] == 2

        session, entries = storage.poll_ready((Lane.REGULAR,), 64, 0)
        scheduler.accept(session, entries)
        em_id, _ = storage.register_execution_manager("127.0.0.1")
        first = scheduler.next_task(em_id, None, 0)
        assert first is not None
        pulled = scrape(endpoint.port)
        assert pulled[("cluster_storage_ready_tasks", one(lane="regular"))] == 0
        assert pulled[("cluster_scheduler_queue_depth", ())] == 1
        assert pulled[("cluster_assignments_outstanding", one(worker_id=str(em_id)))] == 1
        assert pulled[("cluster_workers", one(state="alive"))] == 1
        (row,) = storage.execution_managers()
        assert pulled[
            ("cluster_worker_last_heartbeat_timestamp_seconds", one(worker_id=str(em_id)))
        ] == pytest.approx(row.last_heartbeat_at)

        own = scheduler.scheduler_id
        second = scheduler.next_task(em_id, (first.id, own), 0)  # completes the first
        assert second is not None
        scheduler.next_task(em_id, (first.id, own), 0)  # a duplicate: unknown assignment
        scheduler.next_task(em_id, (second.id, own + 1), 0)  # another scheduler's
        scheduler.next_task(9999, (second.id, own), 0)  # a worker this scheduler never saw
        scheduler.shutdown(em_id, [])  # the second assignment goes back in the queue
        storage.mark_dead(em_id)
        acked = scrape(endpoint.port)
        assert acked[("cluster_acks_completed_total", ())] == 1
        assert acked[("cluster_acks_skipped_total", one(reason="unknown assignment"))] == 1
        assert acked[("cluster_acks_skipped_total", one(reason="stale scheduler"))] == 1
        assert acked[("cluster_acks_skipped_total", one(reason="unknown worker"))] == 1
        assert acked[("cluster_reschedules_total", ())] == 1
        assert acked[("cluster_scheduler_queue_depth", ())] == 1
        assert acked[("cluster_workers", one(state="dead"))] == 1
        assert acked[("cluster_workers", one(state="alive"))] == 0
        assert not any(
            name == "cluster_worker_last_heartbeat_timestamp_seconds" for name, _ in acked
        )
        assert get(endpoint.port, "/healthz")[0] == 404  # only /metrics here
    finally:
        endpoint.close()
        storage.db.close()


def test_cluster_metrics_port_serves_a_running_cluster(tmp_path: Path) -> None:
    server, storage_port, scheduler_port, _ = serve_cluster(
        tmp_path, options=("--metrics-port", "0")
    )
    worker = WorkerProcess("worker", _worker_config(storage_port, scheduler_port), tmp_path)
    try:
        assert server.stdout is not None
        match = re.fullmatch(
            r"metrics on http://127\.0\.0\.1:(\d+)/metrics\n", server.stdout.readline()
        )
        assert match, "the metrics line follows the banner"
        port = int(match[1])
        job = _job_file(
            tmp_path / "one.yaml",
            [{"name": "a", "module": "cluster_tasks", "function": "echo", "inputs": [7]}],
        )
        done = run_command(["submit", str(job), "--port", str(storage_port), "--wait"], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr + worker.log_text()

        def acknowledged() -> bool:
            return scrape(port)[("cluster_acks_completed_total", ())] >= 1

        wait_for(acknowledged, 60, "the worker's acknowledgement")  # rides on its next poll
        samples = scrape(port)
        assert samples[("cluster_jobs", one(state="SUCCEEDED"))] == 1
        assert samples[("cluster_tasks", one(state="succeeded"))] == 1
        assert samples[("cluster_workers", one(state="alive"))] == 1
    finally:
        worker.close()
        assert stop_cluster(server) == 0


def test_a_taken_metrics_port_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "worker", "cluster", "--storage-port", "0"),
                *("--scheduler-port", "0", "--db", str(tmp_path / "c.db")),
                *("--metrics-port", str(port)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=worker_environment(),
            check=False,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"cluster: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
    )
