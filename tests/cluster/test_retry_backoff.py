"""Retry delay with backoff (our extension, protocol.md §8.6 [O]): the delays, the job file and
encoding, and storage's waiting state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import taskio
from worker.cluster.db import Database
from worker.cluster.jobs import (
    DEFAULT_SOFT_TIMEOUT_MS,
    JobBuilder,
    JobError,
    TaskTimeouts,
    decode_job,
    encode_job,
    parse_job,
)
from worker.cluster.retry_backoff import RetryBackoff
from worker.cluster.storage import Lane, ReadyTask, StorageEngine, StorageSettings
from worker.model import TaskId


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_by_the_factor_up_to_the_cap() -> None:
    backoff = RetryBackoff(initial_ms=100, factor=3, max_ms=1000)
    assert [backoff.delay_ms(n) for n in range(1, 6)] == [100, 300, 900, 1000, 1000]


@given(
    initial=st.integers(0, 10_000),
    factor=st.floats(1.0, 100.0),
    cap_extra=st.integers(0, 100_000),
    retry=st.integers(1, 10_000),
)
def test_delay_is_the_capped_geometric_term(
    initial: int, factor: float, cap_extra: int, retry: int
) -> None:
    cap = initial + cap_extra
    delay = RetryBackoff(initial, factor, cap).delay_ms(retry)
    expected = initial * factor ** min(retry - 1, 64)
    assert initial <= delay <= cap
    if expected < cap:
        assert delay == pytest.approx(expected, abs=1)
    else:
        assert delay == cap


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"initial_ms": -1}, "initial_ms"),
        ({"initial_ms": 10, "factor": 0.5}, "factor"),
        ({"initial_ms": 500, "max_ms": 100}, "max_ms"),
        ({"factor": 2}, "initial_ms"),
        ({"initial_ms": 1, "jitter": 1}, "jitter"),
    ],
)
def test_bad_backoff_in_a_job_file_names_the_task_and_field(
    setting: dict[str, object], field: str
) -> None:
    document = {
        "tasks": [
            {"name": "t", "module": "m", "function": "f", "retries": 1, "retry_backoff": setting}
        ]
    }
    with pytest.raises(JobError, match=rf"task 't': retry_backoff\.{field}"):
        parse_job(document)


def test_job_file_backoff_survives_the_submission_encoding() -> None:
    job = parse_job(
        {
            "tasks": [
                {
                    "name": "t",
                    "module": "m",
                    "function": "f",
                    "retries": 3,
                    "retry_backoff": {"initial_ms": 250, "factor": 2, "max_ms": 2000},
                },
                {"name": "u", "module": "m", "function": "f"},
            ]
        }
    )
    assert job.tasks[0].backoff == RetryBackoff(250, 2, 2000)
    assert job.tasks[1].backoff is None
    assert decode_job(*encode_job(job)) == job


def test_hard_timeout_alone_is_valid_and_sets_the_soft_one_below_it() -> None:
    tasks = [
        {"name": "short", "module": "m", "function": "f", "timeout": {"hard_ms": 101}},
        {"name": "long", "module": "m", "function": "f", "timeout": {"hard_ms": 600_000}},
    ]
    job = parse_job({"tasks": tasks})
    assert job.tasks[0].timeout == TaskTimeouts(soft_ms=100, hard_ms=101)
    assert job.tasks[1].timeout == TaskTimeouts(DEFAULT_SOFT_TIMEOUT_MS, 600_000)
    with pytest.raises(JobError, match=r"timeout\.soft_ms"):
        parse_job({"tasks": [{**tasks[0], "timeout": {"hard_ms": 100}}]})


def _drain(engine: StorageEngine) -> list[ReadyTask]:
    return engine.poll_ready(tuple(Lane), 1000, 0)[1]


def test_a_failed_task_waits_out_its_delay_before_it_is_ready_again() -> None:
    clock = Clock()
    engine = StorageEngine(Database(":memory:"), StorageSettings(), clock=clock)
    em_id, session = engine.register_execution_manager("127.0.0.1")
    job = (
        JobBuilder("retry")
        .task("t", "m", "f", [1], retries=2, backoff=RetryBackoff(500, 2, 10_000))
        .build()
    )
    job_id = engine.submit(job)
    index0 = TaskId.of_index(0)
    for delay_sec in (0.5, 1.0):
        assert [entry.task_id for entry in _drain(engine)] == [index0]
        instance = engine.register_task_instance(job_id, index0, em_id, session)
        engine.report_failure(job_id, index0, instance.task_instance_id, session, "boom")
        assert engine.task_state_counts(job_id) == {"waiting": 1}
        clock.now += delay_sec - 0.01
        assert _drain(engine) == []
        clock.now += 0.01
    assert [entry.task_id for entry in _drain(engine)] == [index0]
    assert engine.task_state_counts(job_id) == {"ready": 1}


def test_attempts_record_worker_times_and_outcomes() -> None:
    clock = Clock()
    engine = StorageEngine(Database(":memory:"), StorageSettings(), clock=clock)
    em_id, session = engine.register_execution_manager("127.0.0.1")
    job_id = engine.submit(JobBuilder("one").task("t", "m", "f", [1], retries=1).build())
    index0 = TaskId.of_index(0)
    _drain(engine)
    first = engine.register_task_instance(job_id, index0, em_id, session)
    clock.now += 2
    engine.report_failure(job_id, index0, first.task_instance_id, session, "boom")
    _drain(engine)
    second = engine.register_task_instance(job_id, index0, em_id, session)
    clock.now += 1
    outputs = taskio.encode_outputs(7)
    engine.report_success(job_id, index0, second.task_instance_id, session, outputs)
    attempts = engine.attempts(job_id)
    assert [(a.task, a.worker_id, a.outcome) for a in attempts] == [
        ("index:0", em_id, "failed"),
        ("index:0", em_id, "succeeded"),
    ]
    assert [(a.started, a.ended) for a in attempts] == [(1000.0, 1002.0), (1002.0, 1003.0)]
