"""The monotonic session tracker (protocol.md section 3, rule 4).

Seeded by the registration reply, advanced only by heartbeat replies, never lowered. A lower
session in a heartbeat reply means storage went backwards: the caller evicts itself.
"""

from __future__ import annotations

import enum

from worker.model import SessionId

__all__ = ["SessionObservation", "SessionTracker"]


class SessionObservation(enum.Enum):
    """What one session seen in a liveness reply means for the tracker."""

    SAME = "same"
    ADVANCED = "advanced"
    REGRESSED = "regressed"


class SessionTracker:
    """Holds the highest storage session this worker has seen; it never decreases."""

    def __init__(self, seed: SessionId) -> None:
        self._current = seed

    @property
    def current(self) -> SessionId:
        """The session the worker currently believes storage is in."""
        return self._current

    def observe(self, session: SessionId) -> SessionObservation:
        """Take a heartbeat reply into account; a lower session leaves the tracker unchanged."""
        if session > self._current:
            self._current = session
            return SessionObservation.ADVANCED
        if session == self._current:
            return SessionObservation.SAME
        return SessionObservation.REGRESSED

    def is_stale(self, session: SessionId) -> bool:
        """Whether work pinned to ``session`` is stale (``session < tracker``)."""
        return session < self._current
