"""The worker runtime: the root nursery, the main loop, drain and shutdown (protocol.md 6).

Nursery tree (one run)::

    run()
      the executor pool (opened BEFORE registering, outside every scope of ours; closed last)
      boot scope: RegisterExecutionManager (a stop cancels it -> exit 0, no Shutdown)
      loops nursery
        storage liveness loop   (stops at once on eviction)
        scheduler heartbeat loop
        drain scope             (deadline = drain deadline once draining; force cancels it)
          report nursery        (one task per outcome report)
            main loop           (Idle/Awaiting/Registering/Executing; interruptible scopes)
      -> loops cancelled and joined, then ONE Shutdown with every pending record

Every move goes through the sans-I/O :class:`~worker.core.machine.WorkerMachine`; every decision
comes from :mod:`worker.core.decisions`; acknowledgements live in the
:class:`~worker.core.ledger.AckLedger`. This module only performs I/O and owns time.
"""

from __future__ import annotations

import logging
import math
import random as random_module
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from worker.core.backoff import Backoff
from worker.core.decisions import (
    REGISTERED,
    RegisterVerdict,
    SessionGate,
    StopCause,
    classify_register_error,
    exit_code_for,
    is_reportable,
    possible_orphan,
    report_for,
    session_gate,
)
from worker.core.ledger import AckLedger
from worker.core.machine import State, Trigger, WorkerMachine
from worker.core.ports import (
    Executor,
    ExecutorFactory,
    LivenessClient,
    SchedulerClient,
    StorageClient,
)
from worker.core.session import SessionTracker
from worker.core.story import AssignmentKey, StoryEntry, StoryLog, key_text
from worker.errors import (
    ExecutorPoolError,
    PoolInitError,
    ProtocolError,
    RpcError,
    TransportError,
)
from worker.exit_codes import ExitCode
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    ExecutionRequest,
    Outcome,
    Registration,
    SchedulerAssignment,
)
from worker.runtime.heartbeat import run_scheduler_heartbeats
from worker.runtime.liveness import LivenessLoop
from worker.runtime.reporting import Reporter
from worker.runtime.settings import RuntimeSettings

__all__ = ["OUTER_CANCEL_SHUTDOWN_BUDGET_SEC", "WorkerRuntime"]

logger = logging.getLogger("worker.runtime")

#: After an outer cancellation, a shielded Shutdown may take at most this long (R13).
OUTER_CANCEL_SHUTDOWN_BUDGET_SEC = 1.0

_RUNNING_STATES = frozenset({State.IDLE, State.AWAITING, State.REGISTERING, State.EXECUTING})
_TRIGGER_FOR_CAUSE = {
    StopCause.GRACEFUL: Trigger.STOP,
    StopCause.FORCED: Trigger.STOP,
    StopCause.EVICTED: Trigger.EVICT,
    StopCause.FATAL: Trigger.FAIL,
}


class WorkerRuntime:
    """Runs one worker: boot, serve until stopped, drain, say goodbye, return the exit code."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        scheduler: SchedulerClient,
        storage: StorageClient,
        liveness: LivenessClient,
        open_executor: ExecutorFactory,
        random: random_module.Random | None = None,
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._storage = storage
        self._liveness = liveness
        self._open_executor = open_executor
        self._rng = random if random is not None else random_module.Random()
        self._backoff_policy = settings.backoff
        self._story = StoryLog()
        self._machine = WorkerMachine(story=self._story, clock=self._now)
        self._ledger = AckLedger()
        self._causes: set[StopCause] = set()
        self._stop_requested = False
        self._draining = False
        self._forced = False
        self._evicted = False
        self._shutting_down = False
        self._drain_deadline = math.inf
        self._boot_scope: trio.CancelScope | None = None
        self._interruptible: trio.CancelScope | None = None
        self._execution_scope: trio.CancelScope | None = None
        self._drain_scope: trio.CancelScope | None = None
        self._reporters: trio.Nursery | None = None
        self._current: SchedulerAssignment | None = None
        self._em_id: ExecutionManagerId | None = None
        self._tracker: SessionTracker | None = None
        self._liveness_loop: LivenessLoop | None = None

    # --- introspection -----------------------------------------------------------------------

    @property
    def machine(self) -> WorkerMachine:
        """The state machine every move goes through (tests attach hooks to it)."""
        return self._machine

    @property
    def ledger(self) -> AckLedger:
        """The acknowledgement ledger."""
        return self._ledger

    @property
    def causes(self) -> frozenset[StopCause]:
        """The stop causes that occurred so far."""
        return frozenset(self._causes)

    def story(self, key: AssignmentKey) -> tuple[StoryEntry, ...]:
        """Why is assignment ``key`` where it is? Its bounded story, oldest first."""
        return self._story.story(key)

    def explain(self, key: AssignmentKey) -> str:
        """The story of assignment ``key`` as text, one entry per line."""
        return self._story.explain(key)

    # --- stop entry points (synchronous; call them from the trio thread) ----------------------

    def request_stop(self) -> None:
        """First call: graceful drain. Second call: forced stop."""
        if self._stop_requested:
            self.force_stop()
            return
        self._stop_requested = True
        logger.info("stop requested: draining", extra={"fields": {"state": self._state()}})
        self._begin_drain(StopCause.GRACEFUL)

    def force_stop(self) -> None:
        """Forced stop at once: kill the running task, abandon reports, still send Shutdown."""
        if self._forced or self._shutting_down:
            return  # further signals are ignored
        self._stop_requested = True
        self._forced = True
        logger.warning("forced stop", extra={"fields": {"state": self._state()}})
        self._begin_drain(StopCause.FORCED)
        self._kill_running()
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    # --- run -------------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        """Open the pool, register, serve until stopped, drain, send Shutdown; the exit code.

        Raises ``PoolInitError`` when the pool cannot start (no RPC was sent).
        """
        try:
            # The pool is entered OUTSIDE any cancel scope of ours: its context holds a nursery,
            # and a scope must never be left while a nursery opened inside it is still open.
            async with self._open_executor() as executor:
                registration: Registration | None = None
                if not self._stop_requested:
                    with trio.CancelScope() as boot:
                        self._boot_scope = boot
                        try:
                            registration = await self._liveness.register(self._settings.ip_address)
                        except (RpcError, ProtocolError) as error:
                            logger.error(
                                "RegisterExecutionManager failed",
                                extra={"fields": {"error": str(error)}},
                            )
                            self._causes.add(StopCause.FATAL)
                    self._boot_scope = None
                if registration is None:
                    self._finish_without_shutdown("boot aborted")
                    return exit_code_for(self._causes)
                logger.info(
                    "registered",
                    extra={
                        "fields": {
                            "em_id": registration.execution_manager_id,
                            "session": registration.session_id,
                        }
                    },
                )
                return await self._serve(executor, registration)
        except PoolInitError as error:
            logger.error("executor pool failed to start", extra={"fields": {"error": str(error)}})
            raise

    async def _serve(self, executor: Executor, registration: Registration) -> ExitCode:
        em_id = registration.execution_manager_id
        self._em_id = em_id
        tracker = SessionTracker(registration.session_id)
        self._tracker = tracker
        reporter = Reporter(self._storage, tracker, self._backoff_policy, self._rng, self._note)
        liveness_loop = LivenessLoop(
            self._liveness,
            em_id,
            tracker,
            self._settings.storage_heartbeat_interval_sec,
            self._evict,
        )
        self._liveness_loop = liveness_loop
        shutdown_done = False
        try:
            async with trio.open_nursery() as loops:
                # Both loops send their first heartbeat before the first poll.
                await loops.start(liveness_loop.run)
                await loops.start(
                    run_scheduler_heartbeats,
                    self._scheduler,
                    em_id,
                    self._settings.scheduler_heartbeat_interval_sec,
                )
                drain_scope = trio.CancelScope(deadline=self._drain_deadline)
                self._drain_scope = drain_scope
                if self._forced:
                    drain_scope.cancel()
                with drain_scope:
                    async with trio.open_nursery() as reporters:
                        self._reporters = reporters
                        await self._main_loop(executor, reporter)
                        # Draining: leaving this block waits for every report (or the deadline).
                self._reporters = None
                if drain_scope.cancelled_caught and not self._forced:
                    logger.error("drain deadline passed: forced stop")
                    self._forced = True
                    self._causes.add(StopCause.FORCED)
                loops.cancel_scope.cancel()  # P4: heartbeats ran until now, none after Shutdown
            self._shutting_down = True
            await self._send_shutdown(em_id, self._settings.shutdown_rpc_budget_sec)
            shutdown_done = True
        finally:
            if not shutdown_done and not self._shutting_down:
                # Outer cancellation (or a bug): a shielded, bounded goodbye with pending acks.
                self._shutting_down = True
                with trio.CancelScope(shield=True):
                    await self._send_shutdown(em_id, OUTER_CANCEL_SHUTDOWN_BUDGET_SEC)
        code = exit_code_for(self._causes)
        logger.info("stopped", extra={"fields": {"exit_code": int(code)}})
        return code

    # --- main loop -------------------------------------------------------------------------------

    async def _main_loop(self, executor: Executor, reporter: Reporter) -> None:
        assert self._em_id is not None
        poll_backoff = Backoff(self._backoff_policy, self._rng)
        backoff_due = False
        wait_ms = self._settings.scheduler_poll_wait_ms
        while not self._draining:
            if backoff_due:
                delay = poll_backoff.next_delay()
                with self._interruptible_scope():
                    await trio.sleep(delay)
                if self._draining:
                    break
            backoff_due = False
            self._machine.fire(Trigger.POLL)
            carried = self._ledger.to_carry()
            reply: SchedulerAssignment | None = None
            failure: Exception | None = None
            with self._interruptible_scope():
                try:
                    reply = await self._scheduler.next_task(self._em_id, carried, wait_ms)
                except ProtocolError as error:
                    self._ledger.carrier_completed(carried)  # the call completed: ack delivered
                    failure = error
                except RpcError as error:
                    failure = error  # the record stays at the head (P1)
                else:
                    self._ledger.carrier_completed(carried)
            if self._draining:
                if reply is not None:
                    logger.info(
                        "assignment arrived while draining: neither registered nor recorded",
                        extra={"fields": {"assignment": key_text(reply.key)}},
                    )
                break
            if failure is not None:
                logger.warning("NextTask failed", extra={"fields": {"error": str(failure)}})
                self._machine.fire(Trigger.POLL_FAILED)
                backoff_due = True
                continue
            if reply is None:
                self._machine.fire(Trigger.NO_TASK)
                if wait_ms == 0:
                    # A zero long-poll budget would hot-loop: consecutive idle replies back off.
                    backoff_due = True
                else:
                    poll_backoff.reset()
                continue
            poll_backoff.reset()
            await self._handle_assignment(executor, reporter, reply)

    async def _handle_assignment(
        self, executor: Executor, reporter: Reporter, assignment: SchedulerAssignment
    ) -> None:
        assert self._tracker is not None
        assert self._liveness_loop is not None
        key = assignment.key
        session = assignment.session_id
        self._note(key, "received", f"session {session}, tracker {self._tracker.current}")
        gate = session_gate(session, self._tracker.current)
        if gate is SessionGate.STALE:
            self._ledger.record(assignment.record)
            logger.info(
                "stale assignment dropped without a storage call",
                extra={"fields": {"assignment": key_text(key), "session": session}},
            )
            self._machine.fire(Trigger.STALE_ASSIGNMENT, assignment=assignment, session=session)
            return
        if gate is SessionGate.NEWER:
            self._liveness_loop.request_refresh()
        self._current = assignment
        try:
            self._machine.fire(Trigger.ASSIGNMENT, assignment=assignment, session=session)
            context = await self._register(assignment)
            if context is not None:
                await self._execute(executor, reporter, assignment, context)
        finally:
            self._current = None

    async def _register(self, assignment: SchedulerAssignment) -> ExecutionContext | None:
        """M3: register until resolved; the record is appended only after storage answered."""
        assert self._em_id is not None
        assert self._tracker is not None
        assert self._liveness_loop is not None
        task = assignment.assignment
        key = assignment.key
        backoff = Backoff(self._backoff_policy, self._rng)
        while True:
            verdict: RegisterVerdict | None = None
            context: ExecutionContext | None = None
            error_text = ""
            with self._interruptible_scope():
                try:
                    context = await self._storage.register_task_instance(
                        task.job_id, task.task_id, self._em_id, task.session_id
                    )
                    verdict = REGISTERED
                except (RpcError, ProtocolError) as error:
                    verdict = classify_register_error(error)
                    error_text = str(error)
            if verdict is None:
                self._note(key, "registration cancelled", "no record (A5)")
                return None
            if self._draining:
                # The stop came while the call was in flight, but its reply was already on its
                # way back: A5 treats it as cancelled, whatever storage answered (no record).
                self._note(key, "reply discarded: stop during registration", "no record (A5)")
                return None
            self._note(key, f"register: {verdict.reason}", error_text)
            if verdict.record:
                self._ledger.record(assignment.record)
            if verdict.refresh:
                self._liveness_loop.request_refresh()
            if verdict.fatal:
                self._fail(f"registration of {key_text(key)}: {verdict.reason} {error_text}")
                return None
            if verdict.execute:
                self._machine.fire(
                    Trigger.REGISTERED, assignment=assignment, session=task.session_id
                )
                return context
            if not verdict.retry:
                if possible_orphan(verdict, backoff.attempt):
                    logger.error(
                        "FAILED_PRECONDITION after failed registration attempts: possible orphan"
                        " task instance",
                        extra={"fields": {"assignment": key_text(key), "job_id": task.job_id}},
                    )
                logger.info(
                    "assignment dropped after registration",
                    extra={"fields": {"assignment": key_text(key), "reason": verdict.reason}},
                )
                self._machine.fire(
                    Trigger.REGISTRATION_DROPPED, assignment=assignment, session=task.session_id
                )
                return None
            logger.warning(
                "registration failed, retrying",
                extra={"fields": {"assignment": key_text(key), "error": error_text}},
            )
            delay = backoff.next_delay()
            with self._interruptible_scope():
                await trio.sleep(delay)
            if self._draining:
                self._note(key, "registration abandoned by the stop", "no record")
                return None
            if self._tracker.is_stale(task.session_id):
                self._ledger.record(assignment.record)
                self._note(key, "dropped as stale between retries", "")
                self._machine.fire(
                    Trigger.REGISTRATION_DROPPED, assignment=assignment, session=task.session_id
                )
                return None

    async def _execute(
        self,
        executor: Executor,
        reporter: Reporter,
        assignment: SchedulerAssignment,
        context: ExecutionContext,
    ) -> None:
        assert self._em_id is not None
        assert self._tracker is not None
        key = assignment.key
        session = assignment.session_id
        if self._forced or self._evicted:
            self._note(key, "not executed", "stopping at once")
            return
        request = ExecutionRequest.for_assignment(assignment.assignment, context)
        outcome: Outcome | None = None
        with trio.CancelScope() as scope:
            self._execution_scope = scope
            try:
                outcome = await executor.execute(request)
            except ExecutorPoolError as error:
                self._fail(f"executor pool failed: {error}")
            finally:
                self._execution_scope = None
        instance = {"assignment": key_text(key), "task_instance_id": context.task_instance_id}
        if outcome is None:
            if scope.cancelled_caught:
                logger.warning("task killed without a report", extra={"fields": instance})
                self._note(key, "killed", "no report")
            return
        self._note(key, "outcome", type(outcome).__name__)
        if self._forced or self._evicted:
            # The outcome was on its way back as a stop that kills at once came: that stop sends
            # no outcome for the running task (6.9 steps 2 and 4), whichever won the race.
            logger.warning("outcome dropped: stopping at once", extra={"fields": instance})
            self._note(key, "outcome dropped", "stopping at once")
        elif not is_reportable(session, self._tracker.current):
            logger.info(
                "outcome dropped: session advanced",
                extra={"fields": {"assignment": key_text(key), "session": session}},
            )
            self._note(key, "outcome dropped", "session advanced (gate 2)")
        else:
            report = report_for(
                outcome, assignment, context, self._em_id, self._settings.max_send_bytes
            )
            assert self._reporters is not None
            self._reporters.start_soon(reporter.deliver, key, report)
        if not self._draining:
            self._machine.fire(Trigger.FINISHED, assignment=assignment, session=session)

    # --- shutdown --------------------------------------------------------------------------------

    async def _send_shutdown(self, em_id: ExecutionManagerId, budget_sec: float) -> None:
        records = self._ledger.shutdown_batch()
        backoff = Backoff(self._backoff_policy, self._rng)
        fields: dict[str, object] = {"em_id": em_id, "records": [str(r) for r in records]}
        with trio.move_on_after(budget_sec):
            while True:
                try:
                    await self._scheduler.shutdown(em_id, records)
                except TransportError as error:
                    logger.warning(
                        "Shutdown failed, retrying",
                        extra={"fields": {**fields, "error": str(error)}},
                    )
                    await trio.sleep(backoff.next_delay())
                    continue
                except (RpcError, ProtocolError) as error:
                    logger.warning(
                        "Shutdown failed", extra={"fields": {**fields, "error": str(error)}}
                    )
                else:
                    logger.info("Shutdown sent", extra={"fields": fields})
                break
        if self._machine.state is State.DRAINING:
            self._machine.fire(Trigger.SHUTDOWN)

    def _finish_without_shutdown(self, reason: str) -> None:
        if self._machine.state in _RUNNING_STATES:
            trigger = Trigger.FAIL if StopCause.FATAL in self._causes else Trigger.STOP
            self._machine.fire(trigger)
        logger.info(f"{reason}: no Shutdown (registration did not complete)")
        self._machine.fire(Trigger.SHUTDOWN)

    # --- stop machinery --------------------------------------------------------------------------

    def _begin_drain(self, cause: StopCause) -> None:
        self._causes.add(cause)
        if not self._draining:
            self._draining = True
            if self._machine.state in _RUNNING_STATES:
                current = self._current
                self._machine.fire(
                    _TRIGGER_FOR_CAUSE[cause],
                    assignment=current,
                    session=None if current is None else current.session_id,
                )
            self._drain_deadline = self._now() + self._settings.drain_timeout_sec
            if self._drain_scope is not None:
                self._drain_scope.deadline = self._drain_deadline
        if self._interruptible is not None:
            self._interruptible.cancel()
        if self._boot_scope is not None:
            self._boot_scope.cancel()

    def _evict(self, reason: str) -> None:
        logger.error("evicted by storage: stopping at once", extra={"fields": {"reason": reason}})
        self._evicted = True
        self._begin_drain(StopCause.EVICTED)
        self._kill_running()

    def _fail(self, reason: str) -> None:
        logger.error("fatal error: draining", extra={"fields": {"reason": reason}})
        self._begin_drain(StopCause.FATAL)

    def _kill_running(self) -> None:
        if self._execution_scope is not None:
            self._execution_scope.cancel()

    @contextmanager
    def _interruptible_scope(self) -> Iterator[trio.CancelScope]:
        """A scope a stop cancels: a poll, a registration attempt, a backoff sleep."""
        with trio.CancelScope() as scope:
            if self._draining:
                scope.cancel()
            self._interruptible = scope
            try:
                yield scope
            finally:
                self._interruptible = None

    # --- helpers ---------------------------------------------------------------------------------

    def _note(self, key: AssignmentKey, event: str, detail: str) -> None:
        self._story.add(key, self._now(), event, detail)

    def _state(self) -> str:
        return self._machine.state.value

    @staticmethod
    def _now() -> float:
        try:
            return trio.current_time()
        except RuntimeError:
            return 0.0
