"""The scripted fakes themselves behave as scenarios.md section 1 says."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.runtime.harness import A, ctx, rec
from worker.errors import PoolBroken, ProtocolError, StaleSessionError, StatusCode, TransportError
from worker.model import ExecutionManagerId, ExecutionRequest, JobId, SessionId, Success, TaskId
from worker.testing import (
    Always,
    Assign,
    Error,
    FakeLiveness,
    FakePool,
    FakeScheduler,
    FakeStorage,
    Hang,
    Hold,
    Journal,
    Malformed,
    NoTask,
    Phase,
)

EM = ExecutionManagerId(1)


async def test_scheduler_ack_bookkeeping(autojump_clock: trio.testing.MockClock) -> None:
    scheduler = FakeScheduler(Journal(), apply_acks_on_error=False)
    a1, a2 = A(1), A(2)
    scheduler.push(Assign(a1), Error(StatusCode.UNAVAILABLE), Malformed, Assign(a2), NoTask)
    assert await scheduler.next_task(EM, None, 5) == a1
    assert scheduler.outstanding == {rec(a1)}
    with pytest.raises(TransportError):
        await scheduler.next_task(EM, rec(a1), 5)
    assert scheduler.outstanding == {rec(a1)}  # not applied: the request was "lost"
    with pytest.raises(ProtocolError):
        await scheduler.next_task(EM, rec(a1), 5)
    assert scheduler.outstanding == set()  # malformed is OK: applied
    assert await scheduler.next_task(EM, rec(a1), 5) == a2
    assert scheduler.duplicate_acks == [rec(a1)]
    assert await scheduler.next_task(EM, rec(A(9)), 5) is None
    assert scheduler.unknown_acks == [rec(A(9))]
    await scheduler.shutdown(EM, [rec(a2)])
    assert scheduler.outstanding == set()
    assert [c.outcome for c in scheduler.calls] == [
        "assignment",
        "UNAVAILABLE",
        "malformed",
        "assignment",
        "no_task",
    ]
    assert scheduler.next_task_count == 5


async def test_scheduler_blocks_when_empty_and_records_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    scheduler = FakeScheduler(journal)
    with trio.move_on_after(1):
        await scheduler.next_task(EM, rec(A(1)), 5)
    assert scheduler.calls[0].outcome == "cancelled"
    assert scheduler.unknown_acks == [rec(A(1))]  # applied on cancellation by default
    assert [e.phase for e in journal.calls("scheduler", "next_task", None)] == [
        Phase.START,
        Phase.END,
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.next_task, EM, None, 5)
        await trio.sleep(1)
        scheduler.push(NoTask)
    assert scheduler.calls[1].outcome == "no_task"
    assert scheduler.calls[1].ended == 2.0  # blocked from t=1 until the push at t=2


async def test_always_until_and_hang(autojump_clock: trio.testing.MockClock) -> None:
    scheduler = FakeScheduler(Journal())
    scheduler.push(Always(Error(StatusCode.INTERNAL), until=1.0), Hang(0.5), NoTask)
    with pytest.raises(Exception, match="INTERNAL"):
        await scheduler.next_task(EM, None, 5)
    await trio.sleep(1.0)
    assert await scheduler.next_task(EM, None, 5) is None
    assert trio.current_time() == 1.5


async def test_storage_scripts_and_exhaustion(autojump_clock: trio.testing.MockClock) -> None:
    storage = FakeStorage(Journal())
    context = ctx("noop")
    storage.script_register(TaskId.of_index(3), (Error(StatusCode.NOT_FOUND), context))
    with pytest.raises(StaleSessionError):
        await storage.register_task_instance(JobId(7), TaskId.of_index(3), EM, SessionId(1))
    assert (
        await storage.register_task_instance(JobId(7), TaskId.of_index(3), EM, SessionId(1))
        == context
    )
    assert storage.exhausted is False
    with trio.move_on_after(1):
        await storage.register_task_instance(JobId(7), TaskId.of_index(0), EM, SessionId(1))
    assert storage.exhausted is True
    assert storage.register_cancelled == 1
    storage.block_register()
    with trio.move_on_after(1):
        await storage.register_task_instance(JobId(7), TaskId.of_index(3), EM, SessionId(1))
    assert storage.register_cancelled == 2
    assert len(storage.register_calls) == 4


async def test_liveness_defaults_and_scripts(autojump_clock: trio.testing.MockClock) -> None:
    liveness = FakeLiveness(Journal(), initial_session=5, em_id=42)
    registration = await liveness.register("0.0.0.0")
    assert (registration.execution_manager_id, registration.session_id) == (42, 5)
    liveness.push_heartbeat(6, Error(StatusCode.FAILED_PRECONDITION))
    assert await liveness.heartbeat(EM) == 6
    with pytest.raises(Exception, match="FAILED_PRECONDITION"):
        await liveness.heartbeat(EM)
    liveness.set_default_session(7)
    assert await liveness.heartbeat(EM) == 7
    await liveness.wait_for_heartbeats(3, 0)
    assert FakeLiveness(Journal()).em_id >= 1


async def test_pool_hold_release_and_failures(autojump_clock: trio.testing.MockClock) -> None:
    pool = FakePool(Journal())
    pool.push(Hold, Success(b"\x00\x00\x00\x00"), Hold)  # a Hold is followed by the next item
    pool.raise_on_execute(PoolBroken("x"))
    async with pool() as executor:
        request = ctx_request()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.execute, request)
            await trio.sleep(1)
            pool.release()
        with trio.move_on_after(1):
            await executor.execute(request)
        assert pool.holds_cancelled == 1
        with pytest.raises(PoolBroken):
            await executor.execute(request)
    assert [e.outcome for e in pool.executions] == ["Success", "cancelled", "PoolBroken"]
    pool.raise_on_open = PoolBroken("no")
    with pytest.raises(PoolBroken):
        async with pool():
            pass


def ctx_request() -> ExecutionRequest:
    """An execution request for ``A(1)`` with a ``noop`` context."""
    return ExecutionRequest.for_assignment(A(1).assignment, ctx("noop"))
