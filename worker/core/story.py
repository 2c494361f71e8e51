"""A bounded per-assignment story: why is this assignment where it is?

Every transition the main loop takes for an assignment, and every notable event around it
(registration retries, report attempts, drops), is appended to that assignment's story. Both
dimensions are bounded: the oldest assignments are forgotten first, and a story keeps only its
latest entries, so a long-running worker uses constant memory.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import attrs

from worker.model import AssignmentId, SchedulerId

__all__ = ["AssignmentKey", "StoryEntry", "StoryLog", "key_text"]

#: ``(scheduler_id, assignment id)``: what identifies an assignment across schedulers.
AssignmentKey = tuple[SchedulerId, AssignmentId]


def key_text(key: AssignmentKey) -> str:
    """``key`` as log text: ``scheduler_id/assignment_id``."""
    return f"{key[0]}/{key[1]}"


@attrs.frozen(slots=True)
class StoryEntry:
    """One line of a story: when (the shell's clock), what happened, and its details."""

    time: float
    event: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.time:.3f} {self.event}" + (f" ({self.detail})" if self.detail else "")


class StoryLog:
    """Stories of the most recent ``max_assignments`` assignments, ``max_entries`` each."""

    def __init__(self, max_assignments: int = 256, max_entries: int = 64) -> None:
        if max_assignments < 1 or max_entries < 1:
            raise ValueError("story bounds must be positive")
        self._max_assignments = max_assignments
        self._max_entries = max_entries
        self._stories: OrderedDict[AssignmentKey, deque[tuple[float, str, str]]] = OrderedDict()

    def add(self, key: AssignmentKey, time: float, event: str, detail: str = "") -> None:
        """Append one entry to ``key``'s story (creating it, evicting the oldest story)."""
        stories = self._stories
        story = stories.get(key)
        if story is None:
            story = stories[key] = deque(maxlen=self._max_entries)
            if len(stories) > self._max_assignments:
                stories.popitem(last=False)
        else:
            stories.move_to_end(key)
        # A plain tuple: every assignment adds several entries, and few stories are ever read.
        story.append((time, event, detail))

    def story(self, key: AssignmentKey) -> tuple[StoryEntry, ...]:
        """``key``'s story, oldest entry first (empty when unknown or forgotten)."""
        return tuple(StoryEntry(*entry) for entry in self._stories.get(key, ()))

    def explain(self, key: AssignmentKey) -> str:
        """The story as text, one entry per line."""
        entries = self.story(key)
        if not entries:
            return f"no story for assignment {key}"
        return "\n".join(str(entry) for entry in entries)

    def __len__(self) -> int:
        return len(self._stories)
