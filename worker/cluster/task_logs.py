"""What ``local`` reads back from its workers' log files: task output and failure tracebacks.

Workers write JSON lines (``local`` configures ``log.format: json``). Two kinds matter here:

* a task's own output, one record per line it printed (stdout and stderr alike), tagged with the
  job, task and instance (``{"job_id", "task_id", "line", ...}``): echoed to the console
  prefixed with the task's name in the job;
* the worker's warning for an in-task failure, whose message holds the exception and the
  traceback (the protocol keeps tracebacks out of the error message it reports): kept per task,
  so the summary can show the tail of each failed task's traceback.

A :class:`TaskLogFollower` reads the files as they grow, from a thread that :meth:`stop` joins.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Final

from worker.cluster.jobs import Job

__all__ = ["FAILURE_PREFIX", "TaskLogFollower", "task_display_name"]

#: How the worker's failure warning starts (worker/executor/pool.py).
FAILURE_PREFIX: Final = "task failed: "
_POLL_SEC: Final = 0.1


def task_display_name(job: Job, task_id: str) -> str:
    """The job's name for a task id as the worker logs it (``Index(3)``, ``Commit``, ...)."""
    if task_id.startswith("Index(") and task_id.endswith(")"):
        index = task_id[len("Index(") : -1]
        if index.isdigit() and int(index) < len(job.tasks):
            return job.tasks[int(index)].name
    return task_id.lower()


class TaskLogFollower:
    """Follows worker log files; echoes task output and keeps failure tracebacks by task name."""

    def __init__(self, job: Job, echo: Callable[[str, str], None] | None) -> None:
        """``echo(task name, line)`` is called for each task output line (None: not echoed)."""
        self._job = job
        self._echo = echo
        self._job_id: int | None = None
        self._files: dict[Path, IO[str]] = {}
        self._partial: dict[Path, str] = {}
        self._tracebacks: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def follow(self, paths: Iterable[Path]) -> None:
        """Start following ``paths`` (read from their start) in a background thread."""
        for path in paths:
            self._files[path] = path.open("r", encoding="utf-8", errors="replace")
            self._partial[path] = ""
        self._thread = threading.Thread(target=self._run, name="task-log-follower", daemon=True)
        self._thread.start()

    def watch_job(self, job_id: int) -> None:
        """Only records of job ``job_id`` count (a reused database may hold older jobs)."""
        self._job_id = job_id

    def stop(self) -> None:
        """Read what is left, stop the thread and close the files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read_all()
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def tracebacks(self) -> dict[str, str]:
        """``{task name: the last failure's message and traceback}`` seen so far."""
        with self._lock:
            return dict(self._tracebacks)

    def _run(self) -> None:
        while not self._stop.wait(_POLL_SEC):
            self._read_all()

    def _read_all(self) -> None:
        for path, handle in self._files.items():
            chunk = handle.read()
            if not chunk:
                continue
            text = self._partial[path] + chunk
            *lines, self._partial[path] = text.split("\n")
            for line in lines:
                self._handle(line)

    def _handle(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            record: Any = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict) or "task_id" not in record:
            return
        if self._job_id is not None and record.get("job_id") != self._job_id:
            return
        name = task_display_name(self._job, str(record["task_id"]))
        if "line" in record and "message" not in record:
            if self._echo is not None:
                self._echo(name, str(record["line"]))
            return
        message = record.get("message")
        if isinstance(message, str) and message.startswith(FAILURE_PREFIX):
            with self._lock:
                self._tracebacks[name] = message[len(FAILURE_PREFIX) :]
