"""Boot paths, report contents, the story log and transition logging (protocol.md 6.1, 6.8)."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from tests.runtime.harness import BOUNDED_WAIT, A, Harness, ctx
from worker.core.machine import State
from worker.errors import StatusCode
from worker.exit_codes import ExitCode
from worker.model import ExecutorCrash, Success, Timeout
from worker.testing import Always, Assign, Error, Hang, Hold, Malformed, NoTask


@pytest.mark.parametrize(
    "reply", [Error(StatusCode.UNAVAILABLE), Malformed], ids=["error", "malformed"]
)
async def test_boot_registration_failure_exits_fatal_without_shutdown(
    autojump_clock: trio.testing.MockClock, reply: Error | object
) -> None:
    h = Harness()
    h.liveness.register_response = reply  # type: ignore[assignment]
    assert await h.runtime.run() is ExitCode.FATAL
    assert h.liveness.register_calls == ["0.0.0.0"]
    assert h.scheduler.next_task_count == 0
    assert h.scheduler.heartbeat_count == 0
    assert h.liveness.heartbeat_count == 0
    assert h.scheduler.shutdown_calls == []
    assert h.pool.closed
    assert h.runtime.machine.state is State.STOPPED


async def test_stop_during_boot_exits_ok_without_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    h.liveness.register_response = Hang(None)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.liveness.register_calls) == 1)
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.scheduler.next_task_count == 0
    assert h.scheduler.shutdown_calls == []
    assert h.pool.closed


async def test_stop_right_after_boot_sends_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.liveness.register_response = Hang(0.5)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count == 1)
        assert await h.stop_and_finish() is ExitCode.OK
    h.check_teardown()


async def test_outputs_too_large_become_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(max_send_bytes=100)
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("fibonacci", 10, instance=11))
    h.pool.push(Success(b"\x01\x00\x00\x00\x5a\x00\x00\x00" + b"\xc4\x58" + b"x" * 88))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.storage.wait_for_reports(1, BOUNDED_WAIT)
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.storage.success_reports == []
    [failure] = h.storage.failure_reports
    assert failure.report.error_message == (
        "in-task failure: OutputTooLarge: outputs too large (116 bytes > 100)"
    )
    h.check_teardown()


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (Timeout(200), "hard timeout (200 ms) exceeded"),
        (ExecutorCrash(signal=9), "executor crashed (exit_status = signal 9 (SIGKILL))"),
        (ExecutorCrash(exit_code=3), "executor crashed (exit_status = 3)"),
    ],
)
async def test_failed_outcomes_are_reported_with_exact_messages(
    autojump_clock: trio.testing.MockClock, outcome: Timeout | ExecutorCrash, message: str
) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("spin"))
    h.pool.push(outcome)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.storage.wait_for_reports(1, BOUNDED_WAIT)
        assert await h.stop_and_finish() is ExitCode.OK
    assert [a.report.error_message for a in h.storage.failure_reports] == [message]
    h.check_teardown()


async def test_story_explains_where_an_assignment_is(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.machine")  # transitions are DEBUG lines
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Error(StatusCode.UNAVAILABLE), ctx("fibonacci", 10))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) == 1)
        events = [entry.event for entry in h.runtime.story(a1.key)]
        assert events[0] == "received"
        assert "Awaiting -> Registering" in events
        assert "register: transient failure" in events
        assert events[-1] == "Registering -> Executing"
        h.pool.release()
        await h.storage.wait_for_reports(1, BOUNDED_WAIT)
        assert await h.stop_and_finish() is ExitCode.OK
    assert "reported" in [entry.event for entry in h.runtime.story(a1.key)]
    assert "Registering -> Executing (registered)" in h.runtime.explain(a1.key)
    lines = [r for r in caplog.records if r.name == "worker.machine"]
    assert lines
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert set(fields) == {"slot", "from", "to", "trigger", "assignment", "session"}
    assert any(r.fields["assignment"] == "3/1" for r in lines)  # type: ignore[attr-defined]
    h.check_teardown()


async def test_shutdown_transient_errors_are_retried_within_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(shutdown_budget_sec=1.0)
    h.scheduler.shutdown_script.push(Error(StatusCode.UNAVAILABLE), Error(StatusCode.NOT_FOUND))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count == 1)
        assert await h.stop_and_finish() is ExitCode.OK  # Shutdown errors never change the code
    assert h.scheduler.shutdown_calls == [[], []]  # UNAVAILABLE retried; NOT_FOUND is final
    starts = [e.time for e in h.journal.calls("scheduler", "shutdown")]
    assert 0.040 <= starts[1] - starts[0] <= 0.050


async def test_shutdown_retries_stop_at_the_budget(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(shutdown_budget_sec=1.0)
    h.scheduler.shutdown_script.push(Always(Error(StatusCode.UNAVAILABLE)))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count == 1)
        h.stop()
        stopped = trio.current_time()
        assert await h.finish() is ExitCode.OK
        assert 1.0 <= trio.current_time() - stopped <= 1.0 + 1e-6
    assert 2 <= len(h.scheduler.shutdown_calls) <= 8


async def test_forced_stop_logs_each_abandoned_report(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1)), Assign(A(2)))
    h.storage.push_register(ctx("fibonacci", 1, instance=21), ctx("spin", instance=22))
    h.storage.success_script.push(Always(Error(StatusCode.UNAVAILABLE)))
    h.pool.push(Success(b"\x00\x00\x00\x00"), Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) == 2 and len(h.storage.success_reports) >= 2)
        h.stop()
        h.force()
        assert await h.finish() is ExitCode.FORCED
    abandoned = [r for r in caplog.records if r.message == "report abandoned by a forced stop"]
    assert len(abandoned) == 1
    assert abandoned[0].levelno == logging.ERROR
    fields = abandoned[0].fields  # type: ignore[attr-defined]
    assert (fields["job_id"], fields["task_id"], fields["task_instance_id"]) == (7, "Index(0)", 21)
    assert h.pool.holds_cancelled == 1
    assert h.scheduler.shutdown_calls == [[A(2).record]]  # A1's record went out with NextTask #2
    h.check_teardown()


async def test_zero_poll_wait_paces_no_task_replies(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(poll_wait_ms=0)
    h.scheduler.push(Always(NoTask))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await trio.sleep(1)
        assert await h.stop_and_finish() is ExitCode.OK
    calls = h.scheduler.calls
    assert 3 <= len(calls) <= 12
    assert all(c.wait_time_ms == 0 for c in calls)
    for n, (before, after) in enumerate(itertools.pairwise(calls[:-1])):
        assert before.ended is not None
        low, high = h.settings.backoff.bounds(n)
        assert low - 1e-9 <= after.started - before.ended <= high + 1e-9
    h.check_teardown()


async def test_stale_state_after_transient_failures_is_logged_as_possible_orphan(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Error(StatusCode.UNAVAILABLE), Error(StatusCode.FAILED_PRECONDITION))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count == 2)
        assert await h.stop_and_finish() is ExitCode.OK
    orphans = [r for r in caplog.records if "possible orphan" in r.message]
    assert [r.levelno for r in orphans] == [logging.ERROR]
    assert h.scheduler.calls[1].prev == a1.record
    h.check_teardown()
