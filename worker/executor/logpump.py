"""The executor log pump: one reader task per executor, one bounded queue, one writer (§7).

Each reader splits its executor's log pipe into lines (``LineSplitter``), tags them with the
running task's ids (``LineTagger``) and queues them. The queue is bounded (``log_queue_lines``):
when it is full the readers stop reading, so chatty executors block in ``write`` and no line is
dropped for load. One writer owns the sink and writes batches from a worker thread, so a slow or
blocked sink never stalls the event loop. A sink that fails breaks the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from worker.executor.logs import (
    DroppedLine,
    ExecutorLogLine,
    LineSplitter,
    LineTagger,
    LogSink,
    TaskTag,
)
from worker.executor.processes import RECEIVE_CHUNK, ExecutorProcess

__all__ = ["LogPump"]

log = logging.getLogger("worker.executor")

_LOG_BATCH_LINES = 256


class LogPump:
    """Moves executor output to the sink: ``read`` per executor, ``write`` once, then ``drain``.

    ``on_sink_failure`` receives the reason when writing to the sink fails; ``write`` then raises
    ``failure_type(reason)`` to stop the pool.
    """

    def __init__(
        self,
        sink: LogSink,
        *,
        max_line_bytes: int,
        queue_lines: int,
        on_sink_failure: Callable[[str], BaseException],
    ) -> None:
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._on_sink_failure = on_sink_failure
        self._send, self._receive = trio.open_memory_channel[ExecutorLogLine](queue_lines)
        self._writer_done = trio.Event()

    async def read(self, proc: ExecutorProcess) -> None:
        """Forward ``proc``'s log pipe, line by line, until EOF."""
        stream = proc.process.stdout
        assert stream is not None
        tagger = LineTagger(proc.nonce, proc.tags)
        splitter = LineSplitter(self._max_line_bytes, marker_prefix=tagger.marker_prefix)
        send = self._send.clone()
        try:
            async with send:
                while True:
                    try:
                        data = await stream.receive_some(RECEIVE_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    # Lines are stamped when read: the closest the worker gets to when the
                    # task wrote them (a full queue delays reading, not the stamp's meaning).
                    read_at = time.time()
                    events = splitter.feed(bytes(data)) if data else splitter.finish()
                    for event in events:
                        if isinstance(event, DroppedLine):
                            self._warn_dropped(proc, tagger.current, event.size)
                            continue
                        text, tag = tagger.process(event.data)
                        if text is not None:
                            await send.send(ExecutorLogLine(proc.executor_id, text, tag, read_at))
                    if not data:
                        return
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _warn_dropped(self, proc: ExecutorProcess, tag: TaskTag | None, size: int) -> None:
        fields: dict[str, object] = {"executor_id": proc.executor_id}
        if tag is not None:
            fields.update(tag.as_fields())
        log.warning(
            "dropped a %d-byte log line from executor %d%s: longer than max_log_line_bytes = %d",
            size,
            proc.executor_id,
            f" (job {tag.job_id}, task {tag.task_id}, instance {tag.task_instance_id})"
            if tag
            else "",
            self._max_line_bytes,
            extra={"fields": {**fields, "cap": self._max_line_bytes, "dropped_bytes": size}},
        )

    async def write(self) -> None:
        """The one writer: batches of queued lines go to the sink in a worker thread.

        The thread keeps a slow or blocked sink (a full stdout pipe) from stalling the event loop;
        the bounded queue then pushes back on the executors instead.
        """
        try:
            async with self._receive:
                async for line in self._receive:
                    batch = [line]
                    while len(batch) < _LOG_BATCH_LINES:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    try:
                        await trio.to_thread.run_sync(
                            self._write_batch, batch, abandon_on_cancel=True
                        )
                    except Exception as exc:
                        reason = f"the executor-log sink failed: {exc!r}"
                        log.error("%s; stopping", reason)
                        raise self._on_sink_failure(reason) from exc
        finally:
            self._writer_done.set()

    def _write_batch(self, batch: list[ExecutorLogLine]) -> None:
        for line in batch:
            self._sink(line)

    async def drain(self, timeout_sec: float) -> None:
        """No more readers will start: wait up to ``timeout_sec`` for every queued line.

        Lines still queued then are reported in one warning with their count.
        """
        self._send.close()
        with trio.move_on_after(timeout_sec):
            await self._writer_done.wait()
        if not self._writer_done.is_set():
            queued = self._receive.statistics().current_buffer_used
            log.warning(
                "executor log not drained within %s s: %d queued lines not written",
                timeout_sec,
                queued,
                extra={"fields": {"queued_lines": queued}},
            )
