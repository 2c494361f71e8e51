"""Executor log capture, sans-I/O parts: line splitting, task tagging, and the log sinks.

The pool's reader task feeds each executor's stderr bytes to a ``LineSplitter`` (lines split on
``\\n``, a trailing ``\\r`` stripped, over-long lines dropped without buffering them) and each line
through a ``LineTagger``, which recognises the executor's begin/end markers (never forwarded) and
tags the lines in between with the running task's ids. Lines then go through a bounded queue to
one writer that owns the sink (executor.md §7).
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Protocol

import attrs

from worker.logging_setup import utc_timestamp

__all__ = [
    "DroppedLine",
    "ExecutorLogLine",
    "JsonLinesSink",
    "LineSplitter",
    "LineTagger",
    "LogSink",
    "SplitLine",
    "TaskTag",
]


@attrs.frozen(slots=True)
class TaskTag:
    """The ids of the task an executor is running, attached to the lines it writes."""

    job_id: int
    task_id: str
    task_instance_id: int

    def as_fields(self) -> dict[str, object]:
        """The tag as structured log fields."""
        return {
            "job_id": self.job_id,
            "task_id": self.task_id,
            "task_instance_id": self.task_instance_id,
        }


@attrs.frozen(slots=True)
class ExecutorLogLine:
    """One forwarded line of executor output: its executor, text, task tag (if any), and when
    the worker read it (seconds since the epoch; the executor writes no time of its own)."""

    executor_id: int
    text: str
    tag: TaskTag | None = None
    read_at: float = attrs.field(factory=time.time)

    def as_record(self) -> dict[str, object]:
        """The line as a JSON-ready mapping (what ``JsonLinesSink`` writes)."""
        record: dict[str, object] = {
            "ts": utc_timestamp(self.read_at),
            "executor_id": self.executor_id,
        }
        if self.tag is not None:
            record.update(self.tag.as_fields())
        record["line"] = self.text
        return record


@attrs.frozen(slots=True)
class SplitLine:
    """A complete line (without its terminator and trailing ``\\r``)."""

    data: bytes


@attrs.frozen(slots=True)
class DroppedLine:
    """A line longer than the cap was discarded; ``size`` is its length in bytes."""

    size: int


class LineSplitter:
    """Splits a byte stream into lines; the result does not depend on how the stream is chunked.

    A line whose content (after stripping one trailing ``\\r``) is longer than ``max_line_bytes``
    becomes ``DroppedLine``: once the buffered prefix is too long, the rest up to the next
    ``\\n`` is counted and discarded, never buffered.

    With a ``marker_prefix``, a marker (at most ``MARKER_ROOM`` bytes starting with the prefix)
    at the end of a line does not count against the cap, and survives the drop of an over-long
    text before it: the drop is reported, then the marker as a line of its own.
    """

    #: Room kept for an executor marker at the end of a line.
    MARKER_ROOM = 64

    def __init__(self, max_line_bytes: int, marker_prefix: bytes = b"") -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be > 0")
        self._cap = max_line_bytes
        self._prefix = marker_prefix
        self._room = self.MARKER_ROOM if marker_prefix else 0
        self._buffer = bytearray()
        self._discarding = False
        self._dropped = 0
        self._tail = bytearray()  # the last bytes discarded, where a marker may sit

    def feed(self, data: bytes) -> list[SplitLine | DroppedLine]:
        """Consume ``data``; return the lines (and drops) it completes, in order."""
        events: list[SplitLine | DroppedLine] = []
        start = 0
        end = len(data)
        while start < end:
            newline = data.find(b"\n", start)
            if self._discarding:
                stop = end if newline < 0 else newline
                self._discard(data[start:stop])
                if newline < 0:
                    return events
                events.extend(self._end_discard())
                start = newline + 1
                continue
            if newline < 0:
                # +1 leaves room for a '\r' that the terminator may still strip
                if len(self._buffer) + end - start > self._cap + 1 + self._room:
                    self._discarding = True
                    self._dropped = 0
                    self._tail.clear()
                    self._discard(bytes(self._buffer))
                    self._buffer.clear()
                    self._discard(data[start:])
                else:
                    self._buffer += data[start:]
                return events
            if self._buffer:
                self._buffer += data[start:newline]
                raw = bytes(self._buffer)
                self._buffer.clear()
            else:
                raw = data[start:newline]
            events.extend(self._line(raw))
            start = newline + 1
        return events

    def finish(self) -> list[SplitLine | DroppedLine]:
        """End of stream: the unterminated last line (or its drop), if any."""
        if self._discarding:
            return self._end_discard()
        if not self._buffer:
            return []
        raw = bytes(self._buffer)
        self._buffer.clear()
        return self._line(raw)

    def _discard(self, chunk: bytes) -> None:
        self._dropped += len(chunk)
        if self._room:
            self._tail += chunk[-self._room - 1 :]
            del self._tail[: -self._room - 1]

    def _end_discard(self) -> list[SplitLine | DroppedLine]:
        self._discarding = False
        size, self._dropped = self._dropped, 0
        tail = bytes(self._tail)
        self._tail.clear()
        marker = self._marker_in(tail[:-1] if tail.endswith(b"\r") else tail)
        if marker is None:
            return [DroppedLine(size)]
        return [DroppedLine(size - len(tail) + tail.rfind(marker)), SplitLine(marker)]

    def _marker_in(self, content: bytes) -> bytes | None:
        if not self._prefix:
            return None
        position = content.rfind(self._prefix, max(len(content) - self._room, 0))
        return content[position:] if position >= 0 else None

    def _line(self, raw: bytes) -> list[SplitLine | DroppedLine]:
        content = raw[:-1] if raw.endswith(b"\r") else raw
        marker = self._marker_in(content)
        text_size = len(content) - len(marker) if marker is not None else len(content)
        if text_size <= self._cap:
            return [SplitLine(content)]
        if marker is None:
            return [DroppedLine(len(raw))]
        return [DroppedLine(text_size), SplitLine(marker)]


class LineTagger:
    """Tracks which task an executor runs from its marker lines, and tags the other lines.

    ``lookup(request_id)`` returns the tag the pool registered for a request. A marker may end a
    line that lacks its own newline (the task wrote a partial line); the text before it is still
    forwarded, tagged as the task that wrote it.
    """

    def __init__(self, nonce: str, lookup: dict[int, TaskTag]) -> None:
        #: What every marker of this executor starts with (also the splitter's marker prefix).
        self.marker_prefix = b"\x1e" + nonce.encode("ascii") + b" "
        self._lookup = lookup
        self.current: TaskTag | None = None

    def process(self, line: bytes) -> tuple[str | None, TaskTag | None]:
        """Return ``(text to forward or None, its tag)`` for one split line."""
        position = line.rfind(self.marker_prefix)
        if position >= 0:
            marker = line[position + len(self.marker_prefix) :].split(b" ")
            if len(marker) == 2 and marker[0] in (b"B", b"E") and marker[1].isdigit():
                text_tag = self.current
                if marker[0] == b"B":
                    self.current = self._lookup.pop(int(marker[1]), None)
                else:
                    self.current = None
                if position == 0:
                    return None, None
                return _decode(line[:position]), text_tag
        return _decode(line), self.current


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class LogSink(Protocol):
    """Where forwarded executor lines go. One writer task calls it, so calls never overlap.

    An exception from the sink stops the pool (executor.md §7: the worker exits fatally).
    """

    def __call__(self, line: ExecutorLogLine, /) -> None:
        """Write one line."""
        ...


class JsonLinesSink:
    """The default sink: one JSON object per line on the worker's stdout (its own log is stderr).

    Fields: ``ts`` (when the worker read the line, ISO 8601 UTC with milliseconds),
    ``executor_id``, then ``job_id``, ``task_id``, ``task_instance_id`` when tagged, and ``line``.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def __call__(self, line: ExecutorLogLine) -> None:
        """Write ``line`` as one JSON object and flush."""
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(json.dumps(line.as_record(), ensure_ascii=False) + "\n")
        stream.flush()
