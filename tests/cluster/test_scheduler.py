"""The scheduler engine alone (no gRPC): long poll, acks, outstanding maps, liveness, sessions."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from tests.cluster.harness import wait_for
from worker.cluster.scheduler import (
    SchedulerBusy,
    SchedulerClosed,
    SchedulerEngine,
    SchedulerSettings,
)
from worker.cluster.storage import Lane, ReadyTask
from worker.model import TaskId


class Source:
    """An inbound source the test feeds by hand (the pump thread is not started)."""

    def __init__(self) -> None:
        self.registrations = 0

    def register_scheduler(self, host: str, port: int) -> tuple[int, int]:
        self.registrations += 1
        return 7, 3

    def poll_ready(
        self, lanes: tuple[Lane, ...], max_items: int, wait_sec: float
    ) -> tuple[int, list[ReadyTask]]:
        return 3, []

    def wake_pollers(self) -> None:
        """Nothing blocks here."""


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _ready(job_id: int, index: int) -> ReadyTask:
    return ReadyTask(1, job_id, TaskId.of_index(index))


def _engine(clock: Clock | None = None) -> SchedulerEngine:
    return SchedulerEngine(
        Source(), SchedulerSettings(dead_em_cutoff_sec=1.0), clock=clock or Clock()
    )


def test_identity_comes_from_storage_and_ids_count_from_zero() -> None:
    engine = _engine()
    assert (engine.scheduler_id, engine.session_id) == (7, 3)
    engine.accept(3, [_ready(1, 0), _ready(1, 1)])
    first = engine.next_task(10, None, 0)
    second = engine.next_task(11, None, 0)
    assert first is not None
    assert second is not None
    assert (first.id, second.id) == (0, 1)
    assert (first.scheduler_id, first.session_id, first.task_id) == (7, 3, TaskId.of_index(0))
    assert engine.outstanding() == {10: [first], 11: [second]}


def test_zero_wait_answers_no_task_at_once() -> None:
    engine = _engine()
    assert engine.next_task(1, None, 0) is None


def test_long_poll_returns_work_that_arrives_while_waiting() -> None:
    engine = _engine()
    results: list[object] = []
    poller = threading.Thread(target=lambda: results.append(engine.next_task(1, None, 30)))
    poller.start()
    wait_for(lambda: engine.waiting_polls == 1, 30, "the poll to block")
    engine.accept(3, [_ready(4, 0)])
    poller.join(timeout=10)
    assert not poller.is_alive()
    assert len(results) == 1
    assert results[0] is not None


def test_long_poll_expires_with_no_task_after_its_budget() -> None:
    engine = _engine()
    started = time.monotonic()
    assert engine.next_task(1, None, 0.2) is None
    assert time.monotonic() - started >= 0.19


def test_a_cancelled_poll_returns_without_taking_work() -> None:
    engine = _engine()
    cancelled = threading.Event()
    results: list[object] = []
    poller = threading.Thread(
        target=lambda: results.append(engine.next_task(1, None, 30, cancelled.is_set))
    )
    poller.start()
    wait_for(lambda: engine.waiting_polls == 1, 30, "the poll to block")
    cancelled.set()
    engine.wake()
    poller.join(timeout=10)
    assert results == [None]
    engine.accept(3, [_ready(4, 0)])
    assert engine.queued() == 1


def test_acks_complete_or_are_skipped_with_a_reason() -> None:
    engine = _engine()
    engine.accept(3, [_ready(1, 0)])
    assignment = engine.next_task(5, None, 0)
    assert assignment is not None
    assert engine.next_task(5, (assignment.id, 7), 0) is None
    assert engine.outstanding() == {5: []}
    engine.next_task(5, (assignment.id, 7), 0)
    engine.next_task(5, (0, 99), 0)
    engine.next_task(6, (0, 7), 0)
    assert [(a.em_id, a.assignment_id) for a in engine.acks_completed] == [(5, assignment.id)]
    assert [s.reason for s in engine.acks_skipped] == [
        "unknown assignment",
        "stale scheduler",
        "unknown worker",
    ]


def test_shutdown_completes_acks_then_reschedules_the_rest_with_new_ids() -> None:
    engine = _engine()
    engine.accept(3, [_ready(1, 0), _ready(1, 1)])
    kept = engine.next_task(5, None, 0)
    lost = engine.next_task(5, None, 0)
    assert kept is not None
    assert lost is not None
    assert engine.shutdown(5, [(kept.id, 7)])
    assert engine.outstanding() == {}
    again = engine.next_task(6, None, 0)
    assert again is not None
    assert again.task_id == lost.task_id
    assert again.id not in {kept.id, lost.id}
    assert [a.id for _, a in engine.reschedule_log] == [lost.id]
    assert not engine.shutdown(5, [])


def test_silent_workers_are_removed_and_their_work_rescheduled_once() -> None:
    clock = Clock()
    engine = _engine(clock)
    engine.accept(3, [_ready(1, 0), _ready(1, 1)])
    silent = engine.next_task(5, None, 0)
    assert silent is not None
    engine.heartbeat(6)
    clock.now += 0.5
    engine.heartbeat(6)
    clock.now += 0.6
    assert engine.check_liveness() == [5]
    assert [a.id for _, a in engine.reschedule_log] == [silent.id]
    assert engine.check_liveness() == []
    assert engine.queued() == 2
    # A later NextTask from the lost worker creates a fresh entry; its old ack completes nothing.
    engine.next_task(5, (silent.id, 7), 0)
    assert engine.acks_skipped[-1].reason == "unknown worker"
    assert 5 in engine.outstanding()


def test_a_no_task_reply_does_not_refresh_liveness_but_an_assignment_does() -> None:
    clock = Clock()
    engine = _engine(clock)
    engine.accept(3, [_ready(1, 0)])
    taken = engine.next_task(5, None, 0)
    assert taken is not None
    clock.now += 0.6
    assert engine.next_task(5, None, 0) is None
    clock.now += 0.6
    assert engine.check_liveness() == [5]
    engine.heartbeat(6)
    engine.accept(3, [_ready(2, 0)])
    clock.now += 0.6
    assert engine.next_task(6, None, 0) is not None
    clock.now += 0.6
    # Refreshed by its assignment 0.6 s ago (its heartbeat was 1.2 s ago): still alive.
    assert engine.check_liveness() == []


def test_shutdown_of_an_unknown_worker_still_processes_its_records_in_order() -> None:
    engine = _engine()
    engine.accept(3, [_ready(1, 0), _ready(1, 1)])
    first = engine.next_task(5, None, 0)
    second = engine.next_task(5, None, 0)
    assert first is not None
    assert second is not None
    assert not engine.shutdown(9, [(first.id, 7), (second.id, 99)])
    assert [(s.em_id, s.assignment_id, s.reason) for s in engine.acks_skipped] == [
        (9, first.id, "unknown worker"),
        (9, second.id, "stale scheduler"),
    ]
    # Worker 5's outstanding work is untouched by another id's shutdown.
    assert {a.id for a in engine.outstanding()[5]} == {first.id, second.id}


def test_reschedule_deduplicates_against_undelivered_entries() -> None:
    engine = _engine()
    engine.accept(3, [_ready(1, 0)])
    taken = engine.next_task(5, None, 0)
    assert taken is not None
    engine.accept(3, [_ready(1, 0)])
    engine.shutdown(5, [])
    assert engine.queued() == 1


def test_session_bump_drops_undelivered_work_and_old_sessions() -> None:
    engine = _engine()
    engine.accept(3, [_ready(1, 0), _ready(1, 1)])
    delivered = engine.next_task(5, None, 0)
    old = engine.next_task(5, None, 0)
    assert delivered is not None
    assert old is not None
    engine.accept(3, [_ready(1, 2)])
    engine.accept(4, [_ready(2, 0)])
    assert engine.session_id == 4
    assert engine.queued() == 1
    engine.accept(3, [_ready(9, 9)])
    assert engine.queued() == 1
    # Delivered assignments are untouched: their ack still completes.
    nxt = engine.next_task(6, None, 0)
    assert nxt is not None
    assert nxt.session_id == 4
    engine.next_task(5, (delivered.id, 7), 0)
    assert engine.acks_completed[-1].assignment_id == delivered.id
    # The older-session outstanding assignment is dropped, not rescheduled, on shutdown.
    engine.shutdown(5, [])
    assert engine.queued() == 0
    assert list(engine.reschedule_log) == []


def test_a_stopped_scheduler_fails_polls() -> None:
    engine = _engine()
    engine.stop()
    with pytest.raises(SchedulerClosed):
        engine.next_task(1, None, 1)


def _waiting_poll(engine: SchedulerEngine, em_id: int) -> threading.Thread:
    """A 30 s long poll in a thread, ended by ``engine.stop()``."""

    def poll() -> None:
        with contextlib.suppress(SchedulerClosed):
            engine.next_task(em_id, None, 30)

    thread = threading.Thread(target=poll)
    thread.start()
    wait_for(lambda: engine.waiting_polls >= 1, 10, "the long poll")
    return thread


def test_poll_status_counts_idle_time_from_the_last_poll_and_zero_while_one_waits() -> None:
    clock = Clock()
    engine = _engine(clock)
    clock.now += 4
    assert engine.poll_status() == (4.0, 0)  # never polled: idle since start
    engine.accept(3, [_ready(1, 0)])
    assert engine.next_task(10, None, 0) is not None
    clock.now += 2.5
    assert engine.poll_status() == (2.5, 1)  # one assignment out, not yet acknowledged
    waiting = _waiting_poll(engine, 10)
    try:
        clock.now += 7
        assert engine.poll_status() == (0.0, 1)
    finally:
        engine.stop()
        waiting.join(10)


def test_long_polls_beyond_the_limit_are_refused() -> None:
    engine = SchedulerEngine(Source(), SchedulerSettings(max_long_polls=1), clock=Clock())
    waiting = _waiting_poll(engine, 10)
    try:
        with pytest.raises(SchedulerBusy):
            engine.next_task(11, None, 30)
        assert engine.next_task(11, None, 0) is None  # a poll that does not wait is served
    finally:
        engine.stop()
        waiting.join(10)
