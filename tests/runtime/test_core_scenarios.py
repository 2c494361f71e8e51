"""Scenarios the core move made testable: Shutdown after both loops, races, causes, N slots.

Every check reads the fakes' journals (what went over the wire), never the core's own books.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests.runtime.harness import BOUNDED_WAIT, A, Harness, ctx, frame, rec
from worker.core.lifecycle import AssignmentState
from worker.core.machine import State
from worker.core.observer import (
    AssignmentMoved,
    DrainingBegan,
    HeartbeatLoopStopped,
    Notice,
    PhaseChanged,
    RecordsChanged,
    SlotMoved,
    StoryNoted,
)
from worker.core.phases import Phase as WorkerPhase
from worker.errors import StatusCode
from worker.exit_codes import ExitCode
from worker.model import ExecutionRequest, Outcome, Success, TaskAssignmentRecord, TaskId
from worker.testing import Always, Assign, Block, Error, Hang, Hold, NoTask, Phase

#: protocol.md section 6.11, written out: the code each combination of causes must give.
EXIT_CODE_WHEN_CAUSES_COMBINE = {
    ("fatal", "evicted"): ExitCode.FATAL,
    ("evicted", "forced"): ExitCode.EVICTED,
    ("fatal", "forced"): ExitCode.FATAL,
}
_FATAL_FIRST = [causes for causes in EXIT_CODE_WHEN_CAUSES_COMBINE if causes[0] == "fatal"]


def _heartbeat_entries(h: Harness) -> list[Any]:
    return [
        e
        for e in h.journal.entries
        if (e.fake, e.method) in (("scheduler", "heartbeat"), ("liveness", "heartbeat"))
    ]


def _check_shutdown_after_both_loops(h: Harness) -> None:
    """No heartbeat of either loop starts or is still in flight once Shutdown started (P4)."""
    [first_shutdown] = h.journal.calls("scheduler", "shutdown")[:1]
    beats = _heartbeat_entries(h)
    assert beats, "the loops never ran"
    assert all(e.seq < first_shutdown.seq for e in beats), h.journal.format()
    starts = sum(1 for e in beats if e.phase is Phase.START)
    ends = sum(1 for e in beats if e.phase is Phase.END)
    assert starts == ends, "a heartbeat was still in flight when Shutdown started"


@pytest.mark.parametrize("shutdown", ["slow", "retried"])
async def test_shutdown_goes_out_only_after_both_heartbeat_loops_stopped(
    autojump_clock: trio.testing.MockClock, shutdown: str
) -> None:
    h = Harness(shutdown_budget_sec=3.0)
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    h.pool.push(Hang(0.35))  # three heartbeat periods of each loop while the task runs
    # Both loops have a heartbeat in flight when the drain ends: they are cancelled and joined.
    # (beats at 0, 0.1 and 0.2 answer; the one at 0.3 hangs past the task's end at 0.35)
    h.liveness.push_heartbeat(*[1] * 3, Hang(5.0))
    h.scheduler.heartbeat_script.push(*[None] * 3, Hang(5.0))
    if shutdown == "slow":
        h.scheduler.shutdown_script.push(Hang(1.0))
    else:
        h.scheduler.shutdown_script.push(
            Error(StatusCode.UNAVAILABLE), Error(StatusCode.UNAVAILABLE)
        )
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) == 1)
        h.stop()
        assert await h.finish(within=10.0) is ExitCode.OK
    _check_shutdown_after_both_loops(h)
    cancelled = {e.fake for e in _heartbeat_entries(h) if e.result == "cancelled"}
    assert cancelled == {"liveness", "scheduler"}, h.journal.format()
    calls = h.journal.calls("scheduler", "shutdown")
    assert len(calls) == (1 if shutdown == "slow" else 3)
    assert all(c.args[1] == (rec(a1),) for c in calls)  # a retry carries the same records
    assert len(h.storage.success_reports) == 1
    h.check_teardown(shutdowns=len(calls))


async def test_an_outcome_racing_an_eviction_is_never_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The outcome is already on its way back when storage evicts: it must not be reported."""
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    h.liveness.push_heartbeat(1, 1, Error(StatusCode.FAILED_PRECONDITION))
    evicted = trio.Event()
    run_task = h.pool.execute

    async def outcome_in_transit(request: ExecutionRequest) -> Outcome:
        outcome = await run_task(request)
        # The task has finished; its outcome reaches the worker only after the eviction, and
        # the kill that comes with the eviction is too late to stop it.
        with trio.CancelScope(shield=True):
            await evicted.wait()
        return outcome

    h.pool.execute = outcome_in_transit  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(
            lambda: any(
                e.result == "FAILED_PRECONDITION"
                for e in h.journal.calls("liveness", "heartbeat", Phase.END)
            )
        )
        evicted.set()
        assert await h.finish() is ExitCode.EVICTED
    assert h.storage.reports == []
    assert [execution.outcome for execution in h.pool.executions] == [Success.__name__]
    assert h.scheduler.shutdown_calls == [[rec(a1)]]  # consumed: its record goes in Shutdown
    h.check_teardown()


def _two_slots_one_running(h: Harness) -> tuple[Any, Any]:
    """Slot one runs a held task; the other slot's assignment is registered next."""
    running, second = A(1, index=1), A(2, index=2)
    h.scheduler.push(Assign(running))
    h.storage.script_register(TaskId.of_index(1), (ctx("fibonacci", 10),))
    h.pool.push(Hold)
    return running, second


@pytest.mark.parametrize("causes", _FATAL_FIRST)
async def test_exit_code_when_a_fatal_error_combines(
    autojump_clock: trio.testing.MockClock, causes: tuple[str, str]
) -> None:
    """Two slots: one task keeps the drain open while the second cause arrives."""
    h = Harness(slots=2, drain_timeout_sec=30.0)
    _running, second = _two_slots_one_running(h)
    h.storage.script_register(TaskId.of_index(2), (Error(StatusCode.INVALID_ARGUMENT),))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) == 1)
        h.scheduler.push(Assign(second))
        await h.until(
            lambda: len(h.journal.calls("storage", "register_task_instance", Phase.END)) == 2
        )
        assert h.pool.executions[0].outcome is None  # the drain waits for the running task
        if causes[1] == "evicted":
            h.liveness.push_heartbeat(Error(StatusCode.FAILED_PRECONDITION))
        else:
            h.stop()
            h.force()
        await h.until(lambda: bool(h.journal.calls("pool", "execute", Phase.END)))
        code = await h.finish()
    assert code is EXIT_CODE_WHEN_CAUSES_COMBINE[causes]
    assert h.pool.executions[0].outcome == "cancelled"  # killed by the eviction or the force
    assert h.storage.reports == []
    assert len(h.scheduler.shutdown_calls) == 1
    _check_shutdown_after_both_loops(h)
    h.check_teardown(outstanding=frozenset({rec(second)}))


async def test_exit_code_when_an_eviction_and_a_forced_stop_combine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A report still retrying keeps the drain open after the eviction; then the force."""
    h = Harness(drain_timeout_sec=30.0)
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    h.storage.success_script.push(Always(Error(StatusCode.UNAVAILABLE)))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.storage.success_reports) >= 2)  # retrying
        h.liveness.push_heartbeat(Error(StatusCode.FAILED_PRECONDITION))
        await h.until(
            lambda: any(
                e.result == "FAILED_PRECONDITION"
                for e in h.journal.calls("liveness", "heartbeat", Phase.END)
            )
        )
        assert h.scheduler.shutdown_calls == []  # the report still keeps the drain open
        h.stop()  # after an eviction the first signal changes nothing; the second forces
        h.force()
        code = await h.finish()
    assert code is EXIT_CODE_WHEN_CAUSES_COMBINE[("evicted", "forced")]
    assert all(attempt.outcome != "OK" for attempt in h.storage.success_reports)
    _check_shutdown_after_both_loops(h)
    h.check_teardown()


def _ack_checks(h: Harness) -> None:
    """Section 6.12 from the wire: one record never rides two calls at once, nor after OK."""
    in_flight: set[TaskAssignmentRecord] = set()
    delivered: set[TaskAssignmentRecord] = set()
    for entry in h.journal.calls("scheduler", "next_task", phase=None):
        record = entry.args[1]
        if not isinstance(record, TaskAssignmentRecord):
            continue
        if entry.phase is Phase.START:
            assert record not in in_flight, f"{record} rode on two NextTask calls at once"
            assert record not in delivered, f"{record} rode again after an OK carrier"
            in_flight.add(record)
        else:
            in_flight.discard(record)
            if entry.result in ("assignment", "no_task", "malformed"):
                delivered.add(record)
    shutdown = [r for records in h.scheduler.shutdown_calls for r in records]
    assert not set(shutdown) & delivered
    assert set(shutdown) | delivered == set(h.scheduler.handed_out)


@pytest.mark.parametrize("slots", [2, 3, 4])
async def test_n_slot_acks_survive_failing_and_cancelled_polls(
    autojump_clock: trio.testing.MockClock, slots: int
) -> None:
    h = Harness(slots=slots, apply_acks_on_error=False)
    assignments = [A(n, index=n) for n in range(1, 9)]
    for a in assignments:
        h.storage.script_register(a.assignment.task_id, (ctx("fibonacci", 10),))
    # Assignments, failing polls and idle replies interleaved; then every poll blocks.
    h.scheduler.push(
        Assign(assignments[0]),
        Assign(assignments[1]),
        Error(StatusCode.UNAVAILABLE),
        Assign(assignments[2]),
        Error(StatusCode.DEADLINE_EXCEEDED),
        NoTask,
        Assign(assignments[3]),
        Assign(assignments[4]),
        Error(StatusCode.UNAVAILABLE),
        Assign(assignments[5]),
        NoTask,
        Assign(assignments[6]),
        Assign(assignments[7]),
        Error(StatusCode.UNAVAILABLE),
        Block,
    )
    for _ in assignments:
        h.pool.push(Hang(0.05), Success(frame(1)))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.storage.wait_for_reports(len(assignments), BOUNDED_WAIT * 5)
        await h.until(lambda: sum(1 for c in h.scheduler.calls if c.ended is None) == slots)
        assert await h.stop_and_finish() is ExitCode.OK  # cancels every blocked poll
    assert sum(1 for c in h.scheduler.calls if c.outcome == "cancelled") == slots
    _ack_checks(h)
    h.check_teardown()


async def test_n_slots_poll_at_once_and_run_tasks_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Four slots: four assignments run together; the poll backoff after a failure is shared."""
    h = Harness(slots=4)
    assignments = [A(n, index=n) for n in range(1, 5)]
    for a in assignments:
        h.storage.script_register(a.assignment.task_id, (ctx("fibonacci", 10),))
        h.scheduler.push(Assign(a))
    h.pool.push(Hold, Hold, Hold, Hold)  # then the default outcome
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) == 4)
        assert all(e.outcome is None for e in h.pool.executions)  # four tasks run at once
        h.scheduler.push(Error(StatusCode.UNAVAILABLE), NoTask, NoTask, NoTask)
        before = len(h.scheduler.calls)
        for _ in range(4):
            h.pool.release()
        await h.storage.wait_for_reports(4, BOUNDED_WAIT)
        await h.until(lambda: sum(1 for c in h.scheduler.calls if c.ended is None) == 4)
        failed = next(c for c in h.scheduler.calls[before:] if c.outcome == "UNAVAILABLE")
        assert failed.ended is not None
        later = [c for c in h.scheduler.calls if c.started > failed.ended]
        # One backoff for the worker: no slot polls again before the shared delay passed.
        low, _ = h.settings.backoff.bounds(0)
        assert later
        assert all(c.started >= failed.ended + low for c in later)
        assert await h.stop_and_finish() is ExitCode.OK
    h.check_teardown()


class _Recorder:
    """A :class:`~worker.core.observer.WorkerObserver` that keeps every notice."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def notice(self, notice: Notice) -> None:
        self.notices.append(notice)


async def test_the_observer_sees_slots_phases_assignments_records_drain_and_loops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    recorder = _Recorder()
    h.runtime = h.runtime_with(observer=recorder)
    a1 = A(1)
    h.scheduler.push(Assign(a1), NoTask)  # the poll carrying rec(a1) returns OK
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.storage.wait_for_reports(1, BOUNDED_WAIT)
        await h.until(lambda: len(h.scheduler.calls) == 3)
        assert await h.stop_and_finish() is ExitCode.OK
    kinds = {type(n) for n in recorder.notices}
    assert {SlotMoved, PhaseChanged, AssignmentMoved, RecordsChanged, DrainingBegan} <= kinds
    assert StoryNoted in kinds
    moves = [(n.source, n.dest) for n in recorder.notices if isinstance(n, SlotMoved)]
    assert moves[0] == (State.IDLE, State.AWAITING)
    assert moves[-1] == (State.DRAINING, State.STOPPED)
    lifecycle = [n.dest for n in recorder.notices if isinstance(n, AssignmentMoved)]
    assert lifecycle[-1] is AssignmentState.ACKNOWLEDGED
    loops = [n for n in recorder.notices if isinstance(n, HeartbeatLoopStopped)]
    assert sorted(n.loop for n in loops) == ["scheduler", "storage"]
    assert all(n.stopping and not n.evicted for n in loops)
    records = [n for n in recorder.notices if isinstance(n, RecordsChanged)]
    assert records[-1].pending == 0
    assert records[-1].acknowledged >= 1
    phases = [n.dest for n in recorder.notices if isinstance(n, PhaseChanged)]
    assert phases[-1] is WorkerPhase.EXITED
