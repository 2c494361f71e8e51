"""End-to-end over loopback: real worker processes against the reference cluster (real clock).

Each test starts an embedded cluster with fast timings and worker subprocesses, bounds every wait,
and kills whatever is left at the end (asserting that nothing outlived its worker).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from tests.cluster.harness import E2E, TASKS_DIR, sleepy_job, wait_for
from worker.cluster.jobs import JobBuilder, TaskTimeouts, ref
from worker.cluster.processes import worker_environment
from worker.cluster.storage import JobState
from worker.examples.fibonacci_tasks import fibonacci
from worker.executor.wire import decode_graph_outputs

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _assert_each_succeeded_once(e2e: E2E, job_id: int) -> None:
    successes = e2e.successes(job_id)
    assert successes, "no task rows"
    assert set(successes.values()) == {1}, successes


def test_e1_local_runs_the_bundled_job_with_two_workers(tmp_path: Path) -> None:
    """E1: ``python -m worker local --workers 2`` prints a summary and exits 0."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "local",
            "--workers",
            "2",
            "--timeout",
            "120",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=worker_environment(),
        cwd=tmp_path,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "SUCCEEDED" in output
    assert str(sum(fibonacci(n) for n in range(20, 36))) in output
    assert "worker-1=0, worker-2=0" in output


def test_a_200_task_job_on_three_workers_succeeds_each_task_once(e2e: E2E) -> None:
    builder = JobBuilder("wide", package_dir=TASKS_DIR)
    for index in range(199):
        builder.task(f"t{index}", "cluster_tasks", "echo", [index])
    builder.task("sum", "cluster_tasks", "add", [ref(f"t{i}") for i in range(0, 199, 10)])
    for _ in range(3):
        e2e.start_worker()
    job_id = e2e.submit(builder.build())
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    _assert_each_succeeded_once(e2e, job_id)
    assert len(e2e.successes(job_id)) == 200
    outputs = decode_graph_outputs(e2e.cluster.storage.job_outputs(job_id))
    sinks = [msgpack.unpackb(p) for p in outputs]
    assert sinks[-1] == sum(range(0, 199, 10))
    # Every worker took part, and no acknowledgement went missing or was doubled.
    dispatched_to = {em for em, _ in e2e.cluster.scheduler.dispatch_log}
    assert dispatched_to == set(e2e.em_ids.values())
    assert list(e2e.cluster.scheduler.acks_skipped) == []


def test_commit_reads_zstd_job_outputs_and_cleanup_runs_after_cancel(e2e: E2E) -> None:
    """E4: commit with > 1024 output bytes (zstd); cleanup after a cancellation."""
    e2e.start_worker()
    job = (
        JobBuilder("commit", package_dir=TASKS_DIR)
        .task("a", "cluster_tasks", "blob", [800, "a"])
        .task("b", "cluster_tasks", "blob", [800, "b"])
        .with_commit("cluster_tasks", "commit_check")
        .build()
    )
    job_id = e2e.submit(job)
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    assert e2e.cluster.storage.job_outputs(job_id)[0] == 1
    wait_for(lambda: "commit-digest" in e2e.logs(), 30, "the commit task's log line")
    cancelled = e2e.submit(
        JobBuilder("cancel", package_dir=TASKS_DIR)
        .task("slow", "cluster_tasks", "sleepy", [30, 1], timeout=TaskTimeouts(40_000, 60_000))
        .with_cleanup("cluster_tasks", "cleanup")
        .build()
    )
    e2e.cluster.storage.cancel_job(cancelled)
    assert e2e.wait_job(cancelled) is JobState.CANCELLED


def test_failing_task_is_retried_then_a_task_without_retries_fails_the_job(
    e2e: E2E, tmp_path: Path
) -> None:
    e2e.start_worker()
    retried = e2e.submit(
        JobBuilder("retry", package_dir=TASKS_DIR)
        .task("flaky", "cluster_tasks", "fail_until", [str(tmp_path / "m"), 2, 5], retries=2)
        .build()
    )
    assert e2e.wait_job(retried) is JobState.SUCCEEDED
    (row,) = e2e.cluster.storage.task_rows(retried)
    assert (row.failures, row.successes, row.attempts) == (2, 1, 3)
    failed = e2e.submit(
        JobBuilder("fail", package_dir=TASKS_DIR)
        .task("bad", "cluster_tasks", "always_fail", retries=1)
        .build()
    )
    assert e2e.wait_job(failed) is JobState.FAILED
    error = e2e.cluster.storage.job_error(failed)
    assert error == "in-task failure: ValueError: this task always fails"
    assert e2e.cluster.storage.task_rows(failed)[0].failures == 2


def test_a_task_returning_the_wrong_number_of_outputs_fails_its_job_and_spends_retries(
    e2e: E2E,
) -> None:
    e2e.start_worker()
    # ``echo`` returns one value; the job declares two. Storage fails the instance; the
    # downstream task never runs, and the job ends instead of hanging.
    job_id = e2e.submit(
        JobBuilder("miscount", package_dir=TASKS_DIR)
        .task("pair", "cluster_tasks", "echo", [7], outputs=2, retries=1)
        .task("after", "cluster_tasks", "add", [ref("pair"), ref("pair", 1)])
        .build()
    )
    assert e2e.wait_job(job_id, timeout=60) is JobState.FAILED
    expected = "output count mismatch: task pair declared 2 outputs, returned 1"
    assert e2e.cluster.storage.job_error(job_id) == expected
    pair, after = e2e.cluster.storage.task_rows(job_id)
    assert (pair.state, pair.attempts, pair.failures, pair.successes) == ("failed", 2, 2, 0)
    assert after.attempts == 0
    assert e2e.cluster.storage.live_instances() == {}


def test_hard_timeout_kills_the_task_and_fails_it(e2e: E2E) -> None:
    e2e.start_worker()
    job_id = e2e.submit(
        JobBuilder("spin", package_dir=TASKS_DIR)
        .task("spin", "cluster_tasks", "spin", outputs=0, timeout=TaskTimeouts(200, 700))
        .build()
    )
    assert e2e.wait_job(job_id) is JobState.FAILED
    assert e2e.cluster.storage.job_error(job_id) == "hard timeout (700 ms) exceeded"
    # The worker survives and serves the next job.
    follow_up = e2e.submit(
        JobBuilder("after", package_dir=TASKS_DIR).task("e", "cluster_tasks", "echo", [1]).build()
    )
    assert e2e.wait_job(follow_up) is JobState.SUCCEEDED


@pytest.mark.parametrize("phase", ["polling", "registering", "executing", "reporting"])
def test_sigkill_at_any_point_of_the_cycle_loses_nothing(e2e: E2E, phase: str) -> None:
    """A worker SIGKILLed mid-cycle: the job still succeeds, every task exactly once."""
    hooks = e2e.cluster.storage_server.hooks
    victim, victim_id = e2e.start_worker()
    if phase == "polling":
        # The victim holds an unacked assignment while its next poll is in flight.
        e2e.cluster.scheduler_server.hooks.delay_always("NextTask", 0.5)
    elif phase == "registering":
        hooks.delay_always("RegisterTaskInstance", 1.0)
    elif phase == "reporting":
        hooks.delay_always("ReportTaskSuccess", 1.0)
    job_id = e2e.submit(sleepy_job(6, 0.3).build())
    if phase == "polling":
        wait_for(lambda: e2e.successes(job_id).get("index:0") == 1, 60, "a first success")
        wait_for(
            lambda: any(e2e.cluster.scheduler.outstanding().get(victim_id, [])),
            30,
            "an outstanding assignment",
        )
    elif phase == "registering":
        wait_for(lambda: hooks.calls["RegisterTaskInstance"] >= 1, 60, "a registration")
    elif phase == "executing":
        wait_for(lambda: bool(e2e.instances_of(victim_id)), 60, "an executing task")
    else:
        wait_for(lambda: hooks.calls["ReportTaskSuccess"] >= 1, 60, "a report")
    victim.signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    e2e.cluster.scheduler_server.hooks.clear()
    hooks.clear()
    e2e.start_worker()
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED, e2e.logs()
    _assert_each_succeeded_once(e2e, job_id)
    wait_for(
        lambda: victim_id not in e2e.cluster.scheduler.outstanding(), 30, "the victim's removal"
    )
    assert {row.id: row.state for row in e2e.cluster.storage.db.ems()}[victim_id] == "dead"


def test_sigterm_drains_a_worker_mid_job_without_losing_outcomes_or_acks(e2e: E2E) -> None:
    drained, drained_id = e2e.start_worker()
    e2e.start_worker()
    job_id = e2e.submit(sleepy_job(8, 0.5).build())
    wait_for(lambda: bool(e2e.instances_of(drained_id)), 60, "the drained worker to execute")
    (instance,) = e2e.instances_of(drained_id)
    drained.signal(signal.SIGTERM)
    assert drained.wait(60) == 0, drained.log_text()
    # Its running task was finished and reported, not abandoned.
    assert instance not in e2e.cluster.storage.live_instances()
    # Shutdown carried its pending acks: nothing of it was left outstanding or rescheduled.
    assert drained_id not in e2e.cluster.scheduler.outstanding()
    assert [a for em, a in e2e.cluster.scheduler.reschedule_log if em == drained_id] == []
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED
    _assert_each_succeeded_once(e2e, job_id)


def test_storage_restart_mid_job_bumps_the_session_and_the_job_succeeds(e2e: E2E) -> None:
    """E2: workers learn the new session, drop stale work, and the job completes."""
    first, _ = e2e.start_worker()
    second, _ = e2e.start_worker()
    job_id = e2e.submit(sleepy_job(10, 0.3).build())
    wait_for(lambda: sum(e2e.successes(job_id).values()) >= 3, 60, "some progress")
    old_session = e2e.cluster.storage.session_id
    with e2e.cluster.storage.exclusive():  # no report lands between the snapshot and the restart
        before = e2e.successes(job_id)
        assert e2e.cluster.restart_storage() == old_session + 1
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED, e2e.logs()
    assert first.poll() is None
    assert second.poll() is None
    # The restart re-ran the job from scratch: every task succeeded exactly once more, in the
    # new session (the durable counters keep the old session's successes too).
    after = e2e.successes(job_id)
    assert {task: after[task] - before.get(task, 0) for task in after} == dict.fromkeys(after, 1)


def test_scheduler_restart_mid_job_workers_back_off_and_carry_on(e2e: E2E) -> None:
    first, _ = e2e.start_worker()
    second, _ = e2e.start_worker()
    job_id = e2e.submit(sleepy_job(10, 0.3).build())
    wait_for(lambda: sum(e2e.successes(job_id).values()) >= 3, 60, "some progress")
    old_id = e2e.cluster.scheduler.scheduler_id
    assert e2e.cluster.restart_scheduler() > old_id
    assert e2e.wait_job(job_id) is JobState.SUCCEEDED, e2e.logs()
    assert first.poll() is None
    assert second.poll() is None
    _assert_each_succeeded_once(e2e, job_id)
    # Acks of the old scheduler's assignments are skipped as stale, never counted as completed.
    assert all(s.reason == "stale scheduler" for s in e2e.cluster.scheduler.acks_skipped)


def test_e3_mark_dead_kills_the_running_task_and_the_worker_exits_4(e2e: E2E) -> None:
    victim, victim_id = e2e.start_worker()
    job_id = e2e.submit(
        JobBuilder("long", package_dir=TASKS_DIR)
        .task("long", "cluster_tasks", "sleepy", [60, 1], timeout=TaskTimeouts(90_000, 120_000))
        .build()
    )
    wait_for(lambda: bool(e2e.instances_of(victim_id)), 60, "the task to start")
    e2e.cluster.storage.mark_dead(victim_id)
    assert victim.wait(30) == 4, victim.log_text()
    (row,) = e2e.cluster.storage.task_rows(job_id)
    # Killed without a report; the task is back in the queue for someone else.
    assert (row.successes, row.failures, row.state) == (0, 0, "ready")
    e2e.cluster.storage.cancel_job(job_id)
