"""The shared journal every fake writes: one entry per call start and per call end."""

from __future__ import annotations

import enum

import attrs
import trio

__all__ = ["Journal", "JournalEntry", "Phase"]


class Phase(enum.Enum):
    """Whether an entry marks the start or the end of a call."""

    START = "start"
    END = "end"


@attrs.frozen(slots=True)
class JournalEntry:
    """``(time, fake, method, args, result)``: ``result`` is ``None`` on a start entry.

    An end entry's ``result`` is the value returned, an error code name (``"UNAVAILABLE"``),
    ``"malformed"``, ``"no_task"`` or ``"cancelled"``.
    """

    seq: int
    time: float
    fake: str
    method: str
    phase: Phase
    args: tuple[object, ...]
    result: object = None

    def __str__(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        tail = "" if self.phase is Phase.START else f" -> {self.result!r}"
        call = f"{self.fake}.{self.method}({args})"
        return f"#{self.seq} {self.time:9.4f} {call} {self.phase.value}{tail}"


class Journal:
    """An append-only list of entries shared by all fakes of one test."""

    def __init__(self) -> None:
        self.entries: list[JournalEntry] = []
        self._changed = trio.Event()

    def add(
        self, fake: str, method: str, phase: Phase, args: tuple[object, ...], result: object = None
    ) -> JournalEntry:
        """Append an entry stamped with ``trio.current_time()``."""
        entry = JournalEntry(
            len(self.entries), trio.current_time(), fake, method, phase, args, result
        )
        self.entries.append(entry)
        self._changed.set()
        self._changed = trio.Event()
        return entry

    async def changed(self) -> None:
        """Wait until the next entry is added."""
        await self._changed.wait()

    def calls(
        self,
        fake: str | None = None,
        method: str | None = None,
        phase: Phase | None = Phase.START,
    ) -> list[JournalEntry]:
        """Entries of one phase (both when ``phase`` is ``None``), filtered by fake and method."""
        return [
            e
            for e in self.entries
            if (phase is None or e.phase is phase)
            and (fake is None or e.fake == fake)
            and (method is None or e.method == method)
        ]

    def format(self) -> str:
        """The whole journal, one entry per line (print it when a property fails)."""
        return "\n".join(str(e) for e in self.entries)
