"""The worker's Prometheus metrics and the typed API the runtime calls to move them.

Every metric lives in a private :class:`prometheus_client.CollectorRegistry` (never the global
one, so two workers in one process, or a test, never share values). Names follow Prometheus
conventions (``_total`` for counters, ``_seconds`` for durations); labels are of low
cardinality: outcomes, slot numbers, state names, RPC methods and status codes, loop names,
never a task or job id.

The methods are cheap and thread-safe (``prometheus_client`` locks each value), so the trio
side calls them inline on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.core.machine import State
from worker.core.worker_state import HEARTBEAT_LOOPS as CORE_HEARTBEAT_LOOPS
from worker.metrics.health import WATCHDOG_TIMEOUT_SEC, Health

__all__ = ["HEARTBEAT_LOOPS", "OUTCOMES", "SLOT_STATES", "WorkerMetrics"]

#: How a task ends, as counted by ``worker_tasks_finished_total{outcome}``.
OUTCOMES: Final = ("succeeded", "failed", "timed_out", "crashed")
#: The states of a slot's main loop (protocol.md section 6.4), first the initial one.
SLOT_STATES: Final = tuple(state.value for state in State)
#: The two liveness loops, in the order their series are created.
HEARTBEAT_LOOPS: Final = tuple(sorted(CORE_HEARTBEAT_LOOPS, reverse=True))
#: Task durations range from milliseconds to hours.
_DURATION_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    float("inf"),
)


def _check(kind: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}")


class WorkerMetrics:
    """One worker's metrics and probe state.

    ``slots`` is the number of slots (protocol.md section 6.12); ``clock`` and
    ``watchdog_timeout_sec`` are passed to :class:`Health` (the clock is the tests' fault
    hook for a stuck loop).
    """

    def __init__(
        self,
        *,
        slots: int = 1,
        states: Sequence[str] = SLOT_STATES,
        clock: Callable[[], float] | None = None,
        watchdog_timeout_sec: float = WATCHDOG_TIMEOUT_SEC,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = Health(clock=clock or time.monotonic, timeout_sec=watchdog_timeout_sec)
        self._slots = slots
        self._states = tuple(states)
        self._slot_states = [self._states[0]] * slots
        registry = self.registry
        self._assignments = Counter(
            "worker_assignments_received",
            "Assignments received from the scheduler (stale ones included).",
            registry=registry,
        )
        self._finished = Counter(
            "worker_tasks_finished",
            "Tasks that ended on this worker, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._duration = Histogram(
            "worker_task_duration_seconds",
            "Wall-clock run time of a task in its executor, by outcome.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        for outcome in OUTCOMES:
            self._finished.labels(outcome)
            self._duration.labels(outcome)
        self._reports_sent = Counter(
            "worker_reports_sent",
            "Outcome reports (success or failure) that storage answered.",
            registry=registry,
        )
        self._reports_retried = Counter(
            "worker_report_retries",
            "Outcome report attempts repeated after a transient error.",
            registry=registry,
        )
        self._reports_dropped = Counter(
            "worker_reports_dropped",
            "Outcome reports given up (stale session, rejected, or out of time).",
            registry=registry,
        )
        self._records_pending = Gauge(
            "worker_records_pending",
            "Consumed assignments whose acknowledgement has not been accepted yet.",
            registry=registry,
        )
        self._records_acknowledged = Counter(
            "worker_records_acknowledged",
            "Consumed assignments acknowledged to the scheduler.",
            registry=registry,
        )
        self._slots_busy = Gauge(
            "worker_slots_busy", "Slots holding an assignment now.", registry=registry
        )
        Gauge("worker_slots", "Slots of this worker.", registry=registry).set(slots)
        self._rpc_errors = Counter(
            "worker_rpc_errors",
            "Failed RPCs, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self._heartbeat_failures = Counter(
            "worker_heartbeat_failures",
            "Failed heartbeats, by loop.",
            ["loop"],
            registry=registry,
        )
        for loop in HEARTBEAT_LOOPS:
            self._heartbeat_failures.labels(loop)
        self._slot_state = Gauge(
            "worker_slot_state",
            "State of each slot's main loop: 1 for the current state, 0 for the others.",
            ["slot", "state"],
            registry=registry,
        )
        for slot in range(slots):
            for state in self._states:
                self._slot_state.labels(str(slot), state).set(1 if state == self._states[0] else 0)
        self._session = Gauge(
            "worker_session",
            "Storage session the worker last learned (0: none yet).",
            registry=registry,
        )
        self._worker_id = Gauge(
            "worker_id",
            "Execution-manager id given by storage (0: not registered).",
            registry=registry,
        )
        self._ready = Gauge(
            "worker_ready",
            "1 from registration until draining begins, else 0.",
            registry=registry,
        )

    # --- Assignments and tasks ---------------------------------------------------------------

    def assignment_received(self) -> None:
        """A ``NextTask`` returned an assignment."""
        self._assignments.inc()

    def task_finished(self, outcome: str, seconds: float) -> None:
        """A task ended with ``outcome`` (one of :data:`OUTCOMES`) after ``seconds``."""
        _check("outcome", outcome, OUTCOMES)
        self._finished.labels(outcome).inc()
        self._duration.labels(outcome).observe(max(0.0, seconds))

    # --- Reports and acknowledgements ---------------------------------------------------------

    def report_sent(self) -> None:
        """Storage answered an outcome report."""
        self._reports_sent.inc()

    def report_retried(self) -> None:
        """An outcome report is tried again after a transient error."""
        self._reports_retried.inc()

    def report_dropped(self) -> None:
        """An outcome report was given up."""
        self._reports_dropped.inc()

    def records_pending(self, count: int) -> None:
        """``count`` consumed assignments wait for their acknowledgement."""
        self._records_pending.set(count)

    def records_acknowledged(self, count: int = 1) -> None:
        """``count`` consumed assignments were acknowledged."""
        self._records_acknowledged.inc(count)

    # --- Slots ---------------------------------------------------------------------------------

    def slot_state(self, slot: int, state: str) -> None:
        """Slot ``slot`` (0-based) is now in ``state`` (one of the states given at start)."""
        if not 0 <= slot < self._slots:
            raise ValueError(f"unknown slot {slot}; this worker has {self._slots}")
        _check("state", state, self._states)
        previous = self._slot_states[slot]
        if previous != state:
            self._slot_state.labels(str(slot), previous).set(0)
            self._slot_state.labels(str(slot), state).set(1)
            self._slot_states[slot] = state

    def slots_busy(self, count: int) -> None:
        """``count`` slots hold an assignment now."""
        self._slots_busy.set(count)

    # --- RPCs, liveness, session --------------------------------------------------------------

    def rpc_error(self, method: str, code: str) -> None:
        """RPC ``method`` (e.g. ``NextTask``) failed with status ``code`` (e.g. ``UNAVAILABLE``)."""
        self._rpc_errors.labels(method, code).inc()

    def heartbeat_failure(self, loop: str) -> None:
        """A heartbeat of ``loop`` (``storage`` or ``scheduler``) failed."""
        _check("loop", loop, HEARTBEAT_LOOPS)
        self._heartbeat_failures.labels(loop).inc()

    def registered(self, worker_id: int, session: int) -> None:
        """Storage registered this worker as ``worker_id`` in ``session``."""
        self._worker_id.set(worker_id)
        self._session.set(session)

    def session(self, session: int) -> None:
        """The worker learned storage session ``session``."""
        self._session.set(session)

    # --- Probes --------------------------------------------------------------------------------

    def tick(self) -> None:
        """The trio loop is alive (the watchdog calls this every second)."""
        self.health.tick()

    def set_ready(self, ready: bool) -> None:
        """Ready from registration until draining begins."""
        self.health.set_ready(ready)
        self._ready.set(1 if ready else 0)

    def heartbeat_loop_ended(self, loop: str, *, unexpected: bool) -> None:
        """Liveness loop ``loop`` ended; ``unexpected`` unless stopping or evicted."""
        _check("loop", loop, HEARTBEAT_LOOPS)
        self.health.heartbeat_loop_ended(loop, unexpected=unexpected)
