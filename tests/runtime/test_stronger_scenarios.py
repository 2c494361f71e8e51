"""S1-S10: the stronger guarantees (scenarios.md section 3), on the fakes under MockClock.

The real-pool parts of S7 (and S8's [pool] variant) belong to the executor suite; here S7 and
S8 run their fake-able parts with FakePool ``Hold``.
"""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from tests.runtime.harness import BOUNDED_WAIT, HEARTBEAT, TIGHT_WAIT, A, Harness, ctx, rec
from worker.errors import PoolBroken, StatusCode
from worker.exit_codes import ExitCode
from worker.model import ExecutionRequest, Outcome
from worker.runtime import RuntimeSettings
from worker.testing import Always, Assign, Error, Hang, Hold, Malformed, NoTask, Phase


def _register_ends(h: Harness) -> list[float]:
    return [e.time for e in h.journal.calls("storage", "register_task_instance", Phase.END)]


def _shutdown_start(h: Harness) -> float:
    [entry] = h.journal.calls("scheduler", "shutdown")
    return entry.time


def _shutdown_seq(h: Harness) -> int:
    [entry] = h.journal.calls("scheduler", "shutdown")
    return entry.seq


async def test_s1_ack_survives_failed_next_task(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(apply_acks_on_error=False)
    a1, a2 = A(1), A(2)
    h.scheduler.push(Assign(a1), Error(StatusCode.UNAVAILABLE), Assign(a2))
    h.storage.push_register(ctx("fibonacci", 10), ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 4)
        assert await h.stop_and_finish() is ExitCode.OK
    assert [c.prev for c in h.scheduler.calls] == [None, rec(a1), rec(a1), rec(a2)]
    assert h.scheduler.shutdown_calls == [[rec(a2)]]
    h.check_teardown()


async def test_s1b_ack_survives_cancelled_next_task(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(apply_acks_on_error=False)
    a1 = A(1)
    h.scheduler.push(Assign(a1), Hang(None))
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 2)
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.scheduler.calls[1].prev == rec(a1)
    assert h.scheduler.calls[1].outcome == "cancelled"
    assert h.scheduler.shutdown_calls == [[rec(a1)]]
    h.check_teardown()


async def test_s1c_malformed_reply_completes_ack_then_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    a1, a2 = A(1), A(2)
    h.scheduler.push(Assign(a1), Malformed, Assign(a2), NoTask, Hang(None))
    h.storage.push_register(ctx("fibonacci", 10), ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 5 and len(h.storage.reports) >= 1)
        assert await h.stop_and_finish() is ExitCode.OK
    calls = h.scheduler.calls
    assert [c.prev for c in calls[:5]] == [None, rec(a1), None, rec(a2), None]
    assert calls[1].outcome == "malformed"
    assert calls[1].ended is not None
    assert calls[2].started - calls[1].ended >= 0.040
    assert [c.task_id for c in h.storage.register_calls] == [a1.assignment.task_id] * 2
    assert len(h.pool.requests) == 2
    assert len(h.storage.success_reports) == 2
    assert h.scheduler.duplicate_acks == []
    assert h.scheduler.shutdown_calls == [[]]
    h.check_teardown()


async def test_s2_ack_never_repeated_across_idle_polls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1), *[NoTask] * 5, Hang(None))
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 7)
        assert await h.stop_and_finish() is ExitCode.OK
    calls = h.scheduler.calls
    assert calls[1].prev == rec(a1)
    assert [c.prev for c in calls[2:7]] == [None] * 5
    for before, after in itertools.pairwise(calls[1:7]):
        assert before.outcome == "no_task"
        assert before.ended is not None
        assert after.started - before.ended <= 0.050
    assert h.scheduler.duplicate_acks == []
    h.check_teardown()


async def _drain_with_held_report(h: Harness) -> ExitCode:
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("fibonacci", 10))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) >= 1)
        h.stop()
        await trio.sleep(0.1)
        h.pool.release()
        return await h.finish(within=h.settings.drain_timeout_sec + 2)


async def test_s3_report_retried_and_completes_before_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    h.storage.success_script.push(
        Error(StatusCode.UNAVAILABLE), Error(StatusCode.DEADLINE_EXCEEDED), None
    )
    assert await _drain_with_held_report(h) is ExitCode.OK
    attempts = h.storage.success_reports
    assert [a.outcome for a in attempts] == ["UNAVAILABLE", "DEADLINE_EXCEEDED", "OK"]
    assert len({a.report for a in attempts}) == 1
    gaps = [b.started - a.ended for a, b in itertools.pairwise(attempts) if a.ended]
    assert len(gaps) == 2
    assert gaps[1] >= gaps[0]
    ok_end = attempts[2].ended
    assert ok_end is not None
    assert ok_end <= _shutdown_start(h)
    assert h.scheduler.shutdown_calls == [[rec(A(1))]]
    h.check_teardown()


async def test_s3_not_found_gives_one_attempt(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.storage.success_script.push(Error(StatusCode.NOT_FOUND))
    assert await _drain_with_held_report(h) is ExitCode.OK
    assert [a.outcome for a in h.storage.success_reports] == ["NOT_FOUND"]
    h.check_teardown()


async def test_s3_report_given_up_at_drain_deadline(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(drain_timeout_sec=1)
    h.storage.success_script.push(Always(Error(StatusCode.UNAVAILABLE)))
    assert await _drain_with_held_report(h) is ExitCode.FORCED
    assert h.stopped_at is not None
    assert 1.0 <= _shutdown_start(h) - h.stopped_at <= 1.0 + TIGHT_WAIT
    assert h.scheduler.shutdown_calls == [[rec(A(1))]]
    assert h.storage.success_reports[-1].outcome == "cancelled" or all(
        a.outcome == "UNAVAILABLE" for a in h.storage.success_reports
    )
    h.check_teardown()


async def test_s4_heartbeats_continue_while_draining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("fibonacci", 10))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) >= 1)
        t0 = trio.current_time()
        counts = (h.liveness.heartbeat_count, h.scheduler.heartbeat_count)
        h.stop()
        await trio.sleep(1)
        h.pool.release()
        assert await h.finish() is ExitCode.OK
    shutdown_at = _shutdown_start(h)
    assert h.liveness.heartbeat_count - counts[0] >= 8
    assert h.scheduler.heartbeat_count - counts[1] >= 8
    assert h.calls_started("scheduler", "next_task", t0) == 0
    assert h.calls_started("storage", "register_task_instance", t0) == 0
    shutdown_seq = _shutdown_seq(h)
    assert all(e.seq < shutdown_seq for e in h.journal.calls(method="heartbeat"))
    assert all(e.seq < shutdown_seq for e in h.journal.calls("storage", "report_task_success"))
    assert shutdown_at >= t0
    h.check_teardown(outstanding=frozenset())


async def test_s5_backoff_instead_of_hot_loop(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    t0 = trio.current_time()
    a1 = A(1)
    h.scheduler.push(Always(Error(StatusCode.UNAVAILABLE), until=t0 + 3), Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.storage.register_calls) >= 1, within=5)
        registered_at = h.storage.register_calls[0].time
        await h.until(lambda: any(c.prev == rec(a1) for c in h.scheduler.calls))
        assert await h.stop_and_finish() is ExitCode.OK
    failing = [c for c in h.scheduler.calls if c.outcome == "UNAVAILABLE"]
    assert len(failing) <= 12
    policy = h.settings.backoff
    for n, (before, after) in enumerate(itertools.pairwise(failing)):
        assert before.ended is not None
        low, high = policy.bounds(n)
        assert low - 1e-9 <= after.started - before.ended <= high + 1e-9
        assert after.started - before.ended <= 0.5 + 1e-9
    assert registered_at - (t0 + 3) <= 0.5 + TIGHT_WAIT
    # Heartbeat rates are unaffected: one per HEARTBEAT over the outage.
    in_outage = [t for t in h.liveness.heartbeat_times if t < t0 + 3]
    assert len(in_outage) >= int(3 / HEARTBEAT) - 1
    assert len([t for t in h.scheduler.heartbeat_times if t < t0 + 3]) >= int(3 / HEARTBEAT) - 1
    assert 2.0 <= RuntimeSettings(1, 1, 1000).backoff_max_sec <= 5.0
    h.check_teardown()


@pytest.mark.parametrize(
    "code", [StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.INTERNAL]
)
async def test_s6_registration_transport_error_retried_never_acked(
    autojump_clock: trio.testing.MockClock, code: StatusCode
) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Error(code), Error(code), ctx("fibonacci", 10))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(
            lambda: len(h.storage.success_reports) >= 1 and h.scheduler.next_task_count >= 2
        )
        assert await h.stop_and_finish() is ExitCode.OK
    calls = h.storage.register_calls
    assert len(calls) == 3
    assert len({(c.job_id, c.task_id, c.em_id, c.session_id) for c in calls}) == 1
    ends = _register_ends(h)
    assert calls[1].time - ends[0] >= 0.040
    assert calls[2].time - ends[1] >= 0.080
    # While registration kept failing no NextTask started and rec(A1) was in no request.
    assert h.scheduler.calls[1].started >= ends[2]
    assert h.scheduler.calls[0].prev is None
    assert len(h.pool.requests) == 1
    assert len(h.storage.success_reports) == 1
    assert h.scheduler.calls[1].prev == rec(a1)
    # Both heartbeats kept their rate throughout (no refresh here: the session never changed).
    for times in (h.liveness.heartbeat_times, h.scheduler.heartbeat_times):
        assert len(times) >= 2
        assert all(abs(b - a - HEARTBEAT) < 1e-9 for a, b in itertools.pairwise(times))
    h.check_teardown()


async def test_s6_stop_while_registration_fails(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Always(Error(StatusCode.UNAVAILABLE)))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(_register_ends(h)) >= 2)
        stopped, stop_seq = trio.current_time(), len(h.journal.entries)
        assert await h.stop_and_finish() is ExitCode.OK
        assert trio.current_time() - stopped <= TIGHT_WAIT
    registers = h.journal.calls("storage", "register_task_instance")
    assert [e for e in registers if e.seq >= stop_seq] == []
    assert h.pool.requests == []
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[]]
    h.check_teardown(outstanding=frozenset({rec(a1)}))


async def test_s6_stale_while_registration_fails(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Always(Error(StatusCode.UNAVAILABLE)))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(_register_ends(h)) >= 1)
        h.liveness.set_default_session(2)
        await h.until(
            lambda: any(e.result == 2 for e in h.journal.calls("liveness", "heartbeat", Phase.END))
        )
        [bumped] = [
            e for e in h.journal.calls("liveness", "heartbeat", Phase.END) if e.result == 2
        ][:1]
        await h.until(lambda: h.scheduler.next_task_count >= 2)
        assert await h.stop_and_finish() is ExitCode.OK
    after = [e for e in h.journal.calls("storage", "register_task_instance") if e.seq > bumped.seq]
    assert len(after) <= 1
    assert h.pool.requests == []
    assert h.storage.reports == []
    assert h.scheduler.calls[1].prev == rec(a1)
    h.check_teardown()


async def test_s6b_invalid_argument_is_fatal(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Error(StatusCode.INVALID_ARGUMENT))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        assert await h.finish() is ExitCode.FATAL
    assert h.pool.requests == []
    assert h.scheduler.shutdown_calls == [[]]
    h.check_teardown(outstanding=frozenset({rec(a1)}))


async def test_malformed_context_is_recorded_then_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Malformed)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        assert await h.finish() is ExitCode.FATAL
    assert h.pool.requests == []
    assert h.scheduler.shutdown_calls == [[rec(a1)]]
    h.check_teardown()


async def _forced_during_hold(h: Harness, *, force_after: float | None) -> tuple[float, float]:
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("spin"))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) >= 1)
        h.stop()
        stopped = trio.current_time()
        if force_after is not None:
            await trio.sleep(force_after)
            h.force()
        forced = trio.current_time() if force_after is not None else stopped
        assert await h.finish(within=BOUNDED_WAIT + h.settings.drain_timeout_sec) is ExitCode.FORCED
    return stopped, forced


async def test_s7_second_stop_forces(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    _, forced = await _forced_during_hold(h, force_after=0.2)
    [execution] = h.pool.executions
    assert execution.outcome == "cancelled"
    assert execution.ended is not None
    assert execution.ended - forced <= 1.0
    assert h.pool.holds_cancelled == 1
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(A(1))]]
    shutdown_seq = _shutdown_seq(h)
    assert all(e.seq < shutdown_seq for e in h.journal.calls(method="heartbeat"))
    last_heartbeat = max(e.time for e in h.journal.calls(method="heartbeat"))
    assert _shutdown_start(h) - last_heartbeat <= HEARTBEAT + 1e-9
    h.check_teardown()


async def test_s7_drain_deadline_forces(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(drain_timeout_sec=0.5)
    stopped, _ = await _forced_during_hold(h, force_after=None)
    [execution] = h.pool.executions
    assert execution.outcome == "cancelled"
    assert execution.ended is not None
    assert 0.5 <= execution.ended - stopped <= 0.5 + TIGHT_WAIT
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(A(1))]]
    h.check_teardown()


@pytest.mark.parametrize(
    "answer",
    [Error(StatusCode.FAILED_PRECONDITION), Error(StatusCode.INVALID_ARGUMENT), 4],
    ids=["marked-dead", "illegal-id", "lower-session"],
)
async def test_s8_eviction_stops_at_once(
    autojump_clock: trio.testing.MockClock, answer: Error | int
) -> None:
    h = Harness(initial_session=5)
    a1 = A(1, session=5)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("spin"))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) >= 1)
        h.liveness.push_heartbeat(answer)
        assert await h.finish() is ExitCode.EVICTED
    evicting = next(
        e
        for e in h.journal.calls("liveness", "heartbeat", Phase.END)
        if e.result in ("FAILED_PRECONDITION", "INVALID_ARGUMENT", 4)
    )
    later = [e for e in h.journal.calls() if e.seq > evicting.seq]
    assert not [e for e in later if e.method in ("next_task", "register_task_instance")]
    assert not [e for e in later if (e.fake, e.method) == ("liveness", "heartbeat")]
    [execution] = h.pool.executions
    assert execution.outcome == "cancelled"
    assert execution.ended is not None
    assert execution.ended - evicting.time <= TIGHT_WAIT
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(a1)]]
    h.check_teardown()


async def test_s8_idle_eviction(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 1)
        h.liveness.push_heartbeat(Error(StatusCode.FAILED_PRECONDITION))
        evicted_from = trio.current_time()
        assert await h.finish() is ExitCode.EVICTED
    assert h.scheduler.calls[0].outcome == "cancelled"
    assert h.scheduler.shutdown_calls == [[]]
    assert _shutdown_start(h) - evicted_from <= BOUNDED_WAIT
    h.check_teardown()


async def test_s9_stale_outcome_not_reported(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.pool.requests) >= 1)
        h.liveness.push_heartbeat(2)
        await h.until(
            lambda: any(e.result == 2 for e in h.journal.calls("liveness", "heartbeat", Phase.END))
        )
        h.pool.release()
        await h.until(lambda: h.scheduler.next_task_count >= 2)
        assert await h.stop_and_finish() is ExitCode.OK
    assert h.storage.reports == []
    carried = [c for c in h.scheduler.calls if c.prev == rec(a1) and c.ok]
    in_shutdown = sum(1 for records in h.scheduler.shutdown_calls if rec(a1) in records)
    assert len(carried) + in_shutdown == 1
    h.check_teardown()


async def test_s10_broken_pool_is_fatal(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("fibonacci", 10))
    h.pool.raise_on_execute(PoolBroken("crash loop"))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        assert await h.finish() is ExitCode.FATAL
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(a1)]]
    h.check_teardown()


async def test_registration_retry_has_no_attempt_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 20: a registration failing for 30 s keeps being re-sent, then executes once."""
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(Always(Error(StatusCode.UNAVAILABLE), until=30.0), ctx("noop"))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: h.scheduler.next_task_count >= 2, within=40.0)
        assert await h.stop_and_finish() is ExitCode.OK
    calls = h.storage.register_calls
    # 30 s of failures at the 500 ms cap: far more attempts than any cap would allow.
    assert len(calls) >= 55
    assert len({(c.job_id, c.task_id, c.em_id, c.session_id) for c in calls}) == 1
    assert calls[-1].time >= 30.0
    assert len(h.pool.requests) == 1
    assert h.scheduler.calls[0].prev is None
    assert h.scheduler.calls[1].prev == rec(a1)
    h.check_teardown()


async def test_report_gate_is_checked_before_every_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 27: the session advances during a report's backoff, so no further attempt is sent."""
    h = Harness(storage_heartbeat_sec=0.01)
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("noop"))
    h.storage.success_script.push(Error(StatusCode.UNAVAILABLE))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: [a.outcome for a in h.storage.success_reports] == ["UNAVAILABLE"])
        failed_at = trio.current_time()
        h.liveness.set_default_session(2)  # seen by the next heartbeat, within 10 ms
        await trio.sleep(1.0)  # far beyond the 40-50 ms backoff of the retry
        assert await h.stop_and_finish() is ExitCode.OK
    assert len(h.storage.success_reports) == 1
    assert h.storage.failure_reports == []
    bumped = [e for e in h.journal.calls("liveness", "heartbeat", Phase.END) if e.result == 2]
    assert bumped
    assert bumped[0].time - failed_at < 0.04
    assert "report dropped" in h.runtime.explain(a1.key)
    h.check_teardown()


async def test_s7_outcome_arriving_with_the_force_is_not_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """6.9 step 4: the outcome was on its way back when the force came; it is not reported."""
    h = Harness()
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(ctx("noop"))
    delivered = trio.Event()
    run_in_pool = h.pool.execute

    async def late_execute(request: ExecutionRequest) -> Outcome:
        outcome = await run_in_pool(request)
        await delivered.wait()  # handed over without a further checkpoint
        return outcome

    h.pool.execute = late_execute  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await h.until(lambda: len(h.journal.calls("pool", "execute", Phase.END)) >= 1)
        delivered.set()
        h.stop()
        h.force()
        assert await h.finish() is ExitCode.FORCED
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(a1)]]  # registered means consumed
    assert "outcome dropped" in h.runtime.explain(a1.key)
    h.check_teardown()
