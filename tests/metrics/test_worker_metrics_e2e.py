"""A real worker with ``metrics`` set against the reference cluster, scraped over HTTP.

Everything runs on the real clock: each wait polls with a deadline (``wait_for``) and every
value is read by ``prometheus_client``'s own text parser.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import BOOT_TIMEOUT, E2E, TASKS_DIR, wait_for
from tests.metrics.scraping import Samples, get, scrape, slot_states
from worker.cluster.jobs import JobBuilder, TaskTimeouts
from worker.cluster.processes import WorkerProcess, logged_metrics_port, worker_environment
from worker.cluster.storage import JobState
from worker.metrics.faults import BLOCK_LOOP_VARIABLE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LOOPBACK_ANY_PORT = {"host": "127.0.0.1", "port": 0}


def metrics_port(log: Path) -> int | None:
    """The ``metrics_port`` field of the worker's "metrics endpoint serving" line, if logged."""
    return logged_metrics_port(log.read_text(encoding="utf-8", errors="replace"))


def wait_metrics_port(log: Path) -> int:
    found: list[int] = []

    def logged() -> bool:
        port = metrics_port(log)
        if port is not None:
            found.append(port)
        return bool(found)

    wait_for(logged, BOOT_TIMEOUT, "the metrics endpoint to be logged")
    return found[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def finished(samples: Samples, outcome: str) -> float:
    return value(samples, "worker_tasks_finished_total", outcome=outcome)


def status(port: int, path: str) -> int:
    return get(port, path)[0]


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    harness = E2E(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def test_values_move_before_during_and_after_jobs(e2e: E2E) -> None:
    worker, _em_id = e2e.start_worker(metrics=LOOPBACK_ANY_PORT)
    port = wait_metrics_port(worker.log_path)
    # Storage stored the registration before its answer reached the worker: wait for it.
    wait_for(lambda: status(port, "/readyz") == 200, 10, "/readyz to answer 200")
    before = scrape(port)
    assert value(before, "worker_assignments_received_total") == 0
    assert all(finished(before, o) == 0 for o in ("succeeded", "failed", "timed_out", "crashed"))
    assert value(before, "worker_session") >= 1
    assert value(before, "worker_id") >= 1
    assert value(before, "worker_ready") == 1
    assert status(port, "/healthz") == 200

    slow = e2e.submit(
        JobBuilder("slow", package_dir=TASKS_DIR)
        .task("nap", "cluster_tasks", "sleepy", [2.0, 1])
        .build()
    )
    during: list[Samples] = []

    def busy() -> bool:
        during[:] = [scrape(port)]
        return value(during[0], "worker_slots_busy") == 1

    wait_for(busy, 30, "a busy slot while the task sleeps")
    assert value(during[0], "worker_assignments_received_total") >= 1
    assert e2e.wait_job(slow) is JobState.SUCCEEDED

    failing = [
        JobBuilder("fails", package_dir=TASKS_DIR).task("bad", "cluster_tasks", "always_fail"),
        JobBuilder("crashes", package_dir=TASKS_DIR).task("dies", "cluster_tasks", "crash", [3]),
        JobBuilder("spins", package_dir=TASKS_DIR).task(
            "spin", "cluster_tasks", "spin", outputs=0, timeout=TaskTimeouts(200, 700)
        ),
    ]
    for job in failing:
        assert e2e.wait_job(e2e.submit(job.build())) is JobState.FAILED

    after: list[Samples] = []

    def settled() -> bool:
        # The idle worker's next polls carry the last record; then nothing is pending.
        after[:] = [scrape(port)]
        samples = after[0]
        received = value(samples, "worker_assignments_received_total")
        return (
            value(samples, "worker_records_pending") == 0
            and value(samples, "worker_records_acknowledged_total") == received
            and value(samples, "worker_slots_busy") == 0
        )

    wait_for(settled, 30, "every record to be acknowledged")
    samples = after[0]
    assert finished(samples, "succeeded") >= 1  # the nap (commit/cleanup tasks may add more)
    assert finished(samples, "failed") == 1
    assert finished(samples, "crashed") == 1
    assert finished(samples, "timed_out") == 1
    total = sum(finished(samples, o) for o in ("succeeded", "failed", "timed_out", "crashed"))
    assert value(samples, "worker_assignments_received_total") >= total
    assert value(samples, "worker_reports_sent_total") == total
    assert value(samples, "worker_report_retries_total") == 0
    assert value(samples, "worker_reports_dropped_total") == 0
    assert value(samples, "worker_task_duration_seconds_count", outcome="succeeded") == finished(
        samples, "succeeded"
    )
    assert value(samples, "worker_task_duration_seconds_sum", outcome="succeeded") >= 2.0
    assert value(samples, "worker_task_duration_seconds_sum", outcome="timed_out") >= 0.7
    assert value(samples, "worker_heartbeat_failures_total", loop="storage") == 0

    # Drain: readiness ends at the signal, while the running task still holds the worker.
    long = e2e.submit(
        JobBuilder("drained", package_dir=TASKS_DIR)
        .task("nap", "cluster_tasks", "sleepy", [5.0, 1])  # long enough to watch the drain
        .build()
    )
    wait_for(lambda: value(scrape(port), "worker_slots_busy") == 1, 30, "the task to start")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: status(port, "/readyz") == 503, 10, "/readyz to answer 503 in the drain")
    assert worker.poll() is None, "the drain should still be waiting for the task"
    assert status(port, "/healthz") == 200  # draining is healthy
    assert worker.wait(60) == 0
    assert e2e.wait_job(long) is JobState.SUCCEEDED


def test_two_slots_two_long_tasks_per_slot_series_and_assignments(e2e: E2E) -> None:
    worker, _em_id = e2e.start_worker(metrics=LOOPBACK_ANY_PORT, slots=2)
    port = wait_metrics_port(worker.log_path)
    wait_for(lambda: status(port, "/readyz") == 200, 10, "/readyz to answer 200")
    before = scrape(port)
    assert value(before, "worker_slots") == 2
    for slot in ("0", "1"):  # every state of every slot is a series of its own
        for state in ("Idle", "Awaiting", "Registering", "Executing", "Draining", "Stopped"):
            assert ("worker_slot_state", (("slot", slot), ("state", state))) in before
    # Both slots poll (a scrape may fall between the moves of one empty answer: Idle).
    assert set(slot_states(before, 2)) <= {"Idle", "Awaiting"}
    acknowledged_before = value(before, "worker_records_acknowledged_total")

    naps = [
        e2e.submit(
            JobBuilder(f"nap{n}", package_dir=TASKS_DIR)
            .task("nap", "cluster_tasks", "sleepy", [3.0, n])
            .build()
        )
        for n in (1, 2)
    ]
    during: list[Samples] = []

    def both_busy() -> bool:
        during[:] = [scrape(port)]
        executing = slot_states(during[0], 2) == ["Executing", "Executing"]
        return executing and value(during[0], "worker_slots_busy") == 2

    wait_for(both_busy, 30, "both slots busy, executing the two sleeping tasks")
    code, content_type, body = get(port, "/assignments")
    assert (code, content_type) == (200, "application/json")
    held = json.loads(body)["slots"]
    assert [slot["slot"] for slot in held] == [0, 1]
    assert all(slot["state"] == "Executing" and slot["assignment"] for slot in held)
    assert held[0]["assignment"] != held[1]["assignment"]

    for job in naps:
        assert e2e.wait_job(job) is JobState.SUCCEEDED
    after: list[Samples] = []

    def acknowledged() -> bool:
        after[:] = [scrape(port)]
        samples = after[0]
        return (
            value(samples, "worker_records_pending") == 0
            and value(samples, "worker_slots_busy") == 0
            and value(samples, "worker_records_acknowledged_total") >= acknowledged_before + 2
        )

    wait_for(acknowledged, 30, "both records to be acknowledged")
    reply = json.loads(get(port, "/assignments")[2])
    assert [slot["slot"] for slot in reply["slots"]] == [0, 1]
    recent = {item["assignment"]: item for item in reply["recent"]}
    for slot in held:  # the two naps' stories, from arrival to acknowledgement
        item = recent[slot["assignment"]]
        events = [entry["event"] for entry in item["story"]]
        assert events[0] == "received", events
        assert "Executing -> OutcomeReported" in events, events
        assert item["state"] == "Acknowledged", item
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0


def test_not_ready_while_storage_cannot_be_reached(tmp_path: Path) -> None:
    """Before registration the probe answers 503: here registration cannot happen at all."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unreachable = closed.getsockname()[1]  # bound, never listening: connections refused
        config = {
            "storage": {"host": "127.0.0.1", "port": unreachable},
            "scheduler": {"host": "127.0.0.1", "port": unreachable},
            "connection_pool_size": 1,
            "scheduler_poll_wait_ms": 200,
            "liveness": {
                "storage_heartbeat_interval_sec": 1,
                "scheduler_heartbeat_interval_sec": 1,
            },
            "task_executor": {"package_dir": str(TASKS_DIR)},
            "grpc": {"rpc_timeout_sec": 30},
            "metrics": LOOPBACK_ANY_PORT,
            "log": {"format": "json", "level": "info"},
        }
        worker = WorkerProcess("unreachable", config, tmp_path)
        try:
            wait_for(
                lambda: "connecting" in worker.log_text() or worker.poll() is not None,
                BOOT_TIMEOUT,
                "the worker to connect",
            )
            assert worker.poll() is None, worker.log_text()
            port = wait_metrics_port(worker.log_path)
            assert status(port, "/readyz") == 503
            assert status(port, "/healthz") == 200  # an outage is not unhealthy
            samples = scrape(port)
            assert value(samples, "worker_ready") == 0
            assert value(samples, "worker_id") == 0
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0  # a signal during boot: exit 0, nothing registered
        finally:
            worker.close()


def test_a_blocked_event_loop_flips_healthz_and_back(tmp_path: Path) -> None:
    """The fault hook blocks the trio loop for 12 s after registration (watchdog limit 10 s)."""
    e2e = E2E(tmp_path, stale_cutoff_sec=60.0)  # storage must not reap the blocked worker
    config_path = tmp_path / "blocked.yaml"
    config_path.write_text(yaml.safe_dump(e2e.config(metrics=LOOPBACK_ANY_PORT)))
    log_path = tmp_path / "blocked.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**worker_environment(), BLOCK_LOOP_VARIABLE: "12"},
            cwd=tmp_path,
        )
    try:
        port = wait_metrics_port(log_path)
        wait_for(
            lambda: "test hook: blocking the event loop" in log_path.read_text(),
            BOOT_TIMEOUT,
            "the loop to block",
        )
        assert status(port, "/readyz") == 200  # registered; the block is not a drain
        reasons: list[str] = []

        def stuck() -> bool:
            code, _type, body = get(port, "/healthz")
            reasons[:] = [body]
            return code == 503

        wait_for(stuck, 30, "/healthz to report the stuck loop")
        assert "event loop is stuck" in reasons[0]
        assert "worker_assignments_received_total" in get(port, "/metrics")[2]  # still served
        wait_for(lambda: status(port, "/healthz") == 200, 30, "/healthz to recover")
        assert "test hook: event loop unblocked" in log_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        e2e.close()
