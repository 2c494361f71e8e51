"""The observation hook: what the core lets an observer (metrics, a debugger) see.

The runtime takes one optional :class:`WorkerObserver`; from its single dispatch point it hands
the observer every :data:`Notice` the core produced while handling an event, in order, after the
event's actions were performed. Notices are plain frozen values; an observer must not raise and
must not block (it runs on the trio thread). Without an observer the core collects nothing.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from worker.core.decisions import StopCause
from worker.core.lifecycle import AssignmentEvent, AssignmentState
from worker.core.machine import State, Trigger
from worker.core.phases import Phase, PhaseTrigger
from worker.core.story import AssignmentKey, StoryEntry

__all__ = [
    "AssignmentMoved",
    "DrainingBegan",
    "HeartbeatLoopStopped",
    "Notice",
    "PhaseChanged",
    "RecordsChanged",
    "SlotMoved",
    "StoryNoted",
    "WorkerObserver",
]


@attrs.frozen(slots=True)
class SlotMoved:
    """Slot ``slot`` moved from ``source`` to ``dest`` on ``trigger``; ``key``: the assignment
    it holds after the move (``None`` when it holds none)."""

    slot: int
    source: State
    dest: State
    trigger: Trigger
    key: AssignmentKey | None = None


@attrs.frozen(slots=True)
class AssignmentMoved:
    """Assignment ``key`` moved from ``source`` to ``dest`` on ``event`` (its lifecycle)."""

    key: AssignmentKey
    event: AssignmentEvent
    source: AssignmentState
    dest: AssignmentState


@attrs.frozen(slots=True)
class StoryNoted:
    """``entry`` was appended to the story of assignment ``key`` (outside a slot move)."""

    key: AssignmentKey
    entry: StoryEntry


@attrs.frozen(slots=True)
class RecordsChanged:
    """``pending`` records wait for their acknowledgement; ``acknowledged`` (a running total)
    left on a completed poll or in the batch of a ``Shutdown`` that returned OK."""

    pending: int
    acknowledged: int


@attrs.frozen(slots=True)
class PhaseChanged:
    """The worker as a whole moved from ``source`` to ``dest`` on ``trigger``."""

    source: Phase
    dest: Phase
    trigger: PhaseTrigger


@attrs.frozen(slots=True)
class DrainingBegan:
    """The first stop cause occurred: no slot polls again."""

    cause: StopCause


@attrs.frozen(slots=True)
class HeartbeatLoopStopped:
    """Heartbeat loop ``loop`` ended; ``stopping``: the core had asked it to stop."""

    loop: str
    stopping: bool
    evicted: bool


Notice = (
    SlotMoved
    | AssignmentMoved
    | StoryNoted
    | RecordsChanged
    | PhaseChanged
    | DrainingBegan
    | HeartbeatLoopStopped
)


class WorkerObserver(Protocol):
    """Receives the core's notices from the runtime's dispatch point."""

    def notice(self, notice: Notice) -> None:
        """Take one notice into account (never raise, never block)."""
        ...
