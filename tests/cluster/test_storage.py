"""The storage engine alone (no gRPC): protocol.md §8 check orders, retries, reaping, recovery."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zstandard

from worker.cluster.db import Database, EmRow
from worker.cluster.jobs import JobBuilder, TaskTimeouts, ref
from worker.cluster.storage import (
    JobState,
    Lane,
    ReadyTask,
    StorageEngine,
    StorageFault,
    StorageSettings,
)
from worker.errors import StatusCode
from worker.executor.wire import decode_frame, decode_graph_outputs, encode_frame
from worker.model import TaskId


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _frame(*values: object) -> bytes:
    return encode_frame([msgpack.packb(v) for v in values])


def _engine(path: Path | str = ":memory:", clock: Clock | None = None) -> StorageEngine:
    return StorageEngine(
        Database(path),
        StorageSettings(execution_manager_stale_cutoff_sec=1.0, terminated_job_retention_sec=5),
        clock=clock or Clock(),
    )


def _drain(engine: StorageEngine) -> list[ReadyTask]:
    return engine.poll_ready(tuple(Lane), 1000, 0)[1]


def _chain_job(retries: int = 0) -> JobBuilder:
    return (
        JobBuilder("chain")
        .task("a", "m", "f", [1], retries=retries)
        .task("b", "m", "g", [ref("a"), 2])
    )


def _fault(call: object, *args: object) -> StorageFault:
    assert callable(call)
    with pytest.raises(StorageFault) as caught:
        call(*args)
    return caught.value


def test_sessions_are_new_per_start_and_restart(tmp_path: Path) -> None:
    first = _engine(tmp_path / "db.sqlite")
    assert first.session_id >= 1
    restarted = first.restart()
    assert restarted == first.session_id
    first.db.close()
    second = _engine(tmp_path / "db.sqlite")
    assert second.session_id == restarted + 1


def test_worker_registration_and_heartbeat_errors() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    assert session == engine.session_id
    assert engine.register_execution_manager("::1")[0] == em_id + 1
    assert _fault(engine.register_execution_manager, "nope").code is StatusCode.INVALID_ARGUMENT
    assert engine.heartbeat(em_id) == session
    assert _fault(engine.heartbeat, 999).code is StatusCode.INVALID_ARGUMENT
    engine.mark_dead(em_id)
    assert _fault(engine.heartbeat, em_id).code is StatusCode.FAILED_PRECONDITION


def test_happy_chain_passes_outputs_to_children_and_sets_job_outputs() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job().build())
    assert _drain(engine) == [ReadyTask(engine.default_group_id, job_id, TaskId.of_index(0))]
    context = engine.register_task_instance(job_id, TaskId.of_index(0), em_id, session)
    assert decode_frame(context.serialized_task_io) == [msgpack.packb(1)]
    assert (context.soft_timeout_ms, context.hard_timeout_ms) == (150_000, 300_000)
    engine.report_success(job_id, TaskId.of_index(0), context.task_instance_id, session, _frame(7))
    assert [e.task_id for e in _drain(engine)] == [TaskId.of_index(1)]
    context = engine.register_task_instance(job_id, TaskId.of_index(1), em_id, session)
    assert decode_frame(context.serialized_task_io) == [msgpack.packb(7), msgpack.packb(2)]
    engine.report_success(job_id, TaskId.of_index(1), context.task_instance_id, session, _frame(9))
    assert engine.job_state(job_id) is JobState.SUCCEEDED
    assert decode_graph_outputs(engine.job_outputs(job_id)) == [msgpack.packb(9)]
    rows = engine.task_rows(job_id)
    assert [(r.task, r.state, r.successes) for r in rows] == [
        ("index:0", "succeeded", 1),
        ("index:1", "succeeded", 1),
    ]


def test_register_task_instance_check_order() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job().build())
    index0 = TaskId.of_index(0)
    register = engine.register_task_instance
    assert _fault(register, job_id, None, em_id, session).code is StatusCode.INVALID_ARGUMENT
    stale = _fault(register, job_id, index0, em_id, session + 5)
    assert stale.code is StatusCode.NOT_FOUND
    assert stale.message == f"stale session; current storage session is {session}"
    missing = _fault(register, 999, index0, em_id, session)
    assert missing.code is StatusCode.FAILED_PRECONDITION
    assert missing.message.startswith("cache stale: job not found in cache")
    assert _fault(register, job_id, TaskId.commit(), em_id, session).code is StatusCode.INTERNAL
    out_of_range = _fault(register, job_id, TaskId.of_index(5), em_id, session)
    assert out_of_range.code is StatusCode.INTERNAL
    assert out_of_range.message == "storage service internal error"
    not_ready = _fault(register, job_id, TaskId.of_index(1), em_id, session)
    assert not_ready.code is StatusCode.INTERNAL
    assert _fault(register, job_id, index0, 999, session).code is StatusCode.INTERNAL
    register(job_id, index0, em_id, session)
    limit = _fault(register, job_id, index0, em_id, session)
    assert limit.code is StatusCode.FAILED_PRECONDITION
    # A job that is registered but not started: a regular task is an impossible combination.
    ready_job = engine.register_job(engine.default_group_id, *_encoded(_chain_job().build()))
    assert _fault(register, ready_job, index0, em_id, session).code is StatusCode.INTERNAL


def test_register_task_instance_earlier_checks_win_over_later_ones() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(JobBuilder("one").task("a", "m", "f", [1]).build())
    index0 = TaskId.of_index(0)
    register = engine.register_task_instance
    unknown_em = 999
    missing = _fault(register, 4242, None, unknown_em, session + 1)
    assert (missing.code, missing.message) == (StatusCode.INVALID_ARGUMENT, "task ID is missing")
    # Step 2 (session) before step 3 (job cache) and everything after it.
    assert _fault(register, 4242, index0, unknown_em, session + 1).code is StatusCode.NOT_FOUND
    # Step 3 (job cache) before step 7 (unknown worker).
    cache = _fault(register, 4242, index0, unknown_em, session)
    assert cache.message == "cache stale: job not found in cache: 4242"
    context = register(job_id, index0, em_id, session)
    # Step 6 (instance limit) before step 7 (unknown worker).
    assert _fault(register, job_id, index0, unknown_em, session).code is (
        StatusCode.FAILED_PRECONDITION
    )
    engine.report_success(job_id, index0, context.task_instance_id, session, _frame(1))
    # A finished job: step 4 (job state) answers before the task lookup of step 5.
    assert _fault(register, job_id, TaskId.of_index(9), em_id, session).code is (
        StatusCode.FAILED_PRECONDITION
    )
    # Step 4's table for the auxiliary tasks of a finished job, then of a running one.
    for aux in (TaskId.commit(), TaskId.cleanup()):
        assert _fault(register, job_id, aux, em_id, session).code is StatusCode.FAILED_PRECONDITION
    running = engine.submit(_chain_job().build())
    assert _fault(register, running, TaskId.cleanup(), em_id, session).code is StatusCode.INTERNAL
    first = register(running, index0, em_id, session)
    engine.report_success(running, index0, first.task_instance_id, session, _frame(1))
    # Step 6: a terminal task is rejected before the unknown worker of step 7.
    terminal = _fault(register, running, index0, unknown_em, session)
    assert terminal.code is StatusCode.FAILED_PRECONDITION


def test_report_checks_run_in_the_spec_order() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    index0 = TaskId.of_index(0)
    report = engine.report_success
    # Session before the frame check, the frame before the job cache.
    assert _fault(report, 4242, index0, 1, session + 1, b"x").code is StatusCode.NOT_FOUND
    assert _fault(report, 4242, index0, 1, session, b"x").code is StatusCode.INVALID_ARGUMENT
    assert _fault(report, 4242, index0, 1, session, _frame(1)).code is (
        StatusCode.FAILED_PRECONDITION
    )
    # Commit and cleanup outputs are not frames: no frame check for them.
    assert _fault(report, 4242, TaskId.commit(), 1, session, b"x").code is (
        StatusCode.FAILED_PRECONDITION
    )
    failure = engine.report_failure
    assert _fault(failure, 4242, None, 1, session + 1, "e").code is StatusCode.INVALID_ARGUMENT
    assert _fault(failure, 4242, index0, 1, session + 1, "e").code is StatusCode.NOT_FOUND
    job_id = engine.submit(JobBuilder("one").task("a", "m", "f", [1]).build())
    context = engine.register_task_instance(job_id, index0, em_id, session)
    # A wrong output count is checked last: a report of a dead instance is only stale.
    assert _fault(report, job_id, index0, 99, session, _frame(1, 2)).code is (
        StatusCode.FAILED_PRECONDITION
    )
    assert _fault(report, job_id, index0, context.task_instance_id, session, _frame(1, 2)).code is (
        StatusCode.INVALID_ARGUMENT
    )


def _encoded(job: object) -> tuple[bytes, bytes]:
    from worker.cluster.jobs import Job, encode_job

    assert isinstance(job, Job)
    return encode_job(job)


def test_report_success_checks_and_duplicates() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job().build())
    index0 = TaskId.of_index(0)
    context = engine.register_task_instance(job_id, index0, em_id, session)
    instance = context.task_instance_id
    report = engine.report_success
    assert _fault(report, job_id, None, instance, session, b"").code is StatusCode.INVALID_ARGUMENT
    assert _fault(report, job_id, index0, instance, session + 1, b"").code is StatusCode.NOT_FOUND
    bad_frame = _fault(report, job_id, index0, instance, session, b"\x01")
    assert bad_frame.code is StatusCode.INVALID_ARGUMENT
    assert _fault(report, job_id, index0, 77, session, _frame(1)).code is (
        StatusCode.FAILED_PRECONDITION
    )
    report(job_id, index0, instance, session, _frame(1))
    duplicate = _fault(report, job_id, index0, instance, session, _frame(1))
    assert duplicate.code is StatusCode.FAILED_PRECONDITION
    assert engine.task_rows(job_id)[0].successes == 1


@pytest.mark.parametrize("returned", [0, 2])
def test_a_wrong_output_count_fails_the_instance_and_spends_a_retry(returned: int) -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job(retries=1).build())
    index0 = TaskId.of_index(0)
    _drain(engine)
    expected = f"output count mismatch: task a declared 1 outputs, returned {returned}"
    for attempt in (1, 2):
        instance = engine.register_task_instance(job_id, index0, em_id, session).task_instance_id
        wrong = _fault(
            engine.report_success, job_id, index0, instance, session, _frame(*range(returned))
        )
        assert (wrong.code, wrong.message) == (StatusCode.INVALID_ARGUMENT, expected)
        assert instance not in engine.live_instances()
        row = engine.task_rows(job_id)[0]
        assert (row.failures, row.successes, row.error) == (attempt, 0, expected)
        if attempt == 1:  # the retry: the task is ready again, the job goes on
            assert [e.task_id for e in _drain(engine)] == [index0]
            assert engine.job_state(job_id) is JobState.RUNNING
    assert engine.job_state(job_id) is JobState.FAILED
    assert engine.job_error(job_id) == expected
    assert engine.task_rows(job_id)[0].state == "failed"


def test_failure_retries_then_fails_the_job_with_its_message() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job(retries=1).build())
    index0 = TaskId.of_index(0)
    _drain(engine)
    first = engine.register_task_instance(job_id, index0, em_id, session)
    engine.report_failure(job_id, index0, first.task_instance_id, session, "in-task failure: X: 1")
    assert [e.task_id for e in _drain(engine)] == [index0]
    second = engine.register_task_instance(job_id, index0, em_id, session)
    engine.report_failure(job_id, index0, second.task_instance_id, session, "in-task failure: X: 2")
    assert engine.job_state(job_id) is JobState.FAILED
    assert engine.job_error(job_id) == "in-task failure: X: 2"
    row = engine.task_rows(job_id)[0]
    assert (row.state, row.failures, row.attempts) == ("failed", 2, 2)
    later = _fault(engine.register_task_instance, job_id, index0, em_id, session)
    assert later.code is StatusCode.FAILED_PRECONDITION


def test_commit_gets_job_outputs_zstd_above_1024_bytes_then_job_succeeds() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job = (
        JobBuilder("commit")
        .task("a", "m", "f", [1])
        .task("b", "m", "f", [2])
        .with_commit("m", "commit")
        .build()
    )
    job_id = engine.submit(job)
    for index, value in ((0, "x" * 600), (1, "y" * 600)):
        context = engine.register_task_instance(job_id, TaskId.of_index(index), em_id, session)
        engine.report_success(
            job_id, TaskId.of_index(index), context.task_instance_id, session, _frame(value)
        )
    assert engine.job_state(job_id) is JobState.COMMIT_READY
    assert [e.task_id for e in _drain(engine)][-1] == TaskId.commit()
    context = engine.register_task_instance(job_id, TaskId.commit(), em_id, session)
    assert context.serialized_task_io[0] == 1
    # Spider's storage form: a streaming compressor, so the frame header has no content size.
    assert zstandard.get_frame_parameters(context.serialized_task_io[1:]).content_size == (
        zstandard.CONTENTSIZE_UNKNOWN
    )
    values = [msgpack.unpackb(p) for p in decode_graph_outputs(context.serialized_task_io)]
    assert values == ["x" * 600, "y" * 600]
    # Commit outputs are ignored: even an empty buffer is accepted.
    engine.report_success(job_id, TaskId.commit(), context.task_instance_id, session, b"")
    assert engine.job_state(job_id) is JobState.SUCCEEDED


def test_cancel_runs_cleanup_with_empty_input_then_job_is_cancelled() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job().with_cleanup("m", "clean").build())
    _drain(engine)
    engine.cancel_job(job_id)
    assert engine.job_state(job_id) is JobState.CLEANUP_READY
    assert [e.task_id for e in _drain(engine)] == [TaskId.cleanup()]
    context = engine.register_task_instance(job_id, TaskId.cleanup(), em_id, session)
    assert context.serialized_task_io == b""
    engine.report_success(job_id, TaskId.cleanup(), context.task_instance_id, session, b"")
    assert engine.job_state(job_id) is JobState.CANCELLED
    assert _fault(engine.cancel_job, job_id).code is StatusCode.FAILED_PRECONDITION
    assert _fault(engine.cancel_job, 4242).code is StatusCode.NOT_FOUND


def test_reaper_marks_silent_workers_dead_and_requeues_without_spending_retries() -> None:
    clock = Clock()
    engine = _engine(clock=clock)
    em_id, session = engine.register_execution_manager("0.0.0.0")
    alive, _ = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job(retries=1).build())
    _drain(engine)
    engine.register_task_instance(job_id, TaskId.of_index(0), em_id, session)
    clock.now += 0.9
    engine.heartbeat(alive)
    engine.collect()
    assert _drain(engine) == []  # within the stale cutoff (1 s): nobody reaped
    clock.now += 1.1
    engine.heartbeat(alive)
    engine.collect()
    assert {row.id: row.state for row in engine.db.ems()} == {em_id: "dead", alive: "alive"}
    assert [e.task_id for e in _drain(engine)] == [TaskId.of_index(0)]
    assert engine.task_rows(job_id)[0].retries_left == 1
    # Dead is permanent: the worker's heartbeat is refused from now on.
    assert _fault(engine.heartbeat, em_id).code is StatusCode.FAILED_PRECONDITION
    context = engine.register_task_instance(job_id, TaskId.of_index(0), alive, session)
    assert context.task_instance_id >= 2


@pytest.mark.parametrize("restart", ["hook", "new process"])
def test_after_a_restart_silence_counts_from_the_restart(tmp_path: Path, restart: str) -> None:
    clock = Clock()
    database = Database(tmp_path / "s.db")
    engine = StorageEngine(
        database, StorageSettings(execution_manager_stale_cutoff_sec=1.0), clock=clock
    )
    healthy, _ = engine.register_execution_manager("10.0.0.1")
    died, _ = engine.register_execution_manager("10.0.0.2")
    already_dead, _ = engine.register_execution_manager("10.0.0.3")
    engine.mark_dead(already_dead)
    clock.now += 30  # storage was down for 30 s, far past the 1 s cutoff
    if restart == "hook":
        engine.restart()
    else:
        database.close()
        database = Database(tmp_path / "s.db")
        engine = StorageEngine(
            database, StorageSettings(execution_manager_stale_cutoff_sec=1.0), clock=clock
        )
    restarted_at = clock.now
    clock.now += 0.5
    engine.collect()  # within the cutoff of the restart: nobody is reaped
    assert {row.id: row.state for row in engine.db.ems()} == {
        healthy: "alive",
        died: "alive",
        already_dead: "dead",
    }
    assert engine.db.em(died) == EmRow(died, "10.0.0.2", "alive", restarted_at)
    engine.heartbeat(healthy)  # the healthy worker heartbeats again; the other never does
    clock.now += 0.8
    engine.collect()
    states = {row.id: row.state for row in engine.db.ems()}
    assert states == {healthy: "alive", died: "dead", already_dead: "dead"}


def test_registration_by_a_dead_worker_returns_context_then_requeues() -> None:
    engine = _engine()
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(_chain_job().build())
    _drain(engine)
    engine.mark_dead(em_id)
    context = engine.register_task_instance(job_id, TaskId.of_index(0), em_id, session)
    assert [e.task_id for e in _drain(engine)] == [TaskId.of_index(0)]
    late = _fault(
        engine.report_success,
        job_id,
        TaskId.of_index(0),
        context.task_instance_id,
        session,
        _frame(1),
    )
    assert late.code is StatusCode.FAILED_PRECONDITION


def test_soft_timeout_requeues_once_and_instance_limit_rejects_the_copy() -> None:
    clock = Clock()
    engine = _engine(clock=clock)
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job = JobBuilder("soft").task("a", "m", "f", [1], timeout=TaskTimeouts(100, 200)).build()
    job_id = engine.submit(job)
    _drain(engine)
    context = engine.register_task_instance(job_id, TaskId.of_index(0), em_id, session)
    clock.now += 0.09
    engine.collect()
    assert _drain(engine) == []  # the soft deadline (100 ms) has not passed yet
    clock.now += 0.5
    engine.heartbeat(em_id)
    engine.collect()
    engine.collect()
    assert [e.task_id for e in _drain(engine)] == [TaskId.of_index(0)]
    copy = _fault(engine.register_task_instance, job_id, TaskId.of_index(0), em_id, session)
    assert copy.code is StatusCode.FAILED_PRECONDITION
    engine.report_success(job_id, TaskId.of_index(0), context.task_instance_id, session, _frame(1))
    assert engine.job_state(job_id) is JobState.SUCCEEDED


def test_restart_recovers_unfinished_jobs_in_a_new_session(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "db.sqlite")
    em_id, old = engine.register_execution_manager("0.0.0.0")
    running = engine.submit(_chain_job().build())
    done = engine.submit(JobBuilder("one").task("a", "m", "f", [1]).build())
    _drain(engine)
    context = engine.register_task_instance(running, TaskId.of_index(0), em_id, old)
    engine.report_success(running, TaskId.of_index(0), context.task_instance_id, old, _frame(3))
    context = engine.register_task_instance(done, TaskId.of_index(0), em_id, old)
    engine.report_success(done, TaskId.of_index(0), context.task_instance_id, old, _frame(3))
    engine.db.close()

    restarted = _engine(tmp_path / "db.sqlite")
    new = restarted.session_id
    assert new > old
    # The old worker id still heartbeats and learns the new session.
    assert restarted.heartbeat(em_id) == new
    assert restarted.job_state(running) is JobState.RUNNING
    assert restarted.job_state(done) is JobState.SUCCEEDED
    # A RUNNING job restarts from scratch; old-session work is rejected as stale.
    assert [(e.job_id, e.task_id) for e in _drain(restarted)] == [(running, TaskId.of_index(0))]
    stale = _fault(restarted.register_task_instance, running, TaskId.of_index(0), em_id, old)
    assert stale.code is StatusCode.NOT_FOUND
    context = restarted.register_task_instance(running, TaskId.of_index(0), em_id, new)
    assert context.task_instance_id == 1


def test_restart_keeps_only_the_commit_or_cleanup_task_of_such_jobs(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "db.sqlite")
    em_id, old = engine.register_execution_manager("0.0.0.0")
    committing = engine.submit(
        JobBuilder("commit").task("a", "m", "f", [1]).with_commit("m", "commit").build()
    )
    cleaning = engine.submit(_chain_job().with_cleanup("m", "clean").build())
    _drain(engine)
    context = engine.register_task_instance(committing, TaskId.of_index(0), em_id, old)
    engine.report_success(committing, TaskId.of_index(0), context.task_instance_id, old, _frame(7))
    engine.cancel_job(cleaning)
    # The commit and the cleanup are mid-run when storage goes away.
    engine.register_task_instance(committing, TaskId.commit(), em_id, old)
    engine.register_task_instance(cleaning, TaskId.cleanup(), em_id, old)
    engine.db.close()

    restarted = _engine(tmp_path / "db.sqlite")
    new = restarted.session_id
    assert restarted.job_state(committing) is JobState.COMMIT_READY
    assert restarted.job_state(cleaning) is JobState.CLEANUP_READY
    assert sorted((e.job_id, e.task_id.kind.value) for e in _drain(restarted)) == sorted(
        [(committing, "commit"), (cleaning, "cleanup")]
    )
    # Only the commit / cleanup task runs again; the regular tasks are not re-dispatched.
    regular = _fault(restarted.register_task_instance, committing, TaskId.of_index(0), em_id, new)
    assert regular.code is StatusCode.FAILED_PRECONDITION
    commit = restarted.register_task_instance(committing, TaskId.commit(), em_id, new)
    assert [msgpack.unpackb(p) for p in decode_graph_outputs(commit.serialized_task_io)] == [7]
    restarted.report_success(committing, TaskId.commit(), commit.task_instance_id, new, b"")
    assert restarted.job_state(committing) is JobState.SUCCEEDED
    cleanup = restarted.register_task_instance(cleaning, TaskId.cleanup(), em_id, new)
    assert cleanup.serialized_task_io == b""
    restarted.report_success(cleaning, TaskId.cleanup(), cleanup.task_instance_id, new, b"")
    assert restarted.job_state(cleaning) is JobState.CANCELLED


def test_scheduler_reregistration_requeues_ready_tasks() -> None:
    engine = _engine()
    first, session = engine.register_scheduler("127.0.0.1", 1)
    job_id = engine.submit(_chain_job().build())
    assert len(_drain(engine)) == 1
    second, same = engine.register_scheduler("127.0.0.1", 1)
    assert second > first
    assert same == session
    assert [(e.job_id, e.task_id) for e in _drain(engine)] == [(job_id, TaskId.of_index(0))]


def test_job_rpc_errors() -> None:
    engine = _engine()
    graph, inputs = _encoded(_chain_job().build())
    assert _fault(engine.register_job, 99, graph, inputs).code is StatusCode.UNAUTHENTICATED
    bad = _fault(engine.register_job, engine.default_group_id, b"junk", inputs)
    assert bad.code is StatusCode.INVALID_ARGUMENT
    assert _fault(engine.job_state, 12345).code is StatusCode.NOT_FOUND
    job_id = engine.register_job(engine.default_group_id, graph, inputs)
    assert engine.job_state(job_id) is JobState.READY
    engine.start_job(job_id)
    assert _fault(engine.start_job, job_id).code is StatusCode.FAILED_PRECONDITION


def test_terminated_jobs_are_evicted_after_retention() -> None:
    clock = Clock()
    engine = _engine(clock=clock)
    em_id, session = engine.register_execution_manager("0.0.0.0")
    job_id = engine.submit(JobBuilder("one").task("a", "m", "f", [1], max_instances=2).build())
    first = engine.register_task_instance(job_id, TaskId.of_index(0), em_id, session)
    engine.register_task_instance(job_id, TaskId.of_index(0), em_id, session)
    engine.report_success(job_id, TaskId.of_index(0), first.task_instance_id, session, _frame(1))
    clock.now += 10
    engine.heartbeat(em_id)
    engine.collect()
    evicted = _fault(engine.register_task_instance, job_id, TaskId.of_index(0), em_id, session)
    assert evicted.message.startswith("cache stale")
    assert engine.job_state(job_id) is JobState.SUCCEEDED
