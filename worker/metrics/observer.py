"""Feeds :class:`~worker.metrics.instruments.WorkerMetrics` from the core's notices.

The runtime hands every notice the core produced to one
:class:`~worker.core.observer.WorkerObserver` (``worker.core.observer``). :class:`MetricsObserver`
is that observer for protocol.md section 6.13: it takes no protocol decision of its own, it
only translates what the core says happened.

==========================  ============================================================
metric or endpoint          fed from
==========================  ============================================================
state of each slot          ``SlotMoved``: the slot's new state
slots busy                  ``AssignmentMoved``: assignments whose lifecycle state is one
                            the core holds in a slot (``lifecycle.HELD_IN``: registering,
                            registered, executing; section 6.12's "busy")
records pending             ``RecordsChanged.pending``
records acknowledged        ``RecordsChanged.acknowledged`` (the ledger's running total;
                            the counter grows by the difference)
readiness                   off at ``DrainingBegan`` (any first stop cause: a signal, an
                            eviction, a fatal error)
``/healthz`` reason (b)     ``HeartbeatLoopStopped`` while neither stopping nor evicted
``/assignments``            ``SlotMoved`` (what each slot holds), ``AssignmentMoved`` and
                            ``StoryNoted`` (the bounded story of the recent assignments)
==========================  ============================================================

``/assignments`` is read on the HTTP thread. Every notice runs on the trio thread and replaces
:attr:`MetricsObserver.snapshot` with a new frozen :class:`AssignmentsSnapshot` (a reference
swap, atomic for a reader on another thread); the work per notice is bounded by the number of
slots and the story bounds, and the JSON form is built only when the endpoint asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from worker.core.lifecycle import ASSIGNMENT_INITIAL_STATE, HELD_IN, AssignmentState
from worker.core.machine import INITIAL_STATE, State
from worker.core.observer import (
    AssignmentMoved,
    DrainingBegan,
    HeartbeatLoopStopped,
    Notice,
    PhaseChanged,
    RecordsChanged,
    SlotMoved,
    StoryNoted,
)
from worker.core.story import AssignmentKey, StoryEntry, key_text
from worker.metrics.instruments import WorkerMetrics

__all__ = [
    "RECENT_ASSIGNMENTS",
    "STORY_ENTRIES",
    "AssignmentsSnapshot",
    "MetricsObserver",
    "RecentAssignment",
    "SlotView",
]

#: How many of the most recent assignments ``/assignments`` tells the story of.
RECENT_ASSIGNMENTS: Final = 32
#: How many of the latest entries of each story ``/assignments`` keeps.
STORY_ENTRIES: Final = 24


@attrs.frozen(slots=True)
class SlotView:
    """What slot ``slot`` is doing now: its state and the assignment it holds, if any."""

    slot: int
    state: State
    key: AssignmentKey | None = None

    def to_json(self) -> dict[str, Any]:
        """The slot as ``/assignments`` shows it."""
        return {
            "slot": self.slot,
            "state": self.state.value,
            "assignment": None if self.key is None else key_text(self.key),
        }


@attrs.frozen(slots=True)
class RecentAssignment:
    """One recent assignment: where its lifecycle stands and its latest story entries."""

    key: AssignmentKey
    state: AssignmentState
    story: tuple[StoryEntry, ...]

    def to_json(self) -> dict[str, Any]:
        """The assignment as ``/assignments`` shows it."""
        return {
            "assignment": key_text(self.key),
            "state": self.state.value,
            "story": [
                {"time": round(entry.time, 3), "event": entry.event, "detail": entry.detail}
                for entry in self.story
            ],
        }


@attrs.frozen(slots=True)
class AssignmentsSnapshot:
    """What ``/assignments`` serves: every slot, and the recent assignments (oldest first)."""

    slots: tuple[SlotView, ...]
    recent: tuple[RecentAssignment, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON-able reply: slots in order, recent assignments newest first."""
        return {
            "slots": [slot.to_json() for slot in self.slots],
            "recent": [assignment.to_json() for assignment in reversed(self.recent)],
        }


class MetricsObserver:
    """A :class:`~worker.core.observer.WorkerObserver` that moves ``metrics``.

    ``slots`` is the worker's number of slots; ``clock`` stamps the story entries of slot and
    lifecycle moves (``trio.current_time``, the clock the core is given; entries the core wrote
    itself keep their own time).
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        slots: int,
        clock: Callable[[], float] = trio.current_time,
        recent_assignments: int = RECENT_ASSIGNMENTS,
        story_entries: int = STORY_ENTRIES,
    ) -> None:
        if recent_assignments < 1 or story_entries < 1:
            raise ValueError("the /assignments bounds must be positive")
        self.metrics = metrics
        self._clock = clock
        self._recent_bound = recent_assignments
        self._story_bound = story_entries
        self._held: set[AssignmentKey] = set()
        self._acknowledged = 0
        #: The latest snapshot; replaced whole on the trio thread, read on the HTTP thread.
        self.snapshot = AssignmentsSnapshot(tuple(SlotView(i, INITIAL_STATE) for i in range(slots)))

    def assignments(self) -> dict[str, Any]:
        """The ``/assignments`` reply (the server's provider; safe on any thread)."""
        return self.snapshot.to_json()

    def notice(self, notice: Notice) -> None:
        """Move the metrics and the snapshot for one notice of the core."""
        match notice:
            case SlotMoved():
                self._slot_moved(notice)
            case AssignmentMoved():
                self._assignment_moved(notice)
            case StoryNoted():
                self._tell(notice.key, None, notice.entry)
            case RecordsChanged():
                self._records_changed(notice)
            case DrainingBegan():
                self.metrics.set_ready(False)
            case HeartbeatLoopStopped():
                self.metrics.heartbeat_loop_ended(
                    notice.loop, unexpected=not (notice.stopping or notice.evicted)
                )
            case PhaseChanged():
                pass  # the worker's phase has no metric of its own

    def _slot_moved(self, notice: SlotMoved) -> None:
        self.metrics.slot_state(notice.slot, notice.dest.value)
        slots = list(self.snapshot.slots)
        slots[notice.slot] = SlotView(notice.slot, notice.dest, notice.key)
        self.snapshot = attrs.evolve(self.snapshot, slots=tuple(slots))
        if notice.key is not None:
            entry = StoryEntry(
                self._clock(),
                f"slot {notice.slot}: {notice.source.value} -> {notice.dest.value}",
                notice.trigger.value,
            )
            self._tell(notice.key, None, entry)

    def _assignment_moved(self, notice: AssignmentMoved) -> None:
        key = notice.key
        # The core's own notion of "held in a slot"; its Received never outlives one event
        # (every arrival moves on in the same step), so only 6.12's busy states remain.
        if notice.dest in HELD_IN:
            self._held.add(key)
        else:
            self._held.discard(key)
            # Released without a slot move (e.g. a task that ends while its slot drains).
            if any(slot.key == key for slot in self.snapshot.slots):
                slots = tuple(
                    attrs.evolve(slot, key=None) if slot.key == key else slot
                    for slot in self.snapshot.slots
                )
                self.snapshot = attrs.evolve(self.snapshot, slots=slots)
        self.metrics.slots_busy(len(self._held))
        entry = StoryEntry(
            self._clock(), f"{notice.source.value} -> {notice.dest.value}", notice.event.value
        )
        self._tell(key, notice.dest, entry)

    def _records_changed(self, notice: RecordsChanged) -> None:
        self.metrics.records_pending(notice.pending)
        if notice.acknowledged > self._acknowledged:
            self.metrics.records_acknowledged(notice.acknowledged - self._acknowledged)
            self._acknowledged = notice.acknowledged

    def _tell(self, key: AssignmentKey, state: AssignmentState | None, entry: StoryEntry) -> None:
        """Append ``entry`` to ``key``'s story (the newest), ``state`` if its lifecycle moved."""
        recent = self.snapshot.recent
        previous = next((item for item in recent if item.key == key), None)
        if previous is None:
            current = RecentAssignment(key, state or ASSIGNMENT_INITIAL_STATE, (entry,))
        else:
            story = (*previous.story, entry)[-self._story_bound :]
            current = RecentAssignment(key, state or previous.state, story)
        others = tuple(item for item in recent if item.key != key)
        kept = (*others, current)[-self._recent_bound :]
        self.snapshot = attrs.evolve(self.snapshot, recent=kept)
