"""Feeds :class:`~worker.metrics.instruments.WorkerMetrics` from the runtime's ports.

The runtime talks to the world only through its ports (``worker.core.ports``). Each decorator
here forwards every call unchanged and counts only what is plainly visible at that boundary: a
call, its answer or its error. Whatever depends on a protocol decision (which records are
pending, which slots are busy, the state of each slot, drains, stale sessions) comes from the
core itself, through :class:`~worker.metrics.observer.MetricsObserver`. The decorators have the
port's exact signature, so the runtime takes them where it took the bare clients.

========================  ==========================================================
metric                    fed from
========================  ==========================================================
assignments received      decorator: ``next_task`` returned an assignment
tasks finished, duration  decorator: ``execute`` returned an outcome (Success,
                          InTaskFailure, Timeout, ExecutorCrash); duration = the span
reports sent              decorator: a report call returned OK
reports retried           decorator: a second report call for the same
                          (session, instance)
reports dropped           decorator: a report answered with a final code (anything but
                          a transport error); a report call cancelled; an outcome whose
                          report was not settled (never attempted, or last tried with a
                          transient error) when ``shutdown`` starts
RPC errors                decorator: every call that raised: method and status code
                          (``MALFORMED_REPLY`` for an OK answer that broke the contract)
heartbeat failures        decorator: a storage or scheduler heartbeat call raised
session, worker id        decorator: ``register``; every storage heartbeat (highest)
readiness                 decorator: ready once ``register`` returned, unless draining
                          began (:meth:`PortInstruments.draining_began`, the service's
                          stop signal); observer: not ready from ``DrainingBegan``
state of each slot        observer: ``SlotMoved``
slots busy                observer: assignments the core holds in a slot
records pending, acked    observer: ``RecordsChanged``
``/healthz`` reason (b)   observer: ``HeartbeatLoopStopped`` (neither stopping nor
                          evicted)
``/assignments``          observer: its snapshot
========================  ==========================================================

Every method runs on the trio thread, inline, without awaiting anything of its own, so the
decorated call behaves exactly as the bare one (cancellation included).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Generic, TypeVar

import trio

from worker.core.ports import (
    Executor,
    ExecutorFactory,
    LivenessClient,
    SchedulerClient,
    StorageClient,
)
from worker.errors import (
    ProtocolError,
    Rpc,
    RpcError,
    TransportError,
)
from worker.metrics.instruments import WorkerMetrics
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    ExecutionRequest,
    FailureReport,
    JobId,
    Outcome,
    Registration,
    SchedulerAssignment,
    SessionId,
    SuccessReport,
    TaskAssignmentRecord,
    TaskId,
    outcome_kind,
)

__all__ = [
    "MALFORMED_REPLY",
    "InstrumentedExecutor",
    "InstrumentedLiveness",
    "InstrumentedScheduler",
    "InstrumentedStorage",
    "PortInstruments",
]

#: The ``code`` label of an OK answer that broke the contract (``ProtocolError``).
MALFORMED_REPLY = "MALFORMED_REPLY"

_Report = TypeVar("_Report", SuccessReport, FailureReport)
_Port = TypeVar("_Port")
#: A report's identity: instance ids are unique within one session only.
_ReportKey = tuple[SessionId, int]


class _Settlement(enum.Enum):
    """Where the report of an outcome the executor returned stands, as the ports saw it."""

    OWED = "owed"  # no call yet, or the last one ended with a transient error
    IN_FLIGHT = "in_flight"


def _method(rpc: Rpc) -> str:
    """``SchedulerService.NextTask`` -> ``NextTask``: short, and unique among the worker's RPCs."""
    return rpc.value.rsplit(".", 1)[1]


class PortInstruments:
    """Shared state of the port decorators and the metrics they move.

    Create it inside the trio run (it owns a ``trio.Event``); wrap each port with the matching
    method. ``clock`` times executions (``trio.current_time`` so a ``MockClock`` drives it).
    """

    def __init__(
        self, metrics: WorkerMetrics, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.metrics = metrics
        self._clock = clock
        #: Set once storage registered this worker (the tests' fault hook waits for it).
        self.registered = trio.Event()
        self._draining = False
        self._session = 0
        # Outcomes the executor returned whose report is not settled yet, by instance id (an
        # execution request carries no session; one worker never runs two instances with one
        # id at once).
        self._unsettled: dict[int, _Settlement] = {}
        self._attempts: dict[_ReportKey, int] = {}

    # --- decorators -------------------------------------------------------------------------

    def scheduler(self, inner: SchedulerClient) -> InstrumentedScheduler:
        """``inner`` with its calls counted."""
        return InstrumentedScheduler(inner, self)

    def storage(self, inner: StorageClient) -> InstrumentedStorage:
        """``inner`` with its calls counted."""
        return InstrumentedStorage(inner, self)

    def liveness(self, inner: LivenessClient) -> InstrumentedLiveness:
        """``inner`` with its calls counted."""
        return InstrumentedLiveness(inner, self)

    def executor(self, inner: Executor) -> InstrumentedExecutor:
        """``inner`` with its executions counted."""
        return InstrumentedExecutor(inner, self)

    def executor_factory(self, inner: ExecutorFactory) -> ExecutorFactory:
        """``inner``, whose opened pool is instrumented."""

        @asynccontextmanager
        async def open_instrumented() -> AsyncIterator[Executor]:
            async with inner() as pool:
                yield self.executor(pool)

        return open_instrumented

    # --- events from outside the ports ----------------------------------------------------------

    def draining_began(self) -> None:
        """The first stop signal arrived: not ready from now on (protocol.md 6.13).

        The service calls this before the runtime hears of the signal, so readiness ends at
        once; the observer's ``DrainingBegan`` covers the drains the core starts itself.
        """
        self._draining = True
        self.metrics.set_ready(False)

    # --- what the decorators saw ------------------------------------------------------------

    @contextmanager
    def _counting_errors(self, heartbeat_loop: str | None = None) -> Iterator[None]:
        """Count an RPC error raised inside (and a heartbeat failure of ``heartbeat_loop``)."""
        try:
            yield
        except (RpcError, ProtocolError) as error:
            self._rpc_failed(error)
            if heartbeat_loop is not None:
                self.metrics.heartbeat_failure(heartbeat_loop)
            raise

    def _rpc_failed(self, error: RpcError | ProtocolError) -> None:
        code = error.code.name if isinstance(error, RpcError) else MALFORMED_REPLY
        self.metrics.rpc_error(_method(error.rpc), code)

    def _learned_session(self, session: int) -> None:
        if session > self._session:
            self._session = session
            self.metrics.session(session)

    def _registered(self, registration: Registration) -> None:
        self._session = max(self._session, registration.session_id)
        self.metrics.registered(registration.execution_manager_id, registration.session_id)
        if not self._draining:
            self.metrics.set_ready(True)
        self.registered.set()

    def _execution_ended(
        self, request: ExecutionRequest, started: float, outcome: Outcome | None
    ) -> None:
        if outcome is None:
            return  # cancelled or the pool failed: no outcome, no report
        self.metrics.task_finished(outcome_kind(outcome), self._clock() - started)
        self._unsettled[request.task_instance_id] = _Settlement.OWED

    def _report_started(self, key: _ReportKey) -> None:
        attempts = self._attempts.get(key, 0)
        if attempts > 0:
            self.metrics.report_retried()
        self._attempts[key] = attempts + 1
        self._unsettled[key[1]] = _Settlement.IN_FLIGHT

    def _report_ended(self, key: _ReportKey, error: BaseException | None) -> None:
        if isinstance(error, TransportError):
            self._unsettled[key[1]] = _Settlement.OWED  # a transient error: it may be tried again
            return
        if error is None:
            self.metrics.report_sent()
        else:
            self.metrics.report_dropped()  # a final answer, or cancelled (abandoned)
        self._unsettled.pop(key[1], None)
        self._attempts.pop(key, None)

    def _shutting_down(self) -> None:
        # Shutdown comes after the drain: a report not settled by now never will be.
        self.metrics.set_ready(False)
        for report in self._unsettled.values():
            if report is _Settlement.OWED:
                self.metrics.report_dropped()
        self._unsettled.clear()
        self._attempts.clear()


class _Decorator(Generic[_Port]):
    """Forwards to ``inner``; what it sees moves ``instruments``."""

    def __init__(self, inner: _Port, instruments: PortInstruments) -> None:
        self._inner: _Port = inner
        self._instruments = instruments


class InstrumentedScheduler(_Decorator[SchedulerClient]):
    """A :class:`~worker.core.ports.SchedulerClient` that counts what passes through."""

    async def next_task(
        self,
        em_id: ExecutionManagerId,
        prev_assignment: TaskAssignmentRecord | None,
        wait_time_ms: int,
    ) -> SchedulerAssignment | None:
        """Forward; count the assignment or the error."""
        with self._instruments._counting_errors():
            reply = await self._inner.next_task(em_id, prev_assignment, wait_time_ms)
        if reply is not None:
            self._instruments.metrics.assignment_received()
        return reply

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        """Forward; a failure counts for the scheduler loop."""
        with self._instruments._counting_errors(heartbeat_loop="scheduler"):
            await self._inner.heartbeat(em_id)

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        """Forward; reports still unsettled when it starts are dropped."""
        self._instruments._shutting_down()
        with self._instruments._counting_errors():
            await self._inner.shutdown(em_id, prev_assignments)


class InstrumentedStorage(_Decorator[StorageClient]):
    """A :class:`~worker.core.ports.StorageClient` that counts what passes through."""

    async def register_task_instance(
        self,
        job_id: JobId,
        task_id: TaskId,
        em_id: ExecutionManagerId,
        session_id: SessionId,
    ) -> ExecutionContext:
        """Forward; count the error."""
        with self._instruments._counting_errors():
            return await self._inner.register_task_instance(job_id, task_id, em_id, session_id)

    async def report_task_success(self, report: SuccessReport) -> None:
        """Forward; count the attempt and how it ended."""
        await self._report(report, self._inner.report_task_success)

    async def report_task_failure(self, report: FailureReport) -> None:
        """Forward; count the attempt and how it ended."""
        await self._report(report, self._inner.report_task_failure)

    async def _report(
        self,
        report: _Report,
        send: Callable[[_Report], Awaitable[None]],
    ) -> None:
        instruments = self._instruments
        key = (report.session_id, report.task_instance_id)
        instruments._report_started(key)
        try:
            await send(report)
        except (RpcError, ProtocolError) as error:
            instruments._rpc_failed(error)
            instruments._report_ended(key, error)
            raise
        except trio.Cancelled as cancelled:
            instruments._report_ended(key, cancelled)
            raise
        instruments._report_ended(key, None)


class InstrumentedLiveness(_Decorator[LivenessClient]):
    """A :class:`~worker.core.ports.LivenessClient` that counts what passes through."""

    async def register(self, ip_address: str) -> Registration:
        """Forward; a registration makes the worker ready (unless draining began)."""
        with self._instruments._counting_errors():
            registration = await self._inner.register(ip_address)
        self._instruments._registered(registration)
        return registration

    async def heartbeat(self, em_id: ExecutionManagerId) -> SessionId:
        """Forward; learn the session, or count a failure of the storage loop."""
        with self._instruments._counting_errors(heartbeat_loop="storage"):
            session = await self._inner.heartbeat(em_id)
        self._instruments._learned_session(session)
        return session


class InstrumentedExecutor(_Decorator[Executor]):
    """An :class:`~worker.core.ports.Executor` that counts outcomes and times them."""

    async def execute(self, request: ExecutionRequest) -> Outcome:
        """Forward; count the outcome by kind with its duration."""
        started = self._instruments._clock()
        outcome: Outcome | None = None
        try:
            outcome = await self._inner.execute(request)
        finally:
            self._instruments._execution_ended(request, started, outcome)
        return outcome
