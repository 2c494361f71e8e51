"""An in-process reference cluster: SQLite storage and scheduler on loopback gRPC ports.

Used by ``python -m worker local`` and ``python -m worker cluster``, by the end-to-end tests and by
the benchmark. It owns the database, both engines and both gRPC servers, and offers the restart
hooks of protocol.md §8.7 (storage restart = new session over the same database; scheduler
restart = a new scheduler process on the same port, with a new id).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import attrs

from worker.cluster.db import Database, DatabaseLock, DatabaseUnavailable
from worker.cluster.jobs import Job
from worker.cluster.scheduler import SchedulerEngine, SchedulerSettings
from worker.cluster.servers import (
    STORAGE_THREADS,
    Listener,
    ListenError,
    SchedulerServer,
    StorageServer,
    listen,
    scheduler_threads,
)
from worker.cluster.status import ClusterStatus
from worker.cluster.storage import JobState, StorageEngine, StorageSettings

__all__ = ["ClusterSettings", "ClusterStartError", "EmbeddedCluster"]


class ClusterStartError(Exception):
    """The cluster cannot start: a port is taken or unbindable, or the database is unusable.

    The message is one line naming the address or the file. A taken port or database is found
    before the database is opened, so a running cluster's file is never touched.
    """


@attrs.frozen(slots=True)
class ClusterSettings:
    """Where the cluster listens and keeps its data, and its timings."""

    database: Path | str = ":memory:"
    host: str = "127.0.0.1"
    storage_port: int = 0
    scheduler_port: int = 0
    storage: StorageSettings = attrs.field(factory=StorageSettings)
    scheduler: SchedulerSettings = attrs.field(factory=SchedulerSettings)


class EmbeddedCluster:
    """Storage + scheduler in this process; use as a context manager or call start/stop."""

    def __init__(self, settings: ClusterSettings = ClusterSettings()) -> None:
        """Bind both ports, lock the database, then open it (serving starts with :meth:`start`).

        The ports and the lock come first, so a cluster that cannot start leaves the database
        untouched; every such failure is a :class:`ClusterStartError`.
        """
        self.settings = settings
        listeners: list[Listener] = []
        lock: DatabaseLock | None = None
        try:
            listeners.append(listen(settings.host, settings.storage_port, STORAGE_THREADS))
            listeners.append(
                listen(
                    settings.host, settings.scheduler_port, scheduler_threads(settings.scheduler)
                )
            )
            lock = DatabaseLock(settings.database)
            self.db = Database(settings.database)
            self.storage = StorageEngine(self.db, settings.storage)
        except (ListenError, DatabaseUnavailable, OSError, sqlite3.Error) as error:
            for listener in listeners:
                listener.server.stop(None)
            if lock is not None:
                lock.release()
            if isinstance(error, (ListenError, DatabaseUnavailable)):
                raise ClusterStartError(str(error)) from None
            raise ClusterStartError(f"cannot open database {settings.database}: {error}") from None
        self._lock = lock
        storage_listener, scheduler_listener = listeners
        self.storage_server = StorageServer(self.storage, storage_listener, status=self.status)
        self.scheduler = SchedulerEngine(
            self.storage, settings.scheduler, host=settings.host, port=scheduler_listener.port
        )
        self.scheduler_server = SchedulerServer(self.scheduler, scheduler_listener)
        self._started = False

    @property
    def storage_port(self) -> int:
        """The storage's bound port."""
        return self.storage_server.port

    @property
    def scheduler_port(self) -> int:
        """The scheduler's bound port."""
        return self.scheduler_server.port

    def start(self) -> None:
        """Serve both services."""
        self.storage_server.start()
        self.scheduler_server.start()
        self._started = True

    def stop(self) -> None:
        """Stop both services and close the database."""
        if self._started:
            self.scheduler_server.stop()
            self.storage_server.stop()
            self._started = False
        else:  # bound but never served: release the ports
            self.scheduler_server.stop(grace=0)
            self.storage_server.stop(grace=0)
        self.db.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> EmbeddedCluster:
        """Start and return the cluster."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the cluster."""
        self.stop()

    def status(self) -> ClusterStatus:
        """The answer to the cluster status call (served on the storage port)."""
        idle, outstanding = self.scheduler.poll_status()
        return ClusterStatus(self.storage.session_id, idle, outstanding)

    # --- hooks ---

    def restart_storage(self) -> int:
        """Restart storage in place: a new session, in-memory state rebuilt from the database."""
        return self.storage.restart()

    def storage_outage(self, seconds: float, *, restart: bool = False) -> None:
        """Take the storage's gRPC server down for ``seconds``; no reaper runs meanwhile.

        ``restart=False`` keeps the state (no new session); ``restart=True`` comes back as a
        restarted storage process would: a new session, state rebuilt from the database.
        """
        port, hooks = self.storage_server.port, self.storage_server.hooks
        self.storage_server.stop(grace=0)
        time.sleep(seconds)
        if restart:
            self.storage.restart()
        listener = listen(self.settings.host, port, STORAGE_THREADS)
        self.storage_server = StorageServer(self.storage, listener, hooks=hooks, status=self.status)
        self.storage_server.start()

    def restart_scheduler(self, downtime_sec: float = 0.0) -> int:
        """Replace the scheduler process: new engine and server on the same port, new id.

        ``downtime_sec`` keeps the port closed that long in between (a scheduler outage).
        """
        port, hooks = self.scheduler_server.port, self.scheduler_server.hooks
        self.scheduler_server.stop(grace=0)
        time.sleep(downtime_sec)
        self.scheduler = SchedulerEngine(
            self.storage, self.settings.scheduler, host=self.settings.host, port=port
        )
        listener = listen(self.settings.host, port, scheduler_threads(self.settings.scheduler))
        self.scheduler_server = SchedulerServer(self.scheduler, listener, hooks=hooks)
        self.scheduler_server.start()
        return self.scheduler.scheduler_id

    # --- jobs ---

    def submit(self, job: Job) -> int:
        """Register and start ``job``; returns its id."""
        return self.storage.submit(job)

    def wait_job(self, job_id: int, timeout_sec: float, poll_sec: float = 0.05) -> JobState:
        """Wait until the job is terminal or ``timeout_sec`` passed; returns its state."""
        deadline = time.monotonic() + timeout_sec
        while True:
            state = self.storage.job_state(job_id)
            if state.terminal or time.monotonic() >= deadline:
                return state
            time.sleep(poll_sec)

    def worker_config(
        self,
        package_dir: Path,
        *,
        poll_wait_ms: int = 1000,
        heartbeat_sec: float = 1.0,
        log_format: str = "json",
        log_level: str = "info",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A worker configuration document (protocol.md §9.1) for this cluster."""
        config: dict[str, Any] = {
            "storage": {"host": self.settings.host, "port": self.storage_port},
            "scheduler": {"host": self.settings.host, "port": self.scheduler_port},
            "connection_pool_size": 1,
            "scheduler_poll_wait_ms": poll_wait_ms,
            "liveness": {
                "storage_heartbeat_interval_sec": heartbeat_sec,
                "scheduler_heartbeat_interval_sec": heartbeat_sec,
            },
            "task_executor": {"package_dir": str(package_dir)},
            "log": {"format": log_format, "level": log_level},
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return config
