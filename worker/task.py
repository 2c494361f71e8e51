"""The task context, for task authors: ``worker.task.current()`` inside a running task.

A task that wants to know which job, task and instance it runs as calls ``current()``::

    from worker import task

    def my_task(x):
        ctx = task.current()
        print(ctx.job_id, ctx.task_id.kind, ctx.task_id.index)
        return x

A commit task reads the job's graph outputs with ``ctx.graph_outputs()`` (decoded values) or
``ctx.raw_graph_outputs()`` (msgpack payloads). ``current()`` raises ``NoTaskContextError`` outside
a running task, including in threads a task starts (the context lives in a context variable).

This module is imported inside executor subprocesses, so it uses only the standard library
(``msgpack``/``zstandard`` are imported lazily when graph outputs are read).
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = [
    "NoTaskContextError",
    "NotACommitTaskError",
    "TaskContext",
    "TaskRef",
    "current",
]


class NoTaskContextError(RuntimeError):
    """``current()`` was called while no task is running (in this thread/context)."""


class NotACommitTaskError(RuntimeError):
    """Graph outputs were requested by a task that is not the job's commit task."""


class TaskRef:
    """Which task of the job runs: ``kind`` is ``"index"``, ``"commit"`` or ``"cleanup"``.

    ``index`` is the graph index for an index task and ``None`` otherwise.
    """

    __slots__ = ("index", "kind")

    def __init__(self, kind: str, index: int | None = None) -> None:
        self.kind = kind
        self.index = index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskRef):
            return NotImplemented
        return (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self) -> int:
        return hash((self.kind, self.index))

    def __repr__(self) -> str:
        return f"TaskRef(kind={self.kind!r}, index={self.index!r})"


class TaskContext:
    """What a running task may know about itself (read-only)."""

    __slots__ = (
        "_decoded",
        "_max_bytes",
        "_payloads",
        "_serialized",
        "job_id",
        "package",
        "resource_group_id",
        "task_func",
        "task_id",
        "task_instance_id",
    )

    def __init__(
        self,
        *,
        job_id: int,
        task_id: TaskRef,
        task_instance_id: int,
        resource_group_id: int,
        package: str,
        task_func: str,
        serialized_graph_outputs: bytes | None = None,
        max_graph_outputs_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.job_id = job_id
        self.task_id = task_id
        self.task_instance_id = task_instance_id
        self.resource_group_id = resource_group_id
        self.package = package
        self.task_func = task_func
        self._serialized = serialized_graph_outputs
        self._max_bytes = max_graph_outputs_bytes
        self._payloads: list[bytes] | None = None
        self._decoded: list[Any] | None = None

    @property
    def is_commit(self) -> bool:
        """Whether this is the job's commit task."""
        return self.task_id.kind == "commit"

    def raw_graph_outputs(self) -> list[bytes]:
        """The job's graph outputs as raw msgpack payloads (commit task only).

        Raises ``NotACommitTaskError`` in any other task, and
        ``worker.executor.wire.GraphOutputsDecodeError`` for a malformed buffer.
        """
        if not self.is_commit or self._serialized is None:
            raise NotACommitTaskError(
                "graph outputs are available only in the job's commit task, "
                f"not in task {self.task_id.kind}"
            )
        if self._payloads is None:
            from worker.executor.wire import decode_graph_outputs

            self._payloads = decode_graph_outputs(self._serialized, max_bytes=self._max_bytes)
        return list(self._payloads)

    def graph_outputs(self) -> list[Any]:
        """The job's graph outputs, decoded, in job-output order (commit task only).

        Raises like ``raw_graph_outputs``; an undecodable payload raises
        ``GraphOutputsDecodeError`` too.
        """
        if self._decoded is None:
            from worker.executor.wire import decode_graph_payloads

            self._decoded = decode_graph_payloads(self.raw_graph_outputs())
        return list(self._decoded)

    def __repr__(self) -> str:
        return (
            f"TaskContext(job_id={self.job_id}, task_id={self.task_id}, "
            f"task_instance_id={self.task_instance_id}, "
            f"resource_group_id={self.resource_group_id}, package={self.package!r}, "
            f"task_func={self.task_func!r})"
        )


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("worker_task_context")


def current() -> TaskContext:
    """The context of the task running now; raises ``NoTaskContextError`` outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise NoTaskContextError(
            "no task is running: worker.task.current() is only valid "
            "inside a task function called by the executor"
        ) from None


def _enter(context: TaskContext) -> contextvars.Token[TaskContext]:
    """Make ``context`` current (used by the executor around each call)."""
    return _current.set(context)


def _leave(token: contextvars.Token[TaskContext]) -> None:
    """Undo ``_enter``."""
    _current.reset(token)
