"""SQLite persistence of the reference storage: sessions, workers, schedulers, groups, jobs, tasks.

One connection in WAL mode, used under the storage engine's lock (the engine serialises every
call). Rows are plain tuples or small attrs records; the engine owns all semantics.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import attrs

__all__ = ["Database", "DatabaseLock", "DatabaseUnavailable", "EmRow", "JobRow", "TaskRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS execution_managers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ip_address TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('alive', 'dead')),
    registered_at REAL NOT NULL,
    last_heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedulers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    session_id INTEGER NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS resource_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT NOT NULL UNIQUE,
    password BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_group_id INTEGER NOT NULL REFERENCES resource_groups (id),
    name TEXT NOT NULL,
    graph BLOB NOT NULL,
    inputs BLOB NOT NULL,
    state INTEGER NOT NULL,
    outputs BLOB,
    error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    retries_left INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    outputs BLOB,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, task)
);
"""
# The columns of each row record, in its field order.
_EM_COLUMNS = "id, ip_address, state, last_heartbeat_at"
_JOB_COLUMNS = (
    "id, resource_group_id, name, graph, inputs, state, outputs, error, created_at, finished_at"
)


@attrs.frozen(slots=True)
class EmRow:
    """One execution manager (worker) row."""

    id: int
    ip_address: str
    state: str
    last_heartbeat_at: float


@attrs.frozen(slots=True)
class JobRow:
    """One job row (submission, state, outputs, error)."""

    id: int
    resource_group_id: int
    name: str
    graph: bytes
    inputs: bytes
    state: int
    outputs: bytes | None
    error: str
    created_at: float
    finished_at: float | None


@attrs.frozen(slots=True)
class TaskRow:
    """One task's durable progress: ``task`` is ``"index:N"``, ``"commit"`` or ``"cleanup"``."""

    job_id: int
    task: str
    state: str
    retries_left: int
    attempts: int
    successes: int
    failures: int
    outputs: bytes | None
    error: str


class DatabaseUnavailable(Exception):
    """The database cannot be used: another cluster holds it, or its lock cannot be created."""


class DatabaseLock:
    """An exclusive lock on a database file, held until :meth:`release` (or process exit).

    The lock is ``flock`` on a sidecar ``<db>.lock`` file, taken before the database is opened,
    so a second cluster on the same file stops without reading or writing it. A sidecar, not the
    database itself: closing any descriptor of the database would drop SQLite's own locks.
    ``":memory:"`` needs no lock.
    """

    def __init__(self, database: Path | str) -> None:
        """Take the lock now; :class:`DatabaseUnavailable` (one line) if it cannot be had."""
        self.path: Path | None = None
        self._fd: int | None = None
        if str(database) == ":memory:":
            return
        self.path = Path(f"{database}.lock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            reason = error.strerror or str(error)
            raise DatabaseUnavailable(
                f"cannot open database {database}: {reason} (creating {self.path})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DatabaseUnavailable(
                    f"database {database} is in use by another cluster (lock {self.path} is held)"
                ) from None
            raise DatabaseUnavailable(
                f"cannot lock database {database}: {error.strerror or error}"
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the sidecar file stays; it is harmless and reused)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    """The storage's SQLite file (``":memory:"`` for a throwaway database)."""

    def __init__(self, path: Path | str) -> None:
        """Open (creating if needed) the database at ``path`` in WAL mode."""
        self.path = str(path)
        # The engine serialises access under its own lock, so one connection shared by the
        # server's threads is safe; autocommit keeps each statement its own short transaction.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    # --- sessions, workers, schedulers, groups ---

    def new_session(self) -> int:
        """Insert a session row and return its id (the new session)."""
        cursor = self._conn.execute("INSERT INTO sessions (started_at) VALUES (?)", (time.time(),))
        return int(cursor.lastrowid or 0)

    def insert_em(self, ip_address: str, now: float) -> int:
        """Register a worker (alive) and return its never-reused id."""
        cursor = self._conn.execute(
            "INSERT INTO execution_managers (ip_address, state, registered_at, last_heartbeat_at)"
            " VALUES (?, 'alive', ?, ?)",
            (ip_address, now, now),
        )
        return int(cursor.lastrowid or 0)

    def em(self, em_id: int) -> EmRow | None:
        """The worker row, or None."""
        row = self._conn.execute(
            f"SELECT {_EM_COLUMNS} FROM execution_managers WHERE id = ?",
            (em_id,),
        ).fetchone()
        return EmRow(*row) if row else None

    def ems(self) -> list[EmRow]:
        """Every worker row."""
        rows = self._conn.execute(f"SELECT {_EM_COLUMNS} FROM execution_managers ORDER BY id")
        return [EmRow(*row) for row in rows]

    def touch_em(self, em_id: int, now: float) -> None:
        """Record a heartbeat."""
        self._conn.execute(
            "UPDATE execution_managers SET last_heartbeat_at = ? WHERE id = ?", (now, em_id)
        )

    def raise_alive_heartbeats(self, now: float) -> None:
        """Count every alive worker's silence from ``now`` at the latest (a storage restart)."""
        self._conn.execute(
            "UPDATE execution_managers SET last_heartbeat_at = ?"
            " WHERE state = 'alive' AND last_heartbeat_at < ?",
            (now, now),
        )

    def mark_ems_dead(self, em_ids: list[int]) -> None:
        """Mark workers dead, permanently."""
        self._conn.executemany(
            "UPDATE execution_managers SET state = 'dead' WHERE id = ?", [(i,) for i in em_ids]
        )

    def stale_ems(self, cutoff: float) -> list[int]:
        """Alive workers whose last heartbeat is older than ``cutoff``."""
        rows = self._conn.execute(
            "SELECT id FROM execution_managers WHERE state = 'alive' AND last_heartbeat_at < ?",
            (cutoff,),
        )
        return [row[0] for row in rows]

    def insert_scheduler(self, host: str, port: int, session_id: int, now: float) -> int:
        """Register a scheduler and return its id."""
        cursor = self._conn.execute(
            "INSERT INTO schedulers (host, port, session_id, registered_at) VALUES (?, ?, ?, ?)",
            (host, port, session_id, now),
        )
        return int(cursor.lastrowid or 0)

    def ensure_resource_group(self, external_id: str, password: bytes) -> int:
        """The id of the group ``external_id``, created if missing."""
        row = self._conn.execute(
            "SELECT id FROM resource_groups WHERE external_id = ?", (external_id,)
        ).fetchone()
        if row:
            return int(row[0])
        cursor = self._conn.execute(
            "INSERT INTO resource_groups (external_id, password) VALUES (?, ?)",
            (external_id, password),
        )
        return int(cursor.lastrowid or 0)

    def resource_group_exists(self, group_id: int) -> bool:
        """Whether the resource group exists."""
        row = self._conn.execute("SELECT 1 FROM resource_groups WHERE id = ?", (group_id,))
        return row.fetchone() is not None

    # --- jobs and tasks ---

    def insert_job(
        self, group_id: int, name: str, graph: bytes, inputs: bytes, state: int, now: float
    ) -> int:
        """Store a submission and return the job id."""
        cursor = self._conn.execute(
            "INSERT INTO jobs (resource_group_id, name, graph, inputs, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (group_id, name, graph, inputs, state, now),
        )
        return int(cursor.lastrowid or 0)

    def set_job_state(
        self,
        job_id: int,
        state: int,
        *,
        outputs: bytes | None = None,
        error: str | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Update a job's state (and its outputs, error or finish time when given)."""
        self._conn.execute(
            "UPDATE jobs SET state = ?, outputs = COALESCE(?, outputs),"
            " error = COALESCE(?, error), finished_at = COALESCE(?, finished_at) WHERE id = ?",
            (state, outputs, error, finished_at, job_id),
        )

    def job(self, job_id: int) -> JobRow | None:
        """The job row, or None."""
        row = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return JobRow(*row) if row else None

    def recent_jobs(self, limit: int | None = None) -> list[JobRow]:
        """Every job, newest first (at most ``limit``)."""
        rows = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [JobRow(*row) for row in rows]

    def jobs_in_states(self, states: list[int]) -> list[JobRow]:
        """Every job whose state is one of ``states``, by id."""
        marks = ",".join("?" * len(states))
        rows = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id",
            states,
        )
        return [JobRow(*row) for row in rows]

    def upsert_task(self, job_id: int, task: str, state: str, retries_left: int) -> None:
        """Create a task row, or reset its progress (keeping its attempt counters)."""
        self._conn.execute(
            "INSERT INTO tasks (job_id, task, state, retries_left) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (job_id, task) DO UPDATE SET state = excluded.state,"
            " retries_left = excluded.retries_left, outputs = NULL, error = ''",
            (job_id, task, state, retries_left),
        )

    def set_task_state(self, job_id: int, task: str, state: str) -> None:
        """Set a task's state."""
        self._conn.execute(
            "UPDATE tasks SET state = ? WHERE job_id = ? AND task = ?", (state, job_id, task)
        )

    def task_started(self, job_id: int, task: str) -> None:
        """Count an instance registration and mark the task running."""
        self._conn.execute(
            "UPDATE tasks SET state = 'running', attempts = attempts + 1"
            " WHERE job_id = ? AND task = ?",
            (job_id, task),
        )

    def task_succeeded(self, job_id: int, task: str, outputs: bytes) -> None:
        """Record the winning success and its outputs (the framed payloads)."""
        self._conn.execute(
            "UPDATE tasks SET state = 'succeeded', successes = successes + 1, outputs = ?"
            " WHERE job_id = ? AND task = ?",
            (outputs, job_id, task),
        )

    def task_failed(
        self, job_id: int, task: str, state: str, retries_left: int, error: str
    ) -> None:
        """Record a failed attempt; ``state`` is the task's state afterwards."""
        self._conn.execute(
            "UPDATE tasks SET state = ?, failures = failures + 1, retries_left = ?, error = ?"
            " WHERE job_id = ? AND task = ?",
            (state, retries_left, error, job_id, task),
        )

    def cancel_tasks(self, job_id: int) -> None:
        """Mark every non-terminal task of a job cancelled."""
        self._conn.execute(
            "UPDATE tasks SET state = 'cancelled' WHERE job_id = ?"
            " AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            (job_id,),
        )

    def tasks(self, job_id: int) -> list[TaskRow]:
        """Every task row of a job (regular tasks by index, then commit, cleanup)."""
        rows = self._conn.execute(
            "SELECT job_id, task, state, retries_left, attempts, successes, failures, outputs,"
            " error FROM tasks WHERE job_id = ?",
            (job_id,),
        )
        result = [TaskRow(*row) for row in rows]

        def order(row: TaskRow) -> tuple[int, int]:
            if row.task.startswith("index:"):
                return (0, int(row.task.split(":", 1)[1]))
            return (1, 0 if row.task == "commit" else 1)

        return sorted(result, key=order)

    def job_counts_by_state(self) -> dict[int, int]:
        """``{job state: count}`` over every job."""
        rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {int(state): int(count) for state, count in rows.fetchall()}

    def task_counts_by_state(self) -> dict[str, int]:
        """``{task state: count}`` over every job's tasks."""
        rows = self._conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        return {str(state): int(count) for state, count in rows.fetchall()}

    def task_state_counts(self, job_id: int) -> dict[str, int]:
        """``{state: count}`` over a job's tasks."""
        rows = self._conn.execute(
            "SELECT state, COUNT(*) FROM tasks WHERE job_id = ? GROUP BY state", (job_id,)
        )
        return {str(state): int(count) for state, count in rows.fetchall()}
