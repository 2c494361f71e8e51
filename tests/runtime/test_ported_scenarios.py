"""R1-R15: Spider's em-runtime suite ported onto the fakes (scenarios.md section 2).

All I/O is in-process fakes, so every test runs under ``MockClock(autojump_threshold=0)`` (the
``autojump_clock`` fixture of pytest-trio); times are virtual. The real-pool variants of R1, R10
and R11 belong to the executor suite; here they run with FakePool.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import trio
import trio.testing

from tests.runtime.harness import BOUNDED_WAIT, HEARTBEAT, TIGHT_WAIT, A, Harness, ctx, frame, rec
from worker.errors import PoolInitError, ProtocolError, RpcError, StatusCode
from worker.exit_codes import ExitCode
from worker.model import ExecutionContext, InTaskFailure, SchedulerAssignment, Success, TaskId
from worker.testing import Assign, Error, Malformed, Phase
from worker.testing.storage import RegisterItem


async def test_r1_registration_and_first_heartbeat(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(
            lambda: (
                h.liveness.heartbeat_count >= 1
                and h.scheduler.heartbeat_count >= 1
                and h.scheduler.next_task_count >= 1
            )
        )
        assert trio.current_time() <= BOUNDED_WAIT
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.liveness.register_calls == ["0.0.0.0"]
    ipaddress.ip_address(h.liveness.register_calls[0])
    rpcs = [e for e in h.journal.calls() if e.fake not in ("pool", "machine")]
    assert (rpcs[0].fake, rpcs[0].method) == ("liveness", "register")
    assert sum(1 for e in rpcs if e.method == "register") == 1
    first = h.scheduler.calls[0]
    assert (first.em_id, first.prev, first.wait_time_ms) == (h.em_id, None, 2000)
    assert h.scheduler.shutdown_calls == [[]]
    h.check_teardown()


async def test_r2_pool_init_error_propagates(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.pool.raise_on_open = PoolInitError("no executor")
    with pytest.raises(PoolInitError):
        await h.runtime.run()
    assert h.scheduler.next_task_count == 0
    assert h.storage.register_calls == []
    assert h.liveness.register_calls == []
    assert h.scheduler.shutdown_calls == []


async def test_r3_stop_while_polling_returns_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 1)
        stopped = trio.current_time()
        assert await h.stop_and_finish() is ExitCode.OK
        assert trio.current_time() - stopped <= BOUNDED_WAIT
    assert h.scheduler.calls[0].outcome == "cancelled"
    assert h.scheduler.shutdown_calls == [[]]
    h.check_teardown()


async def test_r4_scheduler_error_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Error(StatusCode.UNAVAILABLE), Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.storage.register_calls) >= 1)
        assert trio.current_time() <= BOUNDED_WAIT
        call = h.storage.register_calls[0]
        assert (call.job_id, call.task_id, call.em_id, call.session_id) == (
            7,
            TaskId.of_index(0),
            h.em_id,
            1,
        )
        await h.until(lambda: h.scheduler.next_task_count >= 3)
        assert await h.stop_and_finish() is ExitCode.OK
    first, second = h.scheduler.calls[:2]
    assert first.outcome == "UNAVAILABLE"
    assert first.ended is not None
    assert second.started - first.ended >= 0.040
    h.check_teardown()


async def test_r5_stale_assignment_dropped_without_registration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(initial_session=5)
    a1 = A(1, session=4)
    h.scheduler.push(Assign(a1))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 2)
        assert trio.current_time() <= BOUNDED_WAIT
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.storage.register_calls == []
    assert h.storage.reports == []
    assert h.scheduler.calls[1].prev == rec(a1)
    h.check_teardown()


async def test_r6_newer_session_triggers_refresh(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(storage_heartbeat_sec=10, scheduler_heartbeat_sec=10)
    a1 = A(1, session=2)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 1)
        assigned_at = h.scheduler.calls[0].started
        await h.until(lambda: h.liveness.heartbeat_count >= 2)
        assert h.liveness.heartbeat_times[1] - assigned_at <= TIGHT_WAIT
        await h.storage.wait_for_reports(1, BOUNDED_WAIT)
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.storage.register_calls[0].session_id == 2
    assert [r.report.session_id for r in h.storage.success_reports] == [2]
    h.check_teardown()


async def test_r7_equal_session_passes_through(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1, index=3)))
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 2)
        assert await h.stop_and_finish() is ExitCode.OK
    calls = [(c.job_id, c.task_id, c.em_id, c.session_id) for c in h.storage.register_calls]
    assert calls == [(7, TaskId.of_index(3), h.em_id, 1)]
    h.check_teardown()


async def test_r8_stale_session_registration_dropped_and_refreshes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(storage_heartbeat_sec=10, scheduler_heartbeat_sec=10)
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Error(StatusCode.NOT_FOUND))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.storage.register_calls) >= 1)
        answered = h.storage.register_calls[0].time
        await h.until(lambda: h.liveness.heartbeat_count >= 2)
        assert h.liveness.heartbeat_times[1] - answered <= TIGHT_WAIT
        await h.until(lambda: h.scheduler.next_task_count >= 2)
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.pool.requests == []
    assert h.storage.reports == []
    assert h.scheduler.calls[1].prev == rec(a1)
    h.check_teardown()


async def test_r9_recoverable_storage_errors_drop_the_assignment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(storage_heartbeat_sec=10, scheduler_heartbeat_sec=10)
    a1, a2 = A(1), A(2)
    h.scheduler.push(Assign(a1), Assign(a2))
    h.storage.push_register(Error(StatusCode.FAILED_PRECONDITION), Error(StatusCode.NOT_FOUND))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 3)
        assert await h.stop_and_finish() is ExitCode.OK
    assert len(h.storage.register_calls) == 2
    assert h.pool.requests == []
    assert h.storage.reports == []
    assert h.scheduler.calls[1].prev == rec(a1)
    assert h.scheduler.calls[2].prev == rec(a2)
    # Before the first scheduled heartbeat (t = 10 s): the initial one plus ONE refresh, which
    # followed the NOT_FOUND (the FAILED_PRECONDITION came first and caused none).
    early = [t for t in h.liveness.heartbeat_times if t < 10]
    assert len(early) == 2
    not_found_at = h.storage.register_calls[1].time
    assert early[1] >= not_found_at
    h.check_teardown()


async def test_r10_success_outcome_reports_outputs(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("fibonacci", 10, instance=11))
    h.pool.push(Success(bytes.fromhex("01 00 00 00 01 00 00 00 37")))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.storage.wait_for_reports(1, BOUNDED_WAIT)
        assert await h.stop_and_finish() is ExitCode.OK
    [attempt] = h.storage.success_reports
    report = attempt.report
    assert (report.job_id, report.task_id, report.task_instance_id) == (7, TaskId.of_index(0), 11)
    assert (report.execution_manager_id, report.session_id) == (h.em_id, 1)
    assert report.serialized_outputs == bytes.fromhex("01 00 00 00 01 00 00 00 37")
    assert h.storage.failure_reports == []
    h.check_teardown()


async def test_r11_failure_outcome_keeps_serving(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1)), Assign(A(2)))
    h.storage.push_register(ctx("always_fail"), ctx("fibonacci", 10))
    h.pool.push(
        InTaskFailure("RuntimeError", "always_fail: intentional failure", traceback="Traceback..."),
        Success(frame(55)),
    )
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.storage.wait_for_reports(2, BOUNDED_WAIT)
        assert await h.stop_and_finish() is ExitCode.OK
    [failure] = h.storage.failure_reports
    assert (
        failure.report.error_message
        == "in-task failure: RuntimeError: always_fail: intentional failure"
    )
    [success] = h.storage.success_reports
    assert success.report.serialized_outputs == frame(55)
    assert failure.report.task_instance_id == h.pool.requests[0].task_instance_id
    assert success.report.task_instance_id == h.pool.requests[1].task_instance_id
    h.check_teardown()


async def test_r12_report_error_does_not_kill_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1)), Assign(A(2)))
    h.storage.push_register(ctx("fibonacci", 10), ctx("fibonacci", 10))
    h.storage.success_script.push(Error(StatusCode.FAILED_PRECONDITION))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 3 and len(h.storage.reports) >= 2)
        await trio.sleep(1)  # virtual: time for any (wrong) retry to show up
        assert await h.stop_and_finish() is ExitCode.OK
    assert [a.outcome for a in h.storage.success_reports] == ["FAILED_PRECONDITION", "OK"]
    h.check_teardown()


async def test_r13_outer_cancel_stops_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    cancelled_in_run = False

    async def run() -> None:
        nonlocal cancelled_in_run
        try:
            await h.runtime.run()
        except BaseException as error:
            # A cancellation may arrive wrapped in (nested) exception groups by nurseries.
            rest = error.split(trio.Cancelled)[1] if isinstance(error, BaseExceptionGroup) else None
            cancelled_in_run = isinstance(error, trio.Cancelled) or (
                isinstance(error, BaseExceptionGroup) and rest is None
            )
            raise

    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await h.until(
                lambda: h.liveness.heartbeat_count >= 2 and h.scheduler.heartbeat_count >= 2
            )
            cancelled_at = trio.current_time()
            outer.cancel()
    assert outer.cancelled_caught
    assert cancelled_in_run
    assert trio.current_time() - cancelled_at <= BOUNDED_WAIT
    counts = (h.liveness.heartbeat_count, h.scheduler.heartbeat_count)
    await trio.sleep(5 * HEARTBEAT)
    assert (h.liveness.heartbeat_count, h.scheduler.heartbeat_count) == counts
    assert h.pool.closed
    # The spec allows one; this runtime always sends its shielded goodbye (the fake answers OK).
    assert len(h.scheduler.shutdown_calls) == 1
    assert h.scheduler.unknown_acks == []


async def test_r14_heartbeats_in_lockstep(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await trio.sleep(0.35)
        assert h.liveness.heartbeat_count == h.scheduler.heartbeat_count
        assert h.liveness.heartbeat_count == 4
        assert await h.stop_and_finish() is ExitCode.OK
    h.check_teardown()


async def test_r15_cancel_during_registration_leaves_unacked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    a1 = A(1)
    h.storage.block_register()
    h.scheduler.push(Assign(a1))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.storage.register_calls) >= 1)
        stopped = trio.current_time()
        assert await h.stop_and_finish() is ExitCode.OK
        assert trio.current_time() - stopped <= BOUNDED_WAIT
    assert h.storage.register_cancelled == 1
    assert all(c.prev != rec(a1) for c in h.scheduler.calls)
    assert h.scheduler.shutdown_calls == [[]]
    assert h.storage.reports == []
    assert h.journal.calls("storage", "register_task_instance", Phase.END)[0].result == "cancelled"
    h.check_teardown(outstanding=frozenset({rec(a1)}))


@pytest.mark.parametrize("reply", ["ok", "NOT_FOUND", "FAILED_PRECONDITION", "malformed"])
async def test_r15_reply_arriving_after_the_stop_is_discarded(
    autojump_clock: trio.testing.MockClock, reply: str
) -> None:
    """Item 22 / A5: storage answers, but the answer reaches the runtime only after the stop."""
    h = Harness()
    a1 = A(1)
    answers: dict[str, RegisterItem] = {
        "ok": ctx("fibonacci", 10),
        "NOT_FOUND": Error(StatusCode.NOT_FOUND),
        "FAILED_PRECONDITION": Error(StatusCode.FAILED_PRECONDITION),
        "malformed": Malformed,
    }
    h.storage.push_register(answers[reply])
    h.scheduler.push(Assign(a1))
    delivered = trio.Event()
    answer_storage = h.storage.register_task_instance

    async def late_register(*args: Any) -> ExecutionContext:
        # Storage has answered (journalled); the answer is handed over only after ``delivered``
        # and without a further checkpoint, so the stop cannot cancel the call any more.
        try:
            context: ExecutionContext | Exception = await answer_storage(*args)
        except (RpcError, ProtocolError) as error:
            context = error
        await delivered.wait()
        if isinstance(context, Exception):
            raise context
        return context

    h.storage.register_task_instance = late_register  # type: ignore[method-assign, assignment]
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(
            lambda: len(h.journal.calls("storage", "register_task_instance", Phase.END)) >= 1
        )
        delivered.set()
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.pool.executions == []
    assert h.storage.reports == []
    assert all(c.prev != rec(a1) for c in h.scheduler.calls)
    assert h.scheduler.shutdown_calls == [[]]
    assert "reply discarded" in h.runtime.explain(a1.key)
    h.check_teardown(outstanding=frozenset({rec(a1)}))


async def test_assignment_arriving_after_the_stop_is_neither_registered_nor_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 16 / M1: the reply was on its way when the stop came; its carried ack still counts."""
    h = Harness()
    a0, a1 = A(0), A(1)
    h.scheduler.push(Assign(a0), Assign(a1))
    h.storage.push_register(ctx("noop"))
    delivered = trio.Event()
    answer_scheduler = h.scheduler.next_task

    async def late_next_task(*args: Any) -> SchedulerAssignment | None:
        reply = await answer_scheduler(*args)
        if reply == a1:
            await delivered.wait()  # handed over without a further checkpoint
        return reply

    h.scheduler.next_task = late_next_task  # type: ignore[method-assign, assignment]
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.journal.calls("scheduler", "next_task", Phase.END)) >= 2)
        delivered.set()
        assert await h.stop_and_finish() is ExitCode.OK
    assert [c.prev for c in h.scheduler.calls] == [None, rec(a0)]
    assert [c.task_id for c in h.storage.register_calls] == [a0.assignment.task_id]
    assert len(h.storage.register_calls) == 1  # A1 never reached registration
    assert h.scheduler.shutdown_calls == [[]]  # rec(A0) went out on the OK call; no rec(A1)
    assert h.scheduler.duplicate_acks == []
    h.check_teardown(outstanding=frozenset({rec(a1)}))
