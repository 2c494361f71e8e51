"""The failed tasks of a finished job, named as in the job, for the summary of ``local``.

Storage keeps each task's last error message (what the worker reported). The traceback is not
in it (the protocol keeps tracebacks in the worker log), so ``local`` reads it back from the
worker logs it kept (:mod:`worker.cluster.task_logs`) and shows its last lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from worker.cluster.db import TaskRow
from worker.cluster.jobs import Job

__all__ = ["TRACEBACK_TAIL_LINES", "TaskFailure", "failure_lines", "task_failures", "task_name"]

#: How many last lines of a traceback the summary shows.
TRACEBACK_TAIL_LINES: Final = 6
_EXECUTOR_FRAME: Final = '/worker/executor/child.py"'


@attrs.frozen(slots=True)
class TaskFailure:
    """A task that failed for good: its name in the job, error, attempts and traceback tail."""

    name: str
    error: str
    attempts: int
    traceback_tail: tuple[str, ...] = ()


def task_name(job: Job, key: str) -> str:
    """The job's name for storage's task key (``index:N`` → the task's name)."""
    if key.startswith("index:"):
        index = int(key.split(":", 1)[1])
        if index < len(job.tasks):
            return job.tasks[index].name
    return key


def _tail(text: str, lines: int) -> tuple[str, ...]:
    body = text.splitlines()
    # The first line repeats the error ("Type: message"); the traceback follows it.
    if len(body) > 1 and body[1].startswith("Traceback"):
        body = body[1:]
    kept: list[str] = []
    in_executor_frame = False
    for line in body:
        # The executor's own frame (the call into the task) says nothing about the task.
        if line.startswith("  File "):
            in_executor_frame = _EXECUTOR_FRAME in line
        elif not line.startswith("    "):
            in_executor_frame = False
        if not in_executor_frame:
            kept.append(line)
    return tuple(kept[-lines:])


def task_failures(
    job: Job,
    rows: Sequence[TaskRow],
    tracebacks: Mapping[str, str],
    tail_lines: int = TRACEBACK_TAIL_LINES,
) -> list[TaskFailure]:
    """The tasks in state ``failed``, in graph order, with their traceback tails when known."""
    failures = []
    for row in rows:
        if row.state != "failed":
            continue
        name = task_name(job, row.task)
        text = tracebacks.get(name, "")
        failures.append(
            TaskFailure(name, row.error, row.attempts, _tail(text, tail_lines) if text else ())
        )
    return failures


def failure_lines(failures: Sequence[TaskFailure]) -> list[str]:
    """Plain lines naming each failed task, its error and traceback tail."""
    lines: list[str] = []
    for failure in failures:
        tries = f" after {failure.attempts} attempts" if failure.attempts > 1 else ""
        lines.append(f"task {failure.name!r} failed{tries}: {failure.error}")
        lines.extend(f"    {line}" for line in failure.traceback_tail)
    return lines
