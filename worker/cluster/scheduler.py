"""The reference scheduler engine: protocol.md §7 semantics as a thread-safe class, no gRPC.

A pump thread pulls ready work from storage's three lanes (commit, cleanup, regular) into a FIFO;
``NextTask`` long-polls that FIFO under a condition variable, records outstanding assignments per
worker and completes acks; a liveness thread removes silent workers and reschedules their
outstanding assignments with new ids. Everything a test needs to observe is kept in plain lists.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from worker.cluster.storage import Lane, ReadyTask
from worker.model import TaskId

__all__ = [
    "AckRecord",
    "Assignment",
    "InboundSource",
    "SchedulerBusy",
    "SchedulerClosed",
    "SchedulerEngine",
    "SchedulerSettings",
    "SkippedAck",
]

log = logging.getLogger("worker.cluster.scheduler")

_LANE_ORDER = (Lane.COMMIT, Lane.CLEANUP, Lane.REGULAR)


class InboundSource(Protocol):
    """Where the scheduler gets its identity and ready work (storage, in process or remote)."""

    def register_scheduler(self, host: str, port: int) -> tuple[int, int]:
        """``(scheduler_id, session_id)`` for a starting scheduler."""
        ...

    def poll_ready(
        self, lanes: tuple[Lane, ...], max_items: int, wait_sec: float
    ) -> tuple[int, list[ReadyTask]]:
        """``(session_id, entries)`` from ``lanes``, waiting up to ``wait_sec`` for any."""
        ...

    def wake_pollers(self) -> None:
        """Release blocked :meth:`poll_ready` calls."""
        ...


#: Entries kept in each observability log (dispatches, reschedules, acks).
LOG_CAPACITY = 100_000


def _log() -> collections.deque[Any]:
    return collections.deque(maxlen=LOG_CAPACITY)


class SchedulerClosed(Exception):
    """The scheduler is stopping (``INTERNAL "scheduler is shutting down"``)."""


class SchedulerBusy(Exception):
    """``max_long_polls`` calls already wait (``RESOURCE_EXHAUSTED``; the worker backs off)."""


@attrs.frozen(slots=True)
class SchedulerSettings:
    """Scheduler timings (protocol.md §9); fractional seconds accepted."""

    dead_em_cutoff_sec: float = 10.0
    liveness_tracking_interval_ms: int = 250
    inbound_poll_wait_ms: int = 200
    inbound_batch: int = 64
    #: ``NextTask`` calls that may wait at once (workers x slots); the server's thread pool is
    #: sized from it, so long polls never take the threads heartbeats and acks need.
    max_long_polls: int = 1024


@attrs.frozen(slots=True)
class Assignment:
    """One dispatched assignment, stamped with this scheduler's id."""

    id: int
    resource_group_id: int
    job_id: int
    task_id: TaskId
    scheduler_id: int
    session_id: int


@attrs.frozen(slots=True)
class AckRecord:
    """A completed acknowledgement."""

    em_id: int
    assignment_id: int


@attrs.frozen(slots=True)
class SkippedAck:
    """An acknowledgement that completed nothing, and why (a duplicate-ack signal)."""

    em_id: int
    assignment_id: int
    from_scheduler_id: int
    reason: str


@attrs.define(slots=True)
class _Entry:
    resource_group_id: int
    job_id: int
    task_id: TaskId
    session_id: int


@attrs.define(slots=True)
class _Worker:
    last_seen: float
    outstanding: dict[int, Assignment] = attrs.field(factory=dict)


def _fields(em_id: int, assignment: Assignment) -> dict[str, object]:
    """The structured log fields naming a worker's assignment."""
    return {
        "em_id": em_id,
        "assignment_id": assignment.id,
        "job_id": assignment.job_id,
        "task_id": str(assignment.task_id),
    }


class SchedulerEngine:
    """The scheduler semantics; :meth:`start` runs its pump and liveness threads."""

    def __init__(
        self,
        source: InboundSource,
        settings: SchedulerSettings = SchedulerSettings(),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Register with ``source`` (new scheduler id, session) without starting threads."""
        self.settings = settings
        self._source = source
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Entry] = collections.deque()
        self._workers: dict[int, _Worker] = {}
        self._next_id = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        # Observability for tests and operators; bounded so a long-lived cluster does not grow.
        self.dispatch_log: collections.deque[tuple[int, Assignment]] = _log()
        self.reschedule_log: collections.deque[tuple[int, Assignment]] = _log()
        self.acks_completed: collections.deque[AckRecord] = _log()
        self.acks_skipped: collections.deque[SkippedAck] = _log()
        #: Running totals (the logs above are bounded): acks by outcome, reschedules.
        self.ack_totals: collections.Counter[str] = collections.Counter()
        self.reschedules_total = 0
        #: How many ``NextTask`` calls are blocked in the long poll right now.
        self.waiting_polls = 0
        #: ``clock()`` when a ``NextTask`` call last arrived or ended.
        self._last_poll_at = clock()
        # The scheduler starts at session 0 and adopts the session storage reports (§3 rule 3).
        self.session_id = 0
        self.scheduler_id, session = source.register_scheduler(host, port)
        self._adopt(session)

    # --- lifecycle ---

    def start(self) -> None:
        """Start the inbound pump and the liveness tracker."""
        for name, target in (("inbound", self._pump), ("liveness", self._track_liveness)):
            thread = threading.Thread(target=target, name=f"scheduler-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Close the queue (pollers get :class:`SchedulerClosed`) and join the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        self._source.wake_pollers()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def wake(self) -> None:
        """Wake blocked ``NextTask`` calls so they re-check cancellation."""
        with self._cond:
            self._cond.notify_all()

    # --- inbound ---

    def _adopt(self, session: int) -> bool:
        if session > self.session_id:
            dropped = len(self._queue)
            self._queue.clear()
            log.info(
                "session adopted",
                extra={"fields": {"session_id": session, "dropped_undelivered": dropped}},
            )
            self.session_id = session
        return session == self.session_id

    def _pump(self) -> None:
        wait = self.settings.inbound_poll_wait_ms / 1000
        while not self._stop.is_set():
            try:
                session, entries = self._source.poll_ready(
                    _LANE_ORDER, self.settings.inbound_batch, wait
                )
            except Exception:
                log.exception("inbound poll failed")
                self._stop.wait(wait)
                continue
            self.accept(session, entries)

    def accept(self, session: int, entries: list[ReadyTask]) -> None:
        """Take ready entries polled at ``session`` (older sessions are ignored)."""
        with self._cond:
            if not self._adopt(session):
                return
            for entry in entries:
                self._queue.append(
                    _Entry(entry.resource_group_id, entry.job_id, entry.task_id, session)
                )
            if entries:
                self._cond.notify_all()

    # --- worker RPCs ---

    def next_task(
        self,
        em_id: int,
        ack: tuple[int, int] | None,
        wait_sec: float,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> Assignment | None:
        """``NextTask``: complete ``ack`` = ``(id, from)``, then an assignment or None (no task)."""
        with self._cond:
            self._last_poll_at = self._clock()
            try:
                return self._next_task(em_id, ack, wait_sec, is_cancelled)
            finally:
                self._last_poll_at = self._clock()

    def _next_task(
        self,
        em_id: int,
        ack: tuple[int, int] | None,
        wait_sec: float,
        is_cancelled: Callable[[], bool],
    ) -> Assignment | None:
        if ack is not None:
            self._complete(em_id, ack)
        deadline = time.monotonic() + max(0.0, wait_sec)
        while True:
            if self._closed:
                raise SchedulerClosed
            if is_cancelled():
                return None
            if self._queue:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.waiting_polls >= self.settings.max_long_polls:
                raise SchedulerBusy
            self.waiting_polls += 1
            try:
                self._cond.wait(remaining)
            finally:
                self.waiting_polls -= 1
        entry = self._queue.popleft()
        assignment = Assignment(
            self._next_id,
            entry.resource_group_id,
            entry.job_id,
            entry.task_id,
            self.scheduler_id,
            entry.session_id,
        )
        self._next_id += 1
        worker = self._upsert(em_id)
        worker.outstanding[assignment.id] = assignment
        self.dispatch_log.append((em_id, assignment))
        if log.isEnabledFor(logging.DEBUG):  # hot path: build the fields only when logged
            log.debug("dispatched", extra={"fields": _fields(em_id, assignment)})
        return assignment

    def poll_status(self) -> tuple[float, int]:
        """``(seconds since a NextTask call arrived or ended, 0 while one waits; outstanding)``."""
        with self._cond:
            idle = 0.0 if self.waiting_polls else max(0.0, self._clock() - self._last_poll_at)
            return idle, sum(len(w.outstanding) for w in self._workers.values())

    def heartbeat(self, em_id: int) -> None:
        """``Heartbeat``: upsert the worker and refresh its liveness (any id is accepted)."""
        with self._cond:
            self._upsert(em_id)

    def shutdown(self, em_id: int, acks: list[tuple[int, int]]) -> bool:
        """``Shutdown``: complete ``acks`` in order, then remove the worker and reschedule its work.

        Returns False when the worker was unknown (the RPC then answers ``NOT_FOUND``).
        """
        with self._cond:
            for ack in acks:
                self._complete(em_id, ack)
            worker = self._workers.pop(em_id, None)
            if worker is None:
                return False
            self._reschedule(em_id, worker)
            return True

    def _upsert(self, em_id: int) -> _Worker:
        worker = self._workers.get(em_id)
        if worker is None:
            worker = self._workers[em_id] = _Worker(self._clock())
        worker.last_seen = self._clock()
        return worker

    def _complete(self, em_id: int, ack: tuple[int, int]) -> None:
        assignment_id, from_scheduler = ack
        reason = ""
        worker = self._workers.get(em_id)
        if from_scheduler != self.scheduler_id:
            reason = "stale scheduler"
        elif worker is None:
            reason = "unknown worker"
        elif worker.outstanding.pop(assignment_id, None) is None:
            reason = "unknown assignment"
        self.ack_totals[reason or "completed"] += 1
        if reason:
            self.acks_skipped.append(SkippedAck(em_id, assignment_id, from_scheduler, reason))
            log.warning(
                "ack skipped",
                extra={
                    "fields": {
                        "em_id": em_id,
                        "assignment_id": assignment_id,
                        "from": from_scheduler,
                        "reason": reason,
                    }
                },
            )
            return
        assert worker is not None
        worker.last_seen = self._clock()
        self.acks_completed.append(AckRecord(em_id, assignment_id))

    def _reschedule(self, em_id: int, worker: _Worker) -> None:
        undelivered = {(entry.job_id, entry.task_id) for entry in self._queue}
        for assignment in worker.outstanding.values():
            key = (assignment.job_id, assignment.task_id)
            if assignment.session_id < self.session_id or key in undelivered:
                continue
            undelivered.add(key)
            # A new assignment id is given when the entry is dispatched again.
            self._queue.append(
                _Entry(
                    assignment.resource_group_id,
                    assignment.job_id,
                    assignment.task_id,
                    assignment.session_id,
                )
            )
            self.reschedule_log.append((em_id, assignment))
            self.reschedules_total += 1
            log.info("rescheduled", extra={"fields": _fields(em_id, assignment)})
        worker.outstanding.clear()
        self._cond.notify_all()

    def check_liveness(self) -> list[int]:
        """Remove workers silent for ``dead_em_cutoff_sec`` and reschedule their assignments."""
        with self._cond:
            cutoff = self._clock() - self.settings.dead_em_cutoff_sec
            dead = [em_id for em_id, w in self._workers.items() if w.last_seen <= cutoff]
            for em_id in dead:
                log.warning("worker lost", extra={"fields": {"em_id": em_id}})
                self._reschedule(em_id, self._workers.pop(em_id))
            return dead

    def _track_liveness(self) -> None:
        interval = self.settings.liveness_tracking_interval_ms / 1000
        while not self._stop.wait(interval):
            self.check_liveness()

    # --- read access ---

    def outstanding(self) -> dict[int, list[Assignment]]:
        """``{em_id: outstanding assignments}`` of every known worker."""
        with self._cond:
            return {em_id: list(w.outstanding.values()) for em_id, w in self._workers.items()}

    def queued(self) -> int:
        """How many undelivered entries wait."""
        with self._cond:
            return len(self._queue)
