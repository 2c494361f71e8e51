"""The session tracker, the acknowledgement ledger, the backoff policy and the story log."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.backoff import Backoff, BackoffPolicy
from worker.core.ledger import AckLedger, LedgerError
from worker.core.session import SessionObservation, SessionTracker
from worker.core.story import StoryLog
from worker.model import AssignmentId, SchedulerId, SessionId, TaskAssignmentRecord


def _rec(n: int) -> TaskAssignmentRecord:
    return TaskAssignmentRecord(AssignmentId(n), SchedulerId(3))


def test_tracker_is_monotonic() -> None:
    tracker = SessionTracker(SessionId(5))
    assert tracker.observe(SessionId(5)) is SessionObservation.SAME
    assert tracker.observe(SessionId(7)) is SessionObservation.ADVANCED
    assert tracker.observe(SessionId(6)) is SessionObservation.REGRESSED
    assert tracker.current == 7
    assert tracker.is_stale(SessionId(6))
    assert not tracker.is_stale(SessionId(7))


@given(st.lists(st.integers(min_value=0, max_value=20)))
def test_tracker_never_decreases(sessions: list[int]) -> None:
    tracker = SessionTracker(SessionId(3))
    for session in sessions:
        before = tracker.current
        tracker.observe(SessionId(session))
        assert tracker.current == max(before, session)


def test_ledger_carries_head_and_pops_only_on_completion() -> None:
    ledger = AckLedger()
    assert ledger.to_carry() is None
    ledger.record(_rec(0))  # id 0 is a real id
    ledger.record(_rec(1))
    assert ledger.to_carry() == _rec(0)
    # a failed call: nothing happens, the head is carried again
    assert ledger.to_carry() == _rec(0)
    ledger.carrier_completed(_rec(0))
    assert ledger.to_carry() == _rec(1)
    ledger.carrier_completed(None)
    assert ledger.pending == (_rec(1),)
    assert ledger.shutdown_batch() == (_rec(1),)
    assert ledger.consumption_order == (_rec(0), _rec(1))


def test_ledger_memory_is_bounded_by_its_history() -> None:
    ledger = AckLedger(history=3)
    for n in range(10):
        ledger.record(_rec(n))
        ledger.carrier_completed(ledger.to_carry())
    assert ledger.consumption_order == (_rec(7), _rec(8), _rec(9))
    assert ledger.pending == ()
    with pytest.raises(LedgerError):
        ledger.record(_rec(9))  # a repeat inside the window is still caught
    with pytest.raises(ValueError, match="history"):
        AckLedger(history=0)


def test_ledger_refuses_misuse() -> None:
    ledger = AckLedger()
    ledger.record(_rec(1))
    with pytest.raises(LedgerError):
        ledger.record(_rec(1))
    with pytest.raises(LedgerError):
        ledger.carrier_completed(_rec(2))
    ledger.shutdown_batch()
    with pytest.raises(LedgerError):
        ledger.record(_rec(3))
    with pytest.raises(LedgerError):
        ledger.to_carry()
    with pytest.raises(LedgerError):
        ledger.carrier_completed(_rec(2))  # closed or not, a carrier must have carried a record


def test_backoff_bounds_and_reset() -> None:
    policy = BackoffPolicy(0.05, 0.5)
    backoff = Backoff(policy, random.Random(1))
    sleeps = [backoff.next_delay() for _ in range(8)]
    for n, sleep in enumerate(sleeps):
        low, high = policy.bounds(n)
        assert low <= sleep <= high
    assert 0.040 <= sleeps[0] <= 0.050
    assert 0.080 <= sleeps[1] <= 0.100
    assert max(sleeps) <= 0.5
    backoff.reset()
    assert backoff.next_delay() <= 0.050
    assert policy.delay(10_000) == 0.5
    with pytest.raises(ValueError, match="initial_sec"):
        BackoffPolicy(1.0, 0.5)


def test_story_is_bounded() -> None:
    story = StoryLog(max_assignments=2, max_entries=3)
    for i in range(5):
        story.add((SchedulerId(3), AssignmentId(1)), float(i), f"e{i}")
    assert [e.event for e in story.story((SchedulerId(3), AssignmentId(1)))] == ["e2", "e3", "e4"]
    story.add((SchedulerId(3), AssignmentId(2)), 0.0, "x")
    story.add((SchedulerId(3), AssignmentId(3)), 0.0, "y")
    assert story.story((SchedulerId(3), AssignmentId(1))) == ()
    assert len(story) == 2
    assert "y" in story.explain((SchedulerId(3), AssignmentId(3)))
