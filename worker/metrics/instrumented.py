"""Feeds :class:`~worker.metrics.instruments.WorkerMetrics` from outside the runtime.

The runtime talks to the world only through its ports (``worker.core.ports``). Wrapping each
port in a decorator that forwards every call unchanged and watches what goes in and comes out
is enough to count most of protocol.md section 6.13 without the runtime knowing: the decorators
are black boxes with the port's exact signature, so the runtime (and any rewrite of it) takes
them where it took the bare clients.

One :class:`PortInstruments` holds the state the decorators share (the session learned, the
records, which assignments are held, which reports are owed) and hands out the decorators:

========================  ==========================================================
metric                    fed from
========================  ==========================================================
assignments received      ``next_task`` returned an assignment
records acknowledged      ``next_task`` carrying a record returned OK (or a malformed OK
                          answer: the call completed); ``shutdown`` returned OK
records pending           mirror of the acknowledgement FIFO: a record enters when its
                          registration is resolved as consumed (OK, ``NOT_FOUND``,
                          ``FAILED_PRECONDITION``, malformed context) or when an
                          assignment arrives with a session below the one learned; it
                          also enters when seen carried; it leaves when acknowledged
slots busy                assignments held: from ``next_task`` returning one until its
                          registration resolves without an instance, or its execution
                          ends (protocol.md 6.12's definition, observed from the ports)
tasks finished, duration  ``execute`` returned an outcome: Success, InTaskFailure,
                          Timeout, ExecutorCrash; duration = the call's span
reports sent              a report call returned OK
reports retried           a second report call for the same (session, instance)
reports dropped           a report answered with a final code; a report call cancelled
                          (abandoned by a forced stop); a report owed whose session the
                          worker left behind (gate 2 drops it before its next attempt);
                          a report still owed when ``shutdown`` starts
RPC errors                every call that raised: method and status code name
                          (``MALFORMED_REPLY`` for an OK answer that broke the contract)
heartbeat failures        a storage or scheduler heartbeat call raised
session, worker id        ``register`` and every storage heartbeat (highest seen)
readiness                 ready once ``register`` returned, unless draining began;
                          not ready from :meth:`PortInstruments.draining_began` and at
                          ``shutdown``
========================  ==========================================================

Not fed from here (they need the runtime's own observer hook): the state of each slot, a
heartbeat loop ending unexpectedly, and the ``/assignments`` story.

Every method runs on the trio thread, inline, without awaiting anything of its own, so the
decorated call behaves exactly as the bare one (cancellation included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import attrs
import trio

from worker.core.ports import (
    Executor,
    ExecutorFactory,
    LivenessClient,
    SchedulerClient,
    StorageClient,
)
from worker.errors import (
    InvalidInputError,
    ProtocolError,
    Rpc,
    RpcError,
    StaleSessionError,
    StaleStateError,
    TransportError,
)
from worker.metrics.instruments import WorkerMetrics
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    ExecutionRequest,
    ExecutorCrash,
    FailureReport,
    InTaskFailure,
    JobId,
    Outcome,
    Registration,
    SchedulerAssignment,
    SessionId,
    Success,
    SuccessReport,
    TaskAssignmentRecord,
    TaskId,
    Timeout,
)

__all__ = [
    "MALFORMED_REPLY",
    "InstrumentedExecutor",
    "InstrumentedLiveness",
    "InstrumentedScheduler",
    "InstrumentedStorage",
    "PortInstruments",
    "outcome_label",
]

#: The ``code`` label of an OK answer that broke the contract (``ProtocolError``).
MALFORMED_REPLY = "MALFORMED_REPLY"

#: An assignment as storage calls see it: the registration carries exactly these.
_HeldKey = tuple[JobId, TaskId, SessionId]
#: A record's identity (``TaskAssignmentRecord`` is a frozen value, hashable as is).
_RecordKey = TaskAssignmentRecord
_Report = TypeVar("_Report", SuccessReport, FailureReport)
#: A report's identity: instance ids are unique within one session only.
_ReportKey = tuple[SessionId, int]


def outcome_label(outcome: Outcome) -> str:
    """The ``outcome`` label of ``worker_tasks_finished_total`` for an executor outcome."""
    match outcome:
        case Success():
            return "succeeded"
        case InTaskFailure():
            return "failed"
        case Timeout():
            return "timed_out"
        case ExecutorCrash():
            return "crashed"


def _method(rpc: Rpc) -> str:
    """``SchedulerService.NextTask`` -> ``NextTask``: short, and unique among the worker's RPCs."""
    return rpc.value.rsplit(".", 1)[1]


@attrs.define(slots=True)
class _OwedReport:
    """A report the runtime owes storage: an outcome came back and no answer settled it yet."""

    attempts: int = 0
    in_flight: bool = False


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
        # Insertion-ordered, like the runtime's FIFO (values unused).
        self._pending: dict[_RecordKey, None] = {}
        self._held: dict[_HeldKey, TaskAssignmentRecord] = {}
        self._executing: dict[int, SessionId] = {}  # instance id -> its assignment's session
        self._owed: dict[_ReportKey, _OwedReport] = {}

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

        def factory() -> AbstractAsyncContextManager[Executor]:
            return open_instrumented()

        return factory

    # --- events from outside the ports ----------------------------------------------------------

    def draining_began(self) -> None:
        """The first stop signal arrived: not ready from now on (protocol.md 6.13)."""
        self._draining = True
        self.metrics.set_ready(False)

    @property
    def records_pending(self) -> int:
        """The records the mirror holds now."""
        return len(self._pending)

    @property
    def slots_busy(self) -> int:
        """Assignments held now (received, not yet resolved or finished)."""
        return len(self._held) + len(self._executing)

    # --- what the decorators saw ------------------------------------------------------------

    def _rpc_failed(self, error: RpcError | ProtocolError) -> None:
        code = error.code.name if isinstance(error, RpcError) else MALFORMED_REPLY
        self.metrics.rpc_error(_method(error.rpc), code)

    def _show_busy(self) -> None:
        self.metrics.slots_busy(self.slots_busy)

    def _show_pending(self) -> None:
        self.metrics.records_pending(len(self._pending))

    def _record_consumed(self, record: TaskAssignmentRecord) -> None:
        self._pending[record] = None
        self._show_pending()

    def _records_carried(self, records: Sequence[TaskAssignmentRecord]) -> None:
        # A record the mirror missed (its cause was not observable) is pending all the same.
        for record in records:
            self._pending.setdefault(record, None)
        self._show_pending()

    def _records_acknowledged(self, records: Sequence[TaskAssignmentRecord]) -> None:
        for record in records:
            self._pending.pop(record, None)
        if records:
            self.metrics.records_acknowledged(len(records))
        self._show_pending()

    def _assignment_received(self, reply: SchedulerAssignment) -> None:
        self.metrics.assignment_received()
        assignment = reply.assignment
        if self._draining:
            return  # received after draining began: discarded, never recorded (rule 16)
        if assignment.session_id < self._session:
            # Stale: the runtime records it without calling storage (rule 17).
            self._record_consumed(reply.record)
            return
        self._held[(assignment.job_id, assignment.task_id, assignment.session_id)] = reply.record
        self._show_busy()

    def _registration_resolved(
        self, key: _HeldKey, *, consumed: bool, context: ExecutionContext | None = None
    ) -> None:
        record = self._held.pop(key, None)
        if consumed and record is not None:
            self._record_consumed(record)
        if context is not None:
            self._executing[context.task_instance_id] = key[2]
        self._show_busy()

    def _learned_session(self, session: int) -> None:
        if session <= self._session:
            return
        self._session = session
        self.metrics.session(session)
        # Gate 2: a report owed for an older session is dropped before its next attempt.
        for key, owed in list(self._owed.items()):
            if key[0] < session and not owed.in_flight:
                del self._owed[key]
                self.metrics.report_dropped()

    def _registered(self, registration: Registration) -> None:
        self._session = max(self._session, registration.session_id)
        self.metrics.registered(registration.execution_manager_id, registration.session_id)
        if not self._draining:
            self.metrics.set_ready(True)
        self.registered.set()

    def _execution_started(self) -> float:
        return self._clock()

    def _execution_ended(
        self, request: ExecutionRequest, started: float, outcome: Outcome | None
    ) -> None:
        session = self._executing.pop(request.task_instance_id, None)
        self._show_busy()
        if outcome is None:
            return  # cancelled or the pool failed: no outcome, no report
        self.metrics.task_finished(outcome_label(outcome), self._clock() - started)
        if session is None:
            return  # an execution the mirror did not see registered: nothing to expect
        if session < self._session:
            self.metrics.report_dropped()  # gate 2 drops it before the first attempt
        else:
            self._owed[(session, request.task_instance_id)] = _OwedReport()

    def _report_started(self, key: _ReportKey) -> _OwedReport:
        owed = self._owed.setdefault(key, _OwedReport())
        if owed.attempts > 0:
            self.metrics.report_retried()
        owed.attempts += 1
        owed.in_flight = True
        return owed

    def _report_ended(
        self, key: _ReportKey, owed: _OwedReport, error: BaseException | None
    ) -> None:
        owed.in_flight = False
        if error is None:
            self.metrics.report_sent()
        elif isinstance(error, TransportError) and key[0] >= self._session:
            return  # retried after a backoff
        else:
            # Final answer, cancelled (abandoned), or transient but the session moved on.
            self.metrics.report_dropped()
        self._owed.pop(key, None)

    def _shutting_down(self, records: Sequence[TaskAssignmentRecord]) -> None:
        # Shutdown comes after the drain: nothing is held, no report is still owed.
        self.metrics.set_ready(False)
        for owed in self._owed.values():
            if not owed.in_flight:
                self.metrics.report_dropped()
        self._owed.clear()
        self._held.clear()
        self._executing.clear()
        self._show_busy()
        self._records_carried(records)


class InstrumentedScheduler:
    """A :class:`~worker.core.ports.SchedulerClient` that counts what passes through."""

    def __init__(self, inner: SchedulerClient, instruments: PortInstruments) -> None:
        self._inner = inner
        self._instruments = instruments

    async def next_task(
        self,
        em_id: ExecutionManagerId,
        prev_assignment: TaskAssignmentRecord | None,
        wait_time_ms: int,
    ) -> SchedulerAssignment | None:
        """Forward; count the assignment, the acknowledgement, or the error."""
        instruments = self._instruments
        carried = () if prev_assignment is None else (prev_assignment,)
        instruments._records_carried(carried)
        try:
            reply = await self._inner.next_task(em_id, prev_assignment, wait_time_ms)
        except ProtocolError as error:
            instruments._rpc_failed(error)
            instruments._records_acknowledged(carried)  # the call completed: the ack landed
            raise
        except RpcError as error:
            instruments._rpc_failed(error)
            raise
        instruments._records_acknowledged(carried)
        if reply is not None:
            instruments._assignment_received(reply)
        return reply

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        """Forward; a failure counts for the scheduler loop."""
        try:
            await self._inner.heartbeat(em_id)
        except (RpcError, ProtocolError) as error:
            self._instruments._rpc_failed(error)
            self._instruments.metrics.heartbeat_failure("scheduler")
            raise

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        """Forward; every record it carried is acknowledged when it returns OK."""
        instruments = self._instruments
        instruments._shutting_down(prev_assignments)
        try:
            await self._inner.shutdown(em_id, prev_assignments)
        except (RpcError, ProtocolError) as error:
            instruments._rpc_failed(error)
            raise
        instruments._records_acknowledged(prev_assignments)


class InstrumentedStorage:
    """A :class:`~worker.core.ports.StorageClient` that counts what passes through."""

    def __init__(self, inner: StorageClient, instruments: PortInstruments) -> None:
        self._inner = inner
        self._instruments = instruments

    async def register_task_instance(
        self,
        job_id: JobId,
        task_id: TaskId,
        em_id: ExecutionManagerId,
        session_id: SessionId,
    ) -> ExecutionContext:
        """Forward; resolve the held assignment as consumed, released, or still held."""
        instruments = self._instruments
        key = (job_id, task_id, session_id)
        try:
            context = await self._inner.register_task_instance(job_id, task_id, em_id, session_id)
        except (StaleSessionError, StaleStateError, ProtocolError) as error:
            # Consumed without an instance to run (a malformed context is consumed too).
            instruments._rpc_failed(error)
            instruments._registration_resolved(key, consumed=True)
            raise
        except InvalidInputError as error:  # fatal: no record, the worker stops
            instruments._rpc_failed(error)
            instruments._registration_resolved(key, consumed=False)
            raise
        except RpcError as error:  # retried: the assignment stays held
            instruments._rpc_failed(error)
            raise
        except trio.Cancelled:  # a stop during registration: no record (rule 22)
            instruments._registration_resolved(key, consumed=False)
            raise
        instruments._registration_resolved(key, consumed=True, context=context)
        return context

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
        owed = instruments._report_started(key)
        try:
            await send(report)
        except (RpcError, ProtocolError) as error:
            instruments._rpc_failed(error)
            instruments._report_ended(key, owed, error)
            raise
        except trio.Cancelled as cancelled:
            instruments._report_ended(key, owed, cancelled)
            raise
        instruments._report_ended(key, owed, None)


class InstrumentedLiveness:
    """A :class:`~worker.core.ports.LivenessClient` that counts what passes through."""

    def __init__(self, inner: LivenessClient, instruments: PortInstruments) -> None:
        self._inner = inner
        self._instruments = instruments

    async def register(self, ip_address: str) -> Registration:
        """Forward; a registration makes the worker ready (unless draining began)."""
        try:
            registration = await self._inner.register(ip_address)
        except (RpcError, ProtocolError) as error:
            self._instruments._rpc_failed(error)
            raise
        self._instruments._registered(registration)
        return registration

    async def heartbeat(self, em_id: ExecutionManagerId) -> SessionId:
        """Forward; learn the session, or count a failure of the storage loop."""
        try:
            session = await self._inner.heartbeat(em_id)
        except (RpcError, ProtocolError) as error:
            self._instruments._rpc_failed(error)
            self._instruments.metrics.heartbeat_failure("storage")
            raise
        self._instruments._learned_session(session)
        return session


class InstrumentedExecutor:
    """An :class:`~worker.core.ports.Executor` that counts outcomes and times them."""

    def __init__(self, inner: Executor, instruments: PortInstruments) -> None:
        self._inner = inner
        self._instruments = instruments

    async def execute(self, request: ExecutionRequest) -> Outcome:
        """Forward; count the outcome by kind with its duration."""
        started = self._instruments._execution_started()
        outcome: Outcome | None = None
        try:
            outcome = await self._inner.execute(request)
        finally:
            self._instruments._execution_ended(request, started, outcome)
        return outcome
