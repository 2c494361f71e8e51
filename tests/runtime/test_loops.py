"""The heartbeat loops alone: period, refresh coalescing, skipped ticks, eviction."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from worker.core.session import SessionTracker
from worker.errors import StatusCode
from worker.model import ExecutionManagerId, SessionId
from worker.runtime.heartbeat import run_scheduler_heartbeats
from worker.runtime.liveness import LivenessLoop
from worker.testing import Error, FakeLiveness, FakeScheduler, Hang, Journal

EM = ExecutionManagerId(1)


def _loop(liveness: FakeLiveness, evictions: list[str], interval: float = 1.0) -> LivenessLoop:
    return LivenessLoop(liveness, EM, SessionTracker(SessionId(1)), interval, evictions.append)


async def test_refreshes_in_flight_cause_exactly_one_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    liveness = FakeLiveness(Journal(), em_id=1)
    evictions: list[str] = []
    loop = _loop(liveness, evictions)
    liveness.push_heartbeat(Hang(0.1))  # the first heartbeat takes 100 ms
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(0.05)  # the first heartbeat is in flight
        for _ in range(3):
            loop.request_refresh()
        await trio.sleep(0.5)
        assert liveness.heartbeat_times == [0.0, 0.1]
        await trio.sleep(0.7)  # the next scheduled one is a full period after the refresh
        assert liveness.heartbeat_times == [0.0, 0.1, 1.1]
        loop.request_refresh()
        loop.request_refresh()
        await trio.sleep(0.1)
        assert len(liveness.heartbeat_times) == 4
        assert abs(liveness.heartbeat_times[3] - 1.25) < 1e-9  # at once, coalesced
        nursery.cancel_scope.cancel()
    assert evictions == []


async def test_missed_ticks_are_skipped_not_burst(autojump_clock: trio.testing.MockClock) -> None:
    liveness = FakeLiveness(Journal(), em_id=1)
    liveness.push_heartbeat(Hang(0.35), Error(StatusCode.UNAVAILABLE))
    loop = _loop(liveness, [], interval=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(0.42)
        nursery.cancel_scope.cancel()
    # 0.0 (took 0.35 s), then at once 0.35 (the UNAVAILABLE is only logged), then 0.45 ...
    assert liveness.heartbeat_times == [0.0, 0.35]


async def test_eviction_ends_the_loop(autojump_clock: trio.testing.MockClock) -> None:
    for answer in (Error(StatusCode.FAILED_PRECONDITION), Error(StatusCode.INVALID_ARGUMENT), 0):
        liveness = FakeLiveness(Journal(), em_id=1)
        liveness.push_heartbeat(2, answer)
        evictions: list[str] = []
        loop = _loop(liveness, evictions, interval=0.1)
        with trio.fail_after(1):
            await loop.run()
        assert liveness.heartbeat_count == 2
        assert len(evictions) == 1


async def test_scheduler_heartbeat_errors_never_stop_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler = FakeScheduler(Journal())
    scheduler.heartbeat_script.push(Error(StatusCode.UNAVAILABLE), Error(StatusCode.INTERNAL))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_scheduler_heartbeats, scheduler, EM, 0.1)
        await trio.sleep(0.45)
        nursery.cancel_scope.cancel()
    assert scheduler.heartbeat_count == 5


async def test_scheduler_heartbeat_skips_missed_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler = FakeScheduler(Journal())
    scheduler.heartbeat_script.push(Hang(0.35))  # the first heartbeat takes 350 ms
    async with trio.open_nursery() as nursery:
        await nursery.start(run_scheduler_heartbeats, scheduler, EM, 0.1)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    # Three ticks were missed: one heartbeat right after the slow one, then the period again.
    assert scheduler.heartbeat_times == pytest.approx([0.0, 0.35, 0.45])
