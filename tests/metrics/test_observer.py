"""The metrics observer over the real runtime and the in-process fakes, on trio's MockClock.

Wired as the service wires it: the port decorators around the fakes and the
:class:`~worker.metrics.observer.MetricsObserver` given to the runtime. Every value is read
back from the metrics registry, the probes and the ``/assignments`` snapshot, and checked
against protocol.md sections 6.12 and 6.13.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import trio
import trio.testing

from tests.metrics.scraping import get, registry_samples, slot_states
from tests.runtime.harness import BOUNDED_WAIT, A, Harness, ctx
from worker.core.lifecycle import AssignmentState
from worker.core.machine import State
from worker.core.observer import HeartbeatLoopStopped, StoryNoted
from worker.core.story import StoryEntry, key_text
from worker.errors import StatusCode
from worker.exit_codes import ExitCode
from worker.metrics import MetricsServer, WorkerMetrics
from worker.metrics.instrumented import PortInstruments
from worker.metrics.observer import MetricsObserver
from worker.testing import Assign, Error, Hold, Malformed, NoTask


class Observed:
    """A harness whose runtime has instrumented ports and a metrics observer."""

    def __init__(self, *, slots: int = 2, recent_assignments: int = 32) -> None:
        self.h = h = Harness(slots=slots, drain_timeout_sec=30.0)
        self.metrics = WorkerMetrics(slots=slots)
        self.observer = MetricsObserver(
            self.metrics, slots=slots, recent_assignments=recent_assignments
        )
        self.instruments = PortInstruments(self.metrics)
        h.runtime = h.runtime_with(observer=self.observer, wrap=self.instruments)

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        assert found is not None, f"no sample {name}{labels}"
        return found

    def slot_state(self, slot: int) -> str:
        """The one state whose ``worker_slot_state`` series is 1 for ``slot``."""
        return slot_states(registry_samples(self.metrics.registry), slot + 1)[slot]

    async def until(self, predicate: Callable[[], bool]) -> None:
        await self.h.until(predicate)

    def reaches(self, name: str, value: float) -> Callable[[], bool]:
        """Whether the unlabelled metric ``name`` is at ``value`` now (for :meth:`until`)."""
        return lambda: self.value(name) == value


async def test_two_long_tasks_make_two_slots_busy_and_records_follow_the_polls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    o = Observed(slots=2)
    h = o.h
    first, second = A(1), A(2, index=1)
    # After the tasks, each slot's poll carries one record and returns OK with no task.
    h.scheduler.push(Assign(first), Assign(second), NoTask, NoTask)
    h.storage.push_register(ctx("echo", 1), ctx("echo", 2))
    h.pool.push(Hold, Hold)
    assert [o.slot_state(slot) for slot in (0, 1)] == ["Idle", "Idle"]
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await o.until(lambda: len(h.pool.requests) == 2)
        # Both tasks run: two slots hold an assignment (6.12's "busy"), both records pending.
        assert o.value("worker_slots_busy") == 2
        assert [o.slot_state(slot) for slot in (0, 1)] == ["Executing", "Executing"]
        assert o.value("worker_records_pending") == 2
        assert o.value("worker_records_acknowledged_total") == 0
        assert o.metrics.health.ready
        executing = o.observer.assignments()["slots"]
        assert {slot["assignment"] for slot in executing} == {
            key_text(first.key),
            key_text(second.key),
        }
        assert {slot["state"] for slot in executing} == {"Executing"}

        h.pool.release()
        await o.until(lambda: o.value("worker_slots_busy") == 1)
        h.pool.release()
        await o.until(lambda: o.value("worker_slots_busy") == 0)
        # Each freed slot polls again, carrying one record: an OK answer acknowledges it.
        await o.until(lambda: o.value("worker_records_acknowledged_total") == 2)
        assert o.value("worker_records_pending") == 0
        assert sorted(o.slot_state(slot) for slot in (0, 1)) == ["Awaiting", "Awaiting"]
        h.stop()
        # The drain's first notice ends readiness, before the runtime returns.
        assert not o.metrics.health.ready
        assert await h.finish() is ExitCode.OK
    assert [o.slot_state(slot) for slot in (0, 1)] == ["Stopped", "Stopped"]
    assert o.value("worker_slots_busy") == 0
    assert o.value("worker_ready") == 0
    assert o.metrics.health.liveness_problem() is None  # the loops were asked to stop
    assert o.value("worker_reports_sent_total") == 2
    assert o.value("worker_tasks_finished_total", outcome="succeeded") == 2
    h.check_teardown()


async def test_a_drain_keeps_a_running_task_busy_until_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    o = Observed(slots=1)
    h = o.h
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("echo", 1))
    h.pool.push(Hold)
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await o.until(lambda: len(h.pool.requests) == 1)
        h.stop()
        assert not o.metrics.health.ready
        # Draining with a task still running is busy (6.12).
        assert o.slot_state(0) == "Draining"
        assert o.value("worker_slots_busy") == 1
        assert o.observer.assignments()["slots"] == [
            {"slot": 0, "state": "Draining", "assignment": key_text(A(1).key)}
        ]
        h.pool.release()
        assert await h.finish() is ExitCode.OK
    assert o.value("worker_slots_busy") == 0
    stopped = {"slot": 0, "state": "Stopped", "assignment": None}
    assert o.observer.assignments()["slots"] == [stopped]
    # Shutdown carried the record: acknowledged.
    assert o.value("worker_records_acknowledged_total") == 1
    assert o.value("worker_records_pending") == 0
    h.check_teardown()


async def test_an_eviction_ends_readiness_and_stays_healthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    o = Observed(slots=1)
    h = o.h
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        await o.until(lambda: o.metrics.health.ready)
        h.liveness.push_heartbeat(Error(StatusCode.FAILED_PRECONDITION))
        assert await h.finish() is ExitCode.EVICTED
    # Nobody called the service's draining_began: the core's DrainingBegan ended readiness.
    assert not o.metrics.health.ready
    assert o.metrics.health.liveness_problem() is None  # a loop ended, but evicted: healthy
    assert o.value("worker_heartbeat_failures_total", loop="storage") == 1


def test_a_heartbeat_loop_ending_while_neither_stopping_nor_evicted_is_unhealthy() -> None:
    # The runtime has no way to end a loop on its own while serving (a loop ends when the
    # core stops it or on an eviction), so the notice is handed to the observer directly.
    metrics = WorkerMetrics()
    observer = MetricsObserver(metrics, slots=1, clock=lambda: 0.0)
    observer.notice(HeartbeatLoopStopped("storage", stopping=True, evicted=False))
    observer.notice(HeartbeatLoopStopped("scheduler", stopping=False, evicted=True))
    assert metrics.health.liveness_problem() is None
    observer.notice(HeartbeatLoopStopped("scheduler", stopping=False, evicted=False))
    assert metrics.health.liveness_problem() == "the scheduler heartbeat loop ended unexpectedly"


async def test_assignments_serves_slots_and_the_recent_stories_newest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    o = Observed(slots=1, recent_assignments=2)
    h = o.h
    assignments = [A(n, index=n) for n in range(1, 4)]
    h.scheduler.push(*(Assign(a) for a in assignments))
    h.storage.push_register(*(ctx("echo", n) for n in range(1, 4)))
    with MetricsServer(o.metrics, "127.0.0.1", 0, o.observer.assignments) as server:
        async with trio.open_nursery() as nursery:
            h.start(nursery)
            await h.storage.wait_for_reports(3, BOUNDED_WAIT)
            assert await h.stop_and_finish() is ExitCode.OK
        # Blocking is fine here: the runtime is done, and the server runs on its own thread.
        status, content_type, body = get(server.port, "/assignments")
    assert status == 200
    assert content_type == "application/json"
    reply = json.loads(body)
    assert reply["slots"] == [{"slot": 0, "state": "Stopped", "assignment": None}]
    recent = reply["recent"]
    # Bounded to the two most recent, newest first.
    assert [item["assignment"] for item in recent] == [
        key_text(assignments[2].key),
        key_text(assignments[1].key),
    ]
    assert {item["state"] for item in recent} == {AssignmentState.ACKNOWLEDGED.value}
    story = [entry["event"] for entry in recent[0]["story"]]
    assert story[0] == "received"
    assert "slot 0: Awaiting -> Registering" in story
    assert "Registering -> Registered" in story
    assert "Executing -> OutcomeReported" in story
    assert story[-1] == "OutcomeReported -> Acknowledged"
    assert all(set(entry) == {"time", "event", "detail"} for entry in recent[0]["story"])
    times = [entry["time"] for entry in recent[0]["story"]]
    assert times == sorted(times)


def test_the_snapshot_is_bounded_per_story() -> None:
    metrics = WorkerMetrics()
    observer = MetricsObserver(metrics, slots=1, clock=lambda: 1.0, story_entries=3)
    key = A(1).key
    for n in range(5):
        observer.notice(StoryNoted(key, StoryEntry(float(n), f"attempt {n}")))
    (only,) = observer.snapshot.recent
    assert [entry.event for entry in only.story] == ["attempt 2", "attempt 3", "attempt 4"]
    assert observer.snapshot.slots[0].state is State.IDLE


async def test_consumed_assignments_that_never_run_are_recorded_without_taking_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stale assignment, and ones storage refuses with NOT_FOUND or FAILED_PRECONDITION, are
    consumed: each gives a pending record and never runs; a malformed OK poll that carried one
    still acknowledges it."""
    o = Observed(slots=1)
    h = o.h
    stale, missing, terminal = A(1, session=0), A(2, index=1), A(3, index=2)
    h.storage.script_register(missing.assignment.task_id, (Error(StatusCode.NOT_FOUND),))
    h.storage.script_register(terminal.assignment.task_id, (Error(StatusCode.FAILED_PRECONDITION),))
    async with trio.open_nursery() as nursery:
        h.start(nursery)
        h.scheduler.push(Assign(stale))  # session 0 < 1: dropped without a storage call
        await o.until(lambda: o.value("worker_records_pending") == 1)
        assert o.value("worker_slots_busy") == 0
        assert h.storage.register_calls == []
        h.scheduler.push(Malformed)  # completed: the record it carried is delivered
        await o.until(lambda: o.value("worker_records_acknowledged_total") == 1)
        assert o.value("worker_records_pending") == 0
        for registered, (consumed, acknowledged) in enumerate(((missing, 2), (terminal, 3)), 1):
            h.scheduler.push(Assign(consumed))
            # Storage refused it: recorded, and carried by the next poll.
            await o.until(lambda: o.value("worker_records_pending") == 1)
            assert len(h.storage.register_calls) == registered
            assert o.value("worker_slots_busy") == 0
            h.scheduler.push(NoTask)
            await o.until(o.reaches("worker_records_acknowledged_total", acknowledged))
        assert [call.task_id for call in h.storage.register_calls] == [
            missing.assignment.task_id,
            terminal.assignment.task_id,
        ]
        assert h.pool.requests == []
        assert await h.stop_and_finish() is ExitCode.OK
    h.check_teardown()
