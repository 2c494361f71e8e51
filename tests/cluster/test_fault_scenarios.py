"""The protocol.md §10 scenarios against the reference cluster, with real worker processes:
idle polling, storage restart seen first by a heartbeat / an assignment / ``NOT_FOUND``,
``FAILED_PRECONDITION`` on registration, outages of either server, crashes, a second signal and
an expired drain deadline."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import E2E, TASKS_DIR, sleepy_job, wait_for
from worker.cluster.jobs import JobBuilder, TaskTimeouts
from worker.cluster.servers import Delay, Fail, FaultHooks
from worker.cluster.storage import JobState, Lane
from worker.errors import StatusCode

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Heartbeats so slow that, within a test, the worker learns nothing from them after boot.
SILENT_LIVENESS = {
    "liveness": {"storage_heartbeat_interval_sec": 60, "scheduler_heartbeat_interval_sec": 0.1}
}


class Requests:
    """Records every request an observed server answered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, Any, Any]] = []

    def __call__(self, rpc: str, request: Any, response: Any, started: float, done: float) -> None:
        with self.lock:
            self.seen.append((rpc, request, response))

    def of(self, rpc: str) -> list[tuple[Any, Any]]:
        with self.lock:
            return [(req, resp) for name, req, resp in self.seen if name == rpc]


def _one_task(name: str, function: str = "echo", inputs: list[object] | None = None) -> JobBuilder:
    return JobBuilder(name, package_dir=TASKS_DIR).task(
        "t", "cluster_tasks", function, [1] if inputs is None else inputs
    )


def test_idle_worker_polls_repeatedly_without_repeating_a_record(e2e: E2E) -> None:
    requests = Requests()
    e2e.cluster.scheduler_server.hooks.observer = requests
    worker, _ = e2e.start_worker()
    job_id = e2e.submit(_one_task("first").build())
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    wait_for(lambda: len(requests.of("NextTask")) >= 8, 60, "several idle polls")
    polls = requests.of("NextTask")
    carried = [req for req, _ in polls if req.HasField("prev_assignment")]
    # The one assignment is acked exactly once; every other poll carries nothing.
    assert len(carried) == 1
    assert [r.wait_time_ms for r, _ in polls] == [200] * len(polls)
    assert sum(1 for _, resp in polls if resp.WhichOneof("result") == "no_task") >= 6
    assert list(e2e.cluster.scheduler.acks_skipped) == []
    assert worker.poll() is None


def test_storage_restart_seen_first_by_a_heartbeat(e2e: E2E) -> None:
    requests = Requests()
    e2e.cluster.storage_server.hooks.observer = requests
    e2e.start_worker()
    new_session = e2e.cluster.restart_storage()
    wait_for(
        lambda: any(
            resp.session_id == new_session
            for _, resp in requests.of("UpdateExecutionManagerHeartbeat")
        ),
        30,
        "a heartbeat reply with the new session",
    )
    job_id = e2e.submit(_one_task("after-restart").build())
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    (register, _), *_ = requests.of("RegisterTaskInstance")
    assert register.session_id == new_session


def test_storage_restart_seen_first_by_an_assignment(e2e: E2E) -> None:
    requests = Requests()
    e2e.cluster.storage_server.hooks.observer = requests
    worker, _ = e2e.start_worker(**SILENT_LIVENESS)
    wait_for(lambda: bool(requests.of("UpdateExecutionManagerHeartbeat")), 30, "first heartbeat")
    heartbeats_before = len(requests.of("UpdateExecutionManagerHeartbeat"))
    new_session = e2e.cluster.restart_storage()
    job_id = e2e.submit(_one_task("new-session-assignment").build())
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    # A newer session in an assignment triggers a refresh heartbeat; registration uses it.
    assert len(requests.of("UpdateExecutionManagerHeartbeat")) > heartbeats_before
    assert [req.session_id for req, _ in requests.of("RegisterTaskInstance")] == [new_session]
    assert worker.poll() is None


def test_storage_restart_seen_first_by_not_found(e2e: E2E) -> None:
    hooks = e2e.cluster.storage_server.hooks
    requests = Requests()
    hooks.observer = requests
    e2e.start_worker(**SILENT_LIVENESS)
    hooks.script("RegisterTaskInstance", Delay(1.0))
    job_id = e2e.submit(_one_task("stale").build())
    wait_for(lambda: hooks.calls["RegisterTaskInstance"] >= 1, 60, "the delayed registration")
    old_session = e2e.cluster.storage.session_id
    e2e.cluster.restart_storage()
    # The delayed registration carries the old session: NOT_FOUND, the worker refreshes,
    # acks and drops it; the restarted job runs from scratch in the new session.
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    sessions = [req.session_id for req, _ in requests.of("RegisterTaskInstance")]
    assert sessions[-1] == old_session + 1
    assert old_session not in sessions  # the old-session call never completed OK
    assert hooks.calls["RegisterTaskInstance"] == 2
    stale_ack = e2e.cluster.scheduler.dispatch_log[0][1].id
    assert stale_ack in {a.assignment_id for a in e2e.cluster.scheduler.acks_completed}


def test_failed_precondition_on_registration_is_acked_and_dropped(e2e: E2E) -> None:
    hooks = e2e.cluster.storage_server.hooks
    hooks.script("RegisterTaskInstance", Fail(StatusCode.FAILED_PRECONDITION, "task is terminal"))
    worker, em_id = e2e.start_worker()
    job_id = e2e.submit(_one_task("dropped").build())
    wait_for(lambda: bool(e2e.cluster.scheduler.dispatch_log), 30, "the dispatch")
    delivered = e2e.cluster.scheduler.dispatch_log[0][1]
    wait_for(
        lambda: delivered.id in {a.assignment_id for a in e2e.cluster.scheduler.acks_completed},
        30,
        "the ack of the dropped assignment",
    )
    # Not executed: no instance, no report; the worker carries on.
    assert e2e.cluster.storage.live_instances() == {}
    assert e2e.cluster.storage.task_rows(job_id)[0].attempts == 0
    assert worker.poll() is None
    assert e2e.cluster.scheduler.outstanding()[em_id] == []
    e2e.cluster.storage.cancel_job(job_id)


def test_executor_crash_is_reported_with_its_exit_status(e2e: E2E) -> None:
    e2e.start_worker()
    job_id = e2e.submit(_one_task("crash", "crash", [3]).build())
    assert e2e.wait_job(job_id) is JobState.FAILED
    assert e2e.cluster.storage.job_error(job_id) == "executor crashed (exit_status = 3)"
    follow_up = e2e.submit(_one_task("after-crash").build())
    assert e2e.wait_job(follow_up) is JobState.SUCCEEDED


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[E2E]:
    """A cluster whose reaper waits 15 s: a short outage must not get the worker evicted."""
    harness = E2E(tmp_path, stale_cutoff_sec=15.0)
    try:
        yield harness
    finally:
        harness.close()
        assert not [w.name for w in harness.workers if w.leftovers()]


def test_storage_outage_loses_no_report(patient: E2E) -> None:
    e2e = patient
    worker, em_id = e2e.start_worker()
    job_id = e2e.submit(sleepy_job(6, 0.4, "outage").build())
    wait_for(lambda: bool(e2e.instances_of(em_id)), 60, "a running task")
    e2e.cluster.storage_outage(1.5)
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED, e2e.logs()
    assert set(e2e.successes(job_id).values()) == {1}
    assert all(row.failures == 0 for row in e2e.cluster.storage.task_rows(job_id))
    assert worker.poll() is None


def test_after_a_long_storage_restart_live_workers_stay_and_a_dead_one_is_reaped(
    e2e: E2E,
) -> None:
    cutoff = 2.0  # the e2e harness's stale cutoff
    survivor, survivor_id = e2e.start_worker()
    victim, victim_id = e2e.start_worker()
    victim.signal(signal.SIGKILL)
    assert victim.wait(30) is not None
    # Storage is down longer than the cutoff, then comes back in a new session.
    e2e.cluster.storage_outage(cutoff + 1.0, restart=True)
    restarted = time.monotonic()

    def state(em_id: int) -> str:
        row = e2e.cluster.storage.db.em(em_id)
        assert row is not None
        return row.state

    wait_for(lambda: state(victim_id) == "dead", 30, "the dead worker to be reaped")
    # The survivor is judged from the restart: still registered two cutoffs later.
    wait_for(lambda: time.monotonic() >= restarted + 2 * cutoff, 30, "two cutoffs")
    assert state(survivor_id) == "alive", e2e.logs()
    assert survivor.poll() is None
    job_id = e2e.submit(_one_task("after-restart").build())
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED


def test_scheduler_outage_loses_no_record_and_workers_carry_on(patient: E2E) -> None:
    e2e = patient
    worker, _ = e2e.start_worker()
    job_id = e2e.submit(sleepy_job(6, 0.3, "outage").build())
    wait_for(lambda: sum(e2e.successes(job_id).values()) >= 2, 60, "some progress")
    e2e.cluster.restart_scheduler(downtime_sec=1.5)
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED, e2e.logs()
    assert set(e2e.successes(job_id).values()) == {1}
    assert worker.poll() is None


def test_second_signal_mid_task_forces_exit_3_without_an_outcome(e2e: E2E) -> None:
    victim, em_id = e2e.start_worker()
    job_id = e2e.submit(
        _one_task("forced", "sleepy", [30, 1]).task("u", "cluster_tasks", "echo", [2]).build()
    )
    wait_for(lambda: bool(e2e.instances_of(em_id)), 60, "the long task to start")
    victim.signal(signal.SIGTERM)
    # A second signal sent before the first is handled could be coalesced with it.
    wait_for(lambda: "stop requested: draining" in victim.log_text(), 30, "the drain to start")
    victim.signal(signal.SIGTERM)
    assert victim.wait(30) == 3, victim.log_text()
    rows = {row.task: row for row in e2e.cluster.storage.task_rows(job_id)}
    assert rows["index:0"].failures == 0
    assert rows["index:0"].successes == 0
    # Its record went out in Shutdown: nothing of it stays outstanding at the scheduler.
    assert em_id not in e2e.cluster.scheduler.outstanding()
    assert [a for em, a in e2e.cluster.scheduler.reschedule_log if em == em_id] == []
    e2e.cluster.storage.cancel_job(job_id)


def test_drain_deadline_expiry_forces_exit_3(e2e: E2E) -> None:
    victim, em_id = e2e.start_worker(shutdown={"drain_timeout_sec": 0.5})
    job_id = e2e.submit(
        JobBuilder("deadline", package_dir=TASKS_DIR)
        .task("t", "cluster_tasks", "sleepy", [30, 1], timeout=TaskTimeouts(40_000, 60_000))
        .build()
    )
    wait_for(lambda: bool(e2e.instances_of(em_id)), 60, "the long task to start")
    started = time.monotonic()
    victim.signal(signal.SIGTERM)
    assert victim.wait(30) == 3, victim.log_text()
    assert time.monotonic() - started < 25
    assert e2e.cluster.storage.task_rows(job_id)[0].successes == 0
    # Storage reaps the silent worker and re-enqueues the task without spending a retry.
    wait_for(
        lambda: e2e.cluster.storage.task_rows(job_id)[0].state == "ready", 30, "the re-enqueue"
    )
    assert e2e.cluster.storage.task_rows(job_id)[0].failures == 0
    e2e.cluster.storage.cancel_job(job_id)


def _assert_backoff_gaps(hooks: FaultHooks, rpc: str, failures: int) -> None:
    """After the n-th consecutive failure, the next attempt waits at least
    (1 - jitter) x min(cap, initial x 2^n), with jitter 0.2, initial 0.1 s, cap 2 s."""
    wait_for(lambda: len(hooks.failed_call_times[rpc]) == failures, 30, f"{rpc} failures")
    failed = hooks.failed_call_times[rpc]
    wait_for(lambda: hooks.call_times[rpc][-1] > failed[-1], 30, f"{rpc} retried")
    retry = min(t for t in hooks.call_times[rpc] if t > failed[-1])
    gaps = [later - earlier for earlier, later in itertools.pairwise([*failed, retry])]
    for n, gap in enumerate(gaps):
        floor = 0.8 * min(2.0, 0.1 * 2**n)
        assert gap >= floor - 0.005, f"{rpc}: gap {n} = {gap:.3f} s < {floor:.3f} s: {gaps}"


def test_transient_errors_everywhere_back_off_and_lose_nothing(e2e: E2E) -> None:
    """No hot loop, no lost record, no lost report (protocol.md §10 outage scenarios)."""
    scheduler_hooks = e2e.cluster.scheduler_server.hooks
    storage_hooks = e2e.cluster.storage_server.hooks
    worker, em_id = e2e.start_worker()
    wait_for(lambda: scheduler_hooks.calls["NextTask"] >= 1, 30, "the first poll")
    unavailable = Fail(StatusCode.UNAVAILABLE, "scripted outage")
    scheduler_hooks.script("NextTask", *[unavailable] * 4)
    storage_hooks.script("RegisterTaskInstance", *[unavailable] * 3)
    storage_hooks.script("ReportTaskSuccess", *[unavailable] * 3)
    job_id = e2e.submit(_one_task("flaky-network").build())
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED, e2e.logs()
    _assert_backoff_gaps(scheduler_hooks, "NextTask", 4)
    _assert_backoff_gaps(storage_hooks, "RegisterTaskInstance", 3)
    _assert_backoff_gaps(storage_hooks, "ReportTaskSuccess", 3)
    assert storage_hooks.calls["RegisterTaskInstance"] == 4
    assert storage_hooks.calls["ReportTaskSuccess"] == 4
    (row,) = e2e.cluster.storage.task_rows(job_id)
    assert (row.attempts, row.successes, row.failures) == (1, 1, 0)
    # The consumed assignment's record reaches the scheduler despite the failed polls.
    (delivered,) = [a for em, a in e2e.cluster.scheduler.dispatch_log if em == em_id]
    wait_for(
        lambda: delivered.id in {a.assignment_id for a in e2e.cluster.scheduler.acks_completed},
        30,
        "the ack",
    )
    assert worker.poll() is None


def test_e2_an_old_session_assignment_is_acked_without_a_storage_call(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E2's race: the worker learned the new session from a heartbeat before the scheduler did."""
    storage, scheduler = e2e.cluster.storage, e2e.cluster.scheduler
    requests = Requests()
    e2e.cluster.storage_server.hooks.observer = requests
    worker, _ = e2e.start_worker()
    old_session = storage.session_id
    # Freeze the scheduler's inbound pump: it keeps its session and receives nothing.
    pump_frozen = threading.Event()
    pump_frozen.set()
    real_poll = storage.poll_ready

    gated = threading.Event()

    def gated_poll(lanes: tuple[Lane, ...], max_items: int, wait: float) -> Any:
        if pump_frozen.is_set():
            gated.set()
            time.sleep(0.01)
            return scheduler.session_id, []
        return real_poll(lanes, max_items, wait)

    monkeypatch.setattr(storage, "poll_ready", gated_poll)
    wait_for(gated.is_set, 30, "the pump to leave its last real poll")
    job_id = e2e.submit(_one_task("e2-race").build())
    _, (entry,) = real_poll(tuple(Lane), 10, 0)  # what the scheduler would have pulled
    new_session = e2e.cluster.restart_storage()
    # The worker logs this in the same step that advances its tracker (a reply seen by the
    # server may not have been applied yet).
    wait_for(
        lambda: "storage session advanced" in worker.log_text(),
        30,
        "the worker to learn the new session from a heartbeat",
    )
    assert scheduler.session_id == old_session
    scheduler.accept(old_session, [entry])
    wait_for(lambda: bool(scheduler.dispatch_log), 30, "the old-session dispatch")
    stale = scheduler.dispatch_log[0][1]
    assert stale.session_id == old_session
    wait_for(
        lambda: stale.id in {a.assignment_id for a in scheduler.acks_completed},
        30,
        "the ack of the old-session assignment",
    )
    pump_frozen.clear()
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    # Dropped without a storage call: the one registration that arrived carries the new session
    # (the observer sees answered calls only; ``calls`` counts every arrival).
    assert e2e.cluster.storage_server.hooks.calls["RegisterTaskInstance"] == 1
    assert [req.session_id for req, _ in requests.of("RegisterTaskInstance")] == [new_session]
    assert worker.poll() is None
