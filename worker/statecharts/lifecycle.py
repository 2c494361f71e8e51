"""The assignment table lives in the core (:mod:`worker.core.lifecycle`), which enforces it."""

from __future__ import annotations

from worker.core.lifecycle import (
    ASSIGNMENT_FINAL_STATES,
    ASSIGNMENT_INITIAL_STATE,
    ASSIGNMENT_TRANSITIONS,
    HELD_IN,
    AssignmentEvent,
    AssignmentMove,
    AssignmentState,
    overlap_errors,
)

__all__ = [
    "ASSIGNMENT_FINAL_STATES",
    "ASSIGNMENT_INITIAL_STATE",
    "ASSIGNMENT_TRANSITIONS",
    "HELD_IN",
    "AssignmentEvent",
    "AssignmentMove",
    "AssignmentState",
    "overlap_errors",
]
