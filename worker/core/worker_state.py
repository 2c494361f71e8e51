"""The worker core: every protocol decision of one worker, sans I/O (protocol.md section 6).

:class:`WorkerCore` is a plain synchronous object in the style of Dask's
``WorkerState.handle_stimulus`` and h11's ``Connection``: the trio shell feeds it
:mod:`~worker.core.events` (a call answered, failed or was cancelled; a signal; a timer) with its
clock's ``now``, and performs the :mod:`~worker.core.actions` it returns, in order. The core
never awaits, sleeps or reads a clock; it owns

* one :class:`~worker.core.machine.WorkerMachine` per slot, all built from the one table;
* the acknowledgement ledger, the session tracker and the single poll backoff;
* the stop causes, the drain and the Shutdown sequence, and the exit code.

The shell's contract: every slot action (poll, registration, execution, sleep) ends in exactly
one slot event; a cancellation the core did not ask for means the shell is being torn down.
"""

from __future__ import annotations

import logging
import random as random_module
from collections.abc import Callable
from typing import Any, Final

from worker.core.actions import (
    Action,
    ArmDrainDeadline,
    CancelCall,
    CancelRegistration,
    CancelReports,
    Execute,
    Exit,
    KillTask,
    RefreshSession,
    RegisterTask,
    RegisterWorker,
    SendNextTask,
    SendShutdown,
    Sleep,
    StartHeartbeats,
    StartReport,
    StopHeartbeats,
)
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
from worker.core.events import (
    Booted,
    CallCancelled,
    DrainDeadlinePassed,
    Event,
    Evicted,
    ExecutionFailed,
    ForceStopRequested,
    HeartbeatLoopEnded,
    HeartbeatsStarted,
    OutcomeArrived,
    PollAnswered,
    PollFailed,
    ReportSettled,
    ShellCancelled,
    ShutdownAnswered,
    ShutdownFailed,
    ShutdownTimedOut,
    StopRequested,
    TaskRegistered,
    TaskRegistrationFailed,
    TimerFired,
    WorkerRegistered,
    WorkerRegistrationCancelled,
    WorkerRegistrationFailed,
)
from worker.core.identity_enum import IdentityEnum
from worker.core.ledger import AckLedger
from worker.core.lifecycle import AssignmentEvent, AssignmentLifecycles, AssignmentState
from worker.core.machine import RUNNING_STATES, State, Trigger, WorkerMachine
from worker.core.observer import (
    AssignmentMoved,
    DrainingBegan,
    HeartbeatLoopStopped,
    Notice,
    PhaseChanged,
    RecordsChanged,
    SlotMoved,
    StoryNoted,
)
from worker.core.phases import Phase, PhaseTrigger, phase_after
from worker.core.session import SessionTracker
from worker.core.settings import RuntimeSettings
from worker.core.story import AssignmentKey, StoryEntry, StoryLog, key_text
from worker.errors import ProtocolError, TransportError
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    ExecutionRequest,
    SchedulerAssignment,
    TaskAssignmentRecord,
    outcome_kind,
)

__all__ = ["HEARTBEAT_LOOPS", "OUTER_CANCEL_SHUTDOWN_BUDGET_SEC", "WorkerCore"]

logger = logging.getLogger("worker.core")

#: After an outer cancellation, a shielded Shutdown may take at most this long (R13).
OUTER_CANCEL_SHUTDOWN_BUDGET_SEC = 1.0

#: The two heartbeat loops; Shutdown waits until both ended (P4).
HEARTBEAT_LOOPS: Final = frozenset({"storage", "scheduler"})

_TRIGGER_FOR_CAUSE: Final = {
    StopCause.GRACEFUL: Trigger.STOP,
    StopCause.FORCED: Trigger.STOP,
    StopCause.EVICTED: Trigger.EVICT,
    StopCause.FATAL: Trigger.FAIL,
}
_KILLING_CAUSES: Final = frozenset({StopCause.FORCED, StopCause.EVICTED})
#: Causes only a stop signal (or the forced stop it leads to) adds: a signal after one forces.
_SIGNALLED: Final = frozenset({StopCause.GRACEFUL, StopCause.FORCED})


class _Call(IdentityEnum):
    """The one call a slot may have outstanding."""

    POLL = "poll"
    REGISTER = "register"
    POLL_BACKOFF = "poll backoff"
    REGISTER_BACKOFF = "register backoff"
    EXECUTE = "execute"


_INTERRUPTIBLE: Final = frozenset(
    {_Call.POLL, _Call.REGISTER, _Call.POLL_BACKOFF, _Call.REGISTER_BACKOFF}
)


class _Slot:
    """One slot: its machine, the call it has outstanding and the assignment it holds."""

    __slots__ = (
        "assignment",
        "call",
        "carried",
        "context",
        "index",
        "machine",
        "register_backoff",
        "started_at",
    )

    def __init__(self, index: int, machine: WorkerMachine) -> None:
        self.index = index
        self.machine = machine
        self.call: _Call | None = None
        self.carried: TaskAssignmentRecord | None = None
        self.assignment: SchedulerAssignment | None = None
        self.context: ExecutionContext | None = None
        self.register_backoff: Backoff | None = None
        self.started_at = 0.0


class WorkerCore:
    """One worker's protocol state; :meth:`handle` turns an event into the shell's actions."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        random: random_module.Random | None = None,
        story: StoryLog | None = None,
        observe: bool = False,
    ) -> None:
        self._settings = settings
        self._rng = random if random is not None else random_module.Random()
        self._policy = settings.backoff
        self._story = story if story is not None else StoryLog()
        self._notices: list[Notice] | None = [] if observe else None
        self._now = 0.0
        self._slots = tuple(
            _Slot(index, WorkerMachine(story=self._story, clock=self._clock, slot=index))
            for index in range(settings.slots)
        )
        if observe:
            for slot in self._slots:
                slot.machine.add_hook(self._slot_hook(slot.index))
        self._ledger = AckLedger()
        self._lifecycles = AssignmentLifecycles(self._on_assignment_moved if observe else None)
        self._tracker: SessionTracker | None = None
        self._em_id: ExecutionManagerId | None = None
        self._phase = Phase.BOOT
        self._causes: set[StopCause] = set()
        self._torn_down = False
        self._poll_backoff = Backoff(self._policy, self._rng)
        self._poll_ready_at = 0.0
        self._reports: dict[AssignmentKey, int] = {}
        self._loops_ended: set[str] = set()
        self._shutdown_backoff = Backoff(self._policy, self._rng)
        self._shutdown_records: tuple[TaskAssignmentRecord, ...] = ()
        self._shutdown_deadline = 0.0
        self._out: list[Action] = []
        self._ledger_seen = (0, 0)
        # Records an OK Shutdown delivered (its batch closes the ledger, which keeps them);
        # None until Shutdown returned OK.
        self._shutdown_delivered: int | None = None

    # --- introspection -----------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the worker as a whole stands."""
        return self._phase

    @property
    def slots(self) -> int:
        """How many slots the worker runs."""
        return len(self._slots)

    def machine(self, slot: int = 0) -> WorkerMachine:
        """The state machine of ``slot``."""
        return self._slots[slot].machine

    def slot_state(self, slot: int = 0) -> State:
        """The state of ``slot``."""
        return self._slots[slot].machine.state

    def holds(self, slot: int) -> SchedulerAssignment | None:
        """The assignment ``slot`` holds (``None``: idle); a held slot is busy (6.12)."""
        return self._slots[slot].assignment

    def assignment_state(self, key: AssignmentKey) -> AssignmentState | None:
        """Where assignment ``key`` stands in its lifecycle (``None``: final, or unknown)."""
        return self._lifecycles.state(key)

    @property
    def ledger(self) -> AckLedger:
        """The acknowledgement ledger (read it; only the core changes it)."""
        return self._ledger

    @property
    def tracker(self) -> SessionTracker | None:
        """The session tracker, seeded by the registration (``None`` before it)."""
        return self._tracker

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

    def note(self, key: AssignmentKey, event: str, detail: str, now: float) -> None:
        """Append to ``key``'s story what the shell saw at ``now`` (a report attempt)."""
        self._now = now
        self._note(key, event, detail)

    def take_notices(self) -> list[Notice]:
        """What happened since the last call, for an observer (empty unless ``observe``)."""
        if not self._notices:
            return []
        notices, self._notices = self._notices, []
        return notices

    # --- the one entry point -------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Take ``event`` (which happened at ``now``) into account; the actions to perform."""
        self._now = now
        out: list[Action] = []
        self._out = out
        handler = self._HANDLERS[type(event)]
        handler(self, event)
        if self._notices is not None:
            view = self._ledger_view()
            if view != self._ledger_seen:
                self._ledger_seen = view
                self._notices.append(RecordsChanged(*view))
        return out

    def _ledger_view(self) -> tuple[int, int]:
        """``(pending, acknowledged)`` as observers see them: an OK Shutdown delivers its batch."""
        delivered = self._shutdown_delivered
        if delivered is None:
            return (self._ledger.pending_count, self._ledger.acknowledged)
        return (0, self._ledger.acknowledged + delivered)

    # --- boot ----------------------------------------------------------------------------------

    def _on_booted(self, _event: Booted) -> None:
        if self._causes:
            self._exit_without_shutdown("boot aborted")
            return
        self._enter(PhaseTrigger.BOOTED, Phase.REGISTERING)
        self._out.append(RegisterWorker(self._settings.ip_address))

    def _on_worker_registered(self, event: WorkerRegistered) -> None:
        registration = event.registration
        logger.info(
            "registered",
            extra={
                "fields": {
                    "em_id": registration.execution_manager_id,
                    "session": registration.session_id,
                    "slots": len(self._slots),
                }
            },
        )
        self._em_id = registration.execution_manager_id
        self._tracker = SessionTracker(registration.session_id)
        self._enter(PhaseTrigger.REGISTERED, Phase.STARTING)
        self._out.append(StartHeartbeats(registration.execution_manager_id))

    def _on_worker_registration_failed(self, event: WorkerRegistrationFailed) -> None:
        logger.error(
            "RegisterExecutionManager failed", extra={"fields": {"error": str(event.error)}}
        )
        self._causes.add(StopCause.FATAL)
        self._exit_without_shutdown("boot aborted")

    def _on_worker_registration_cancelled(self, _event: WorkerRegistrationCancelled) -> None:
        self._exit_without_shutdown("boot aborted")

    def _on_heartbeats_started(self, _event: HeartbeatsStarted) -> None:
        if self._phase is not Phase.STARTING:
            return
        if self._causes:
            self._enter(PhaseTrigger.LOOPS_STARTED, Phase.DRAINING)
            self._maybe_stop_loops()
            return
        self._enter(PhaseTrigger.LOOPS_STARTED, Phase.SERVING)
        for slot in self._slots:
            self._next_step(slot)

    # --- polling -------------------------------------------------------------------------------

    def _next_step(self, slot: _Slot) -> None:
        """An idle slot with nothing outstanding: poll now, or sleep the shared poll backoff."""
        if self._causes or self._torn_down or self._phase is not Phase.SERVING:
            return
        if self._now < self._poll_ready_at:
            slot.call = _Call.POLL_BACKOFF
            self._out.append(Sleep(slot.index, self._poll_ready_at))
            return
        assert self._em_id is not None
        slot.machine.fire(Trigger.POLL)
        slot.carried = self._ledger.take_for_carrier()
        slot.call = _Call.POLL
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "polling",
                extra={"fields": {"slot": slot.index, "carried": str(slot.carried)}},
            )
        self._out.append(
            SendNextTask(
                slot.index, self._em_id, slot.carried, self._settings.scheduler_poll_wait_ms
            )
        )

    def _back_off_polls(self) -> None:
        """One poll backoff for the whole worker: no slot polls before the delay passed."""
        delay = self._poll_backoff.next_delay()
        self._poll_ready_at = max(self._poll_ready_at, self._now + delay)

    def _on_poll_answered(self, event: PollAnswered) -> None:
        slot = self._end_call(event.slot, _Call.POLL)
        self._acknowledge(slot.carried)  # the call completed: its record is delivered
        slot.carried = None
        reply = event.assignment
        if self._late():
            return
        if reply is not None:
            self._lifecycles.arrive(reply.key)
        if self._causes:
            if reply is not None:
                self._lifecycles.move(
                    reply.key, AssignmentEvent.ARRIVED_DRAINING, AssignmentState.NEVER_ACKED
                )
                self._note(reply.key, "received", "after the stop: neither registered nor recorded")
                logger.info(
                    "assignment arrived while draining: neither registered nor recorded",
                    extra={"fields": {"assignment": key_text(reply.key)}},
                )
            self._maybe_stop_loops()
            return
        if reply is None:
            slot.machine.fire(Trigger.NO_TASK)
            if self._settings.scheduler_poll_wait_ms == 0:
                # A zero long-poll budget would hot-loop: consecutive idle replies back off.
                self._back_off_polls()
            else:
                self._poll_backoff.reset()
            self._next_step(slot)
            return
        self._poll_backoff.reset()
        self._on_assignment(slot, reply)

    def _on_poll_failed(self, event: PollFailed) -> None:
        slot = self._end_call(event.slot, _Call.POLL)
        if isinstance(event.error, ProtocolError):
            self._acknowledge(slot.carried)  # completed: the ack was delivered
        else:
            self._ledger.carrier_failed(slot.carried)  # the record stays pending (P1)
        slot.carried = None
        if self._late():
            return
        if self._causes:
            self._maybe_stop_loops()
            return
        logger.warning(
            "NextTask failed", extra={"fields": {"slot": slot.index, "error": str(event.error)}}
        )
        slot.machine.fire(Trigger.POLL_FAILED)
        self._back_off_polls()
        self._next_step(slot)

    # --- gate 1 and registration ---------------------------------------------------------------

    def _on_assignment(self, slot: _Slot, assignment: SchedulerAssignment) -> None:
        assert self._tracker is not None
        key = assignment.key
        session = assignment.session_id
        self._note(key, "received", f"session {session}, tracker {self._tracker.current}")
        gate = session_gate(session, self._tracker.current)
        if gate is SessionGate.STALE:
            self._ledger.record(assignment.record)
            self._lifecycles.move(key, AssignmentEvent.STALE_SESSION, AssignmentState.DROPPED_STALE)
            logger.info(
                "stale assignment dropped without a storage call",
                extra={"fields": {"assignment": key_text(key), "session": session}},
            )
            slot.machine.fire(Trigger.STALE_ASSIGNMENT, assignment=assignment, session=session)
            self._next_step(slot)
            return
        if gate is SessionGate.NEWER:
            self._out.append(RefreshSession())
        slot.assignment = assignment
        slot.register_backoff = Backoff(self._policy, self._rng)
        self._lifecycles.move(key, AssignmentEvent.ACCEPTED, AssignmentState.REGISTERING)
        slot.machine.fire(Trigger.ASSIGNMENT, assignment=assignment, session=session)
        self._register(slot)

    def _register(self, slot: _Slot) -> None:
        assert self._em_id is not None
        assert slot.assignment is not None
        slot.call = _Call.REGISTER
        self._out.append(RegisterTask(slot.index, self._em_id, slot.assignment))

    def _on_task_registered(self, event: TaskRegistered) -> None:
        self._registration_verdict(event.slot, REGISTERED, "", event.context)

    def _on_task_registration_failed(self, event: TaskRegistrationFailed) -> None:
        verdict = classify_register_error(event.error)
        self._registration_verdict(event.slot, verdict, str(event.error), None)

    def _registration_verdict(
        self,
        index: int,
        verdict: RegisterVerdict,
        error_text: str,
        context: ExecutionContext | None,
    ) -> None:
        """A registration answer, in this order: record, refresh, fatal, execute/drop/retry."""
        slot = self._end_call(index, _Call.REGISTER)
        assignment = slot.assignment
        assert assignment is not None
        assert slot.register_backoff is not None
        assert self._tracker is not None
        key = assignment.key
        session = assignment.session_id
        if self._causes or self._late():
            # The stop came while the call was in flight, but its reply was already on its
            # way back: it counts as cancelled, whatever storage answered (no record).
            self._abandon_registration(slot, "reply discarded: stop during registration")
            self._maybe_stop_loops()
            return
        self._note(key, f"register: {verdict.reason}", error_text)
        self._lifecycles.move(key, *_registration_move(verdict))
        if verdict.record:
            self._ledger.record(assignment.record)
        if verdict.refresh:
            self._out.append(RefreshSession())
        if verdict.fatal:
            self._release(slot)
            self._fail(f"registration of {key_text(key)}: {verdict.reason} {error_text}")
            self._maybe_stop_loops()
            return
        if verdict.execute:
            assert context is not None
            slot.machine.fire(Trigger.REGISTERED, assignment=assignment, session=session)
            self._execute(slot, assignment, context)
            return
        if not verdict.retry:
            if possible_orphan(verdict, slot.register_backoff.attempt):
                logger.error(
                    "FAILED_PRECONDITION after failed registration attempts: possible orphan"
                    " task instance",
                    extra={
                        "fields": {
                            "assignment": key_text(key),
                            "job_id": assignment.assignment.job_id,
                        }
                    },
                )
            logger.info(
                "assignment dropped after registration",
                extra={"fields": {"assignment": key_text(key), "reason": verdict.reason}},
            )
            self._release(slot)
            slot.machine.fire(Trigger.REGISTRATION_DROPPED, assignment=assignment, session=session)
            self._next_step(slot)
            return
        logger.warning(
            "registration failed, retrying",
            extra={"fields": {"assignment": key_text(key), "error": error_text}},
        )
        slot.call = _Call.REGISTER_BACKOFF
        self._out.append(Sleep(slot.index, self._now + slot.register_backoff.next_delay()))

    def _on_timer_fired(self, event: TimerFired) -> None:
        slot = self._slots[event.slot]
        call = slot.call
        assert call in (_Call.POLL_BACKOFF, _Call.REGISTER_BACKOFF), call
        slot.call = None
        if call is _Call.POLL_BACKOFF:
            if self._causes:
                self._maybe_stop_loops()
            else:
                self._next_step(slot)
            return
        assignment = slot.assignment
        assert assignment is not None
        assert self._tracker is not None
        if self._causes or self._late():
            self._abandon_registration(slot, "registration abandoned by the stop")
            self._maybe_stop_loops()
            return
        if self._tracker.is_stale(assignment.session_id):
            self._ledger.record(assignment.record)
            self._note(assignment.key, "dropped as stale between retries", "")
            self._lifecycles.move(
                assignment.key, AssignmentEvent.STALE, AssignmentState.DROPPED_STALE
            )
            self._release(slot)
            slot.machine.fire(
                Trigger.REGISTRATION_DROPPED, assignment=assignment, session=assignment.session_id
            )
            self._next_step(slot)
            return
        self._register(slot)

    # --- execution and gate 2 ------------------------------------------------------------------

    def _execute(
        self, slot: _Slot, assignment: SchedulerAssignment, context: ExecutionContext
    ) -> None:
        task = assignment.assignment
        slot.context = context
        slot.call = _Call.EXECUTE
        self._lifecycles.move(assignment.key, AssignmentEvent.EXECUTE, AssignmentState.EXECUTING)
        slot.started_at = self._now
        if logger.isEnabledFor(logging.INFO):  # a hot path: build the fields only when logged
            logger.info("task started", extra={"fields": self._task_fields(slot)})
        self._out.append(Execute(slot.index, ExecutionRequest.for_assignment(task, context)))

    def _task_fields(self, slot: _Slot, result: str | None = None) -> dict[str, object]:
        """The task's log fields; with ``result``, the end's (its result and duration) too."""
        assert slot.assignment is not None
        assert slot.context is not None
        task = slot.assignment.assignment
        context = slot.context
        fields: dict[str, object] = {
            "task": f"{context.tdl_context.package}.{context.tdl_context.task_func}",
            "job_id": task.job_id,
            "task_id": str(task.task_id),
            "task_instance_id": context.task_instance_id,
            "slot": slot.index,
        }
        if result is not None:
            fields["result"] = result
            fields["duration_sec"] = round(self._now - slot.started_at, 6)
        return fields

    def _on_outcome(self, event: OutcomeArrived) -> None:
        slot = self._end_call(event.slot, _Call.EXECUTE)
        assignment, context = slot.assignment, slot.context
        assert assignment is not None
        assert context is not None
        assert self._tracker is not None
        assert self._em_id is not None
        key = assignment.key
        session = assignment.session_id
        outcome = event.outcome
        if logger.isEnabledFor(logging.INFO):  # a hot path: build the fields only when logged
            fields = self._task_fields(slot, outcome_kind(outcome))
            logger.info("task finished", extra={"fields": fields})
        self._note(key, "outcome", type(outcome).__name__)
        if self._causes & _KILLING_CAUSES or self._late():
            # The outcome was on its way back as a stop that kills at once came: that stop sends
            # no outcome for the running task (6.9 steps 2 and 4), whichever won the race.
            logger.warning(
                "outcome dropped: stopping at once",
                extra={
                    "fields": {
                        "assignment": key_text(key),
                        "task_instance_id": context.task_instance_id,
                    }
                },
            )
            self._note(key, "outcome dropped", "stopping at once")
            self._lifecycles.move(key, AssignmentEvent.KILLED, AssignmentState.ABANDONED)
        elif not is_reportable(session, self._tracker.current):
            logger.info(
                "outcome dropped: session advanced",
                extra={"fields": {"assignment": key_text(key), "session": session}},
            )
            self._note(key, "outcome dropped", "session advanced")
            self._lifecycles.move(key, AssignmentEvent.OUTCOME_STALE, AssignmentState.DROPPED_STALE)
        else:
            report = report_for(
                outcome, assignment, context, self._em_id, self._settings.max_send_bytes
            )
            self._reports[key] = self._reports.get(key, 0) + 1
            self._lifecycles.move(key, AssignmentEvent.OUTCOME, AssignmentState.OUTCOME_REPORTED)
            self._out.append(StartReport(key, report))
        self._release(slot)
        if self._causes:
            self._maybe_stop_loops()
            return
        slot.machine.fire(Trigger.FINISHED, assignment=assignment, session=session)
        self._next_step(slot)

    def _on_execution_failed(self, event: ExecutionFailed) -> None:
        slot = self._end_call(event.slot, _Call.EXECUTE)
        logger.error(
            "task lost: executor pool failed", extra={"fields": self._task_fields(slot, "lost")}
        )
        self._fail(f"executor pool failed: {event.error}")
        assert slot.assignment is not None
        self._lifecycles.move(
            slot.assignment.key, AssignmentEvent.POOL_BROKEN, AssignmentState.ABANDONED
        )
        self._release(slot)
        self._maybe_stop_loops()

    def _on_call_cancelled(self, event: CallCancelled) -> None:
        slot = self._slots[event.slot]
        call = slot.call
        assert call is not None, f"slot {event.slot} had no call to cancel"
        slot.call = None
        assignment = slot.assignment
        if call is _Call.POLL:
            self._ledger.carrier_failed(slot.carried)  # cancelled: the record stays pending
            slot.carried = None
        elif call is _Call.REGISTER:
            self._abandon_registration(slot, "registration cancelled")
        elif call is _Call.REGISTER_BACKOFF:
            self._abandon_registration(slot, "registration abandoned by the stop")
        elif call is _Call.EXECUTE:
            assert assignment is not None
            logger.warning(
                "task killed without a report", extra={"fields": self._task_fields(slot, "killed")}
            )
            self._note(assignment.key, "killed", "no report")
            self._lifecycles.move(assignment.key, AssignmentEvent.KILLED, AssignmentState.ABANDONED)
            self._release(slot)
        if not self._causes:
            # Nobody asked for this cancellation: the shell is being torn down from outside.
            self._torn_down = True
            return
        self._maybe_stop_loops()

    # --- reports -------------------------------------------------------------------------------

    def _on_report_settled(self, event: ReportSettled) -> None:
        left = self._reports[event.key] - 1
        if left:
            self._reports[event.key] = left
        else:
            del self._reports[event.key]
        self._maybe_stop_loops()

    # --- stop causes ---------------------------------------------------------------------------

    def _on_stop(self, _event: StopRequested) -> None:
        if self._causes & _SIGNALLED:  # a signal came before: this one forces the stop
            self._force()
            return
        logger.info("stop requested: draining", extra={"fields": {"states": self._states()}})
        self._begin_drain(StopCause.GRACEFUL)
        self._maybe_stop_loops()

    def _on_force_stop(self, _event: ForceStopRequested) -> None:
        self._force()

    def _force(self) -> None:
        if StopCause.FORCED in self._causes or self._phase in (Phase.SHUTTING_DOWN, Phase.EXITED):
            return  # further signals are ignored
        logger.warning("forced stop", extra={"fields": {"states": self._states()}})
        self._stop_at_once(StopCause.FORCED)

    def _on_drain_deadline(self, _event: DrainDeadlinePassed) -> None:
        if self._phase is not Phase.DRAINING or StopCause.FORCED in self._causes:
            return
        logger.error("drain deadline passed: forced stop")
        self._stop_at_once(StopCause.FORCED)

    def _on_evicted(self, event: Evicted) -> None:
        if self._phase in (Phase.SHUTTING_DOWN, Phase.EXITED):
            return
        logger.error(
            "evicted by storage: stopping at once", extra={"fields": {"reason": event.reason}}
        )
        self._stop_at_once(StopCause.EVICTED)

    def _stop_at_once(self, cause: StopCause) -> None:
        """Forced stop or eviction: kill every running task; a forced stop abandons reports."""
        self._begin_drain(cause)
        for slot in self._slots:
            if slot.call is _Call.EXECUTE:
                self._out.append(KillTask(slot.index))
        if cause is StopCause.FORCED and self._reports:
            self._out.append(CancelReports())
        self._maybe_stop_loops()

    def _fail(self, reason: str) -> None:
        logger.error("fatal error: draining", extra={"fields": {"reason": reason}})
        self._begin_drain(StopCause.FATAL)

    def _begin_drain(self, cause: StopCause) -> None:
        """Add ``cause``; the first cause moves every slot to Draining and stops polling."""
        first = not self._causes
        self._causes.add(cause)
        if not first:
            return
        for slot in self._slots:
            if slot.machine.state in RUNNING_STATES:
                held = slot.assignment
                slot.machine.fire(
                    _TRIGGER_FOR_CAUSE[cause],
                    assignment=held,
                    session=None if held is None else held.session_id,
                )
            if slot.call in _INTERRUPTIBLE:
                self._out.append(CancelCall(slot.index))
            elif slot.call is _Call.EXECUTE and cause is not StopCause.EVICTED:
                assert slot.assignment is not None  # the task keeps running (a forced stop
                # kills it right after this)
                self._lifecycles.move(
                    slot.assignment.key, AssignmentEvent.DRAIN, AssignmentState.EXECUTING
                )
        if self._notices is not None:
            self._notices.append(DrainingBegan(cause))
        if self._phase is Phase.REGISTERING:
            self._out.append(CancelRegistration())
        elif self._phase is Phase.SERVING:
            self._enter(PhaseTrigger.STOP_CAUSE, Phase.DRAINING)
        if self._phase is not Phase.BOOT:  # before the boot the worker exits at once: no drain
            self._out.append(ArmDrainDeadline(self._now + self._settings.drain_timeout_sec))

    # --- drain end, heartbeat loops and Shutdown -----------------------------------------------

    def _maybe_stop_loops(self) -> None:
        """Drained (no slot call, no report left): stop both heartbeat loops, then Shutdown."""
        if self._phase is not Phase.DRAINING:
            return
        if any(slot.call is not None for slot in self._slots) or self._reports:
            return
        self._enter(PhaseTrigger.DRAINED, Phase.STOPPING_LOOPS)
        self._out.append(StopHeartbeats())
        self._maybe_shut_down()

    def _on_heartbeat_loop_ended(self, event: HeartbeatLoopEnded) -> None:
        self._loops_ended.add(event.loop)
        if self._notices is not None:
            stopping = self._phase is Phase.STOPPING_LOOPS
            self._notices.append(
                HeartbeatLoopStopped(event.loop, stopping, StopCause.EVICTED in self._causes)
            )
        self._maybe_shut_down()

    def _maybe_shut_down(self) -> None:
        if self._phase is not Phase.STOPPING_LOOPS or self._loops_ended != HEARTBEAT_LOOPS:
            return
        self._send_shutdown(PhaseTrigger.LOOPS_ENDED, self._settings.shutdown_rpc_budget_sec)

    def _send_shutdown(self, trigger: PhaseTrigger, budget_sec: float) -> None:
        assert self._em_id is not None
        self._enter(trigger, Phase.SHUTTING_DOWN)
        self._shutdown_records = self._ledger.shutdown_batch()
        for record in self._shutdown_records:
            self._lifecycles.acknowledge((record.from_scheduler_id, record.id))
        self._shutdown_deadline = self._now + budget_sec
        self._out.append(
            SendShutdown(self._em_id, self._shutdown_records, self._now, self._shutdown_deadline)
        )

    def _shutdown_fields(self) -> dict[str, object]:
        return {"em_id": self._em_id, "records": [str(r) for r in self._shutdown_records]}

    def _on_shutdown_answered(self, _event: ShutdownAnswered) -> None:
        logger.info("Shutdown sent", extra={"fields": self._shutdown_fields()})
        self._shutdown_delivered = len(self._ledger.pending)
        self._exit_after_shutdown()

    def _on_shutdown_failed(self, event: ShutdownFailed) -> None:
        fields = {**self._shutdown_fields(), "error": str(event.error)}
        if isinstance(event.error, TransportError):
            logger.warning("Shutdown failed, retrying", extra={"fields": fields})
            assert self._em_id is not None
            self._out.append(
                SendShutdown(
                    self._em_id,
                    self._shutdown_records,
                    self._now + self._shutdown_backoff.next_delay(),
                    self._shutdown_deadline,
                )
            )
            return
        logger.warning("Shutdown failed", extra={"fields": fields})
        self._exit_after_shutdown()

    def _on_shutdown_timed_out(self, _event: ShutdownTimedOut) -> None:
        logger.warning("Shutdown not answered in time", extra={"fields": self._shutdown_fields()})
        self._exit_after_shutdown()

    def _on_shell_cancelled(self, _event: ShellCancelled) -> None:
        self._torn_down = True
        if self._phase in (Phase.STARTING, Phase.SERVING, Phase.DRAINING, Phase.STOPPING_LOOPS):
            # Outer cancellation (or a bug): a shielded, bounded goodbye with pending acks.
            self._send_shutdown(PhaseTrigger.OUTER_CANCEL, OUTER_CANCEL_SHUTDOWN_BUDGET_SEC)

    def _exit_after_shutdown(self) -> None:
        if self._phase is Phase.EXITED:
            return
        for slot in self._slots:
            if slot.machine.state is State.DRAINING:
                slot.machine.fire(Trigger.SHUTDOWN)
        self._exit(PhaseTrigger.SHUTDOWN_DONE)

    def _exit_without_shutdown(self, reason: str) -> None:
        trigger = Trigger.FAIL if StopCause.FATAL in self._causes else Trigger.STOP
        for slot in self._slots:
            if slot.machine.state in RUNNING_STATES:
                slot.machine.fire(trigger)
            slot.machine.fire(Trigger.SHUTDOWN)
        logger.info(f"{reason}: no Shutdown (registration did not complete)")
        if self._phase is Phase.BOOT:
            self._exit(PhaseTrigger.STOPPED_BEFORE_BOOT)
        else:
            self._exit(PhaseTrigger.BOOT_FAILED)

    def _exit(self, trigger: PhaseTrigger) -> None:
        self._enter(trigger, Phase.EXITED)
        code = exit_code_for(self._causes)
        logger.info("stopped", extra={"fields": {"exit_code": int(code)}})
        self._out.append(Exit(code))

    # --- helpers -------------------------------------------------------------------------------

    def _enter(self, trigger: PhaseTrigger, phase: Phase) -> None:
        source = self._phase
        self._phase = phase_after(source, trigger, phase)
        logger.debug(
            "worker %s -> %s on %s",
            source.value,
            phase.value,
            trigger.value,
            extra={"fields": {"from": source.value, "to": phase.value, "trigger": trigger.value}},
        )
        if self._notices is not None:
            self._notices.append(PhaseChanged(source, phase, trigger))

    def _acknowledge(self, carried: TaskAssignmentRecord | None) -> None:
        if carried is not None:
            self._ledger.carrier_completed(carried)
            self._lifecycles.acknowledge((carried.from_scheduler_id, carried.id))

    def _on_assignment_moved(
        self,
        key: AssignmentKey,
        event: AssignmentEvent,
        source: AssignmentState,
        dest: AssignmentState,
    ) -> None:
        if self._notices is not None:
            self._notices.append(AssignmentMoved(key, event, source, dest))

    def _end_call(self, index: int, expected: _Call) -> _Slot:
        slot = self._slots[index]
        assert slot.call is expected, f"slot {index}: {expected.value} ended, had {slot.call}"
        slot.call = None
        return slot

    def _late(self) -> bool:
        """Whether the worker is past serving: slot answers change nothing any more."""
        return self._torn_down or self._phase in (Phase.SHUTTING_DOWN, Phase.EXITED)

    def _abandon_registration(self, slot: _Slot, why: str) -> None:
        """The slot's assignment was never registered and never will be: no record, no run."""
        assert slot.assignment is not None
        key = slot.assignment.key
        self._note(key, why, "no record")
        self._lifecycles.move(key, AssignmentEvent.CANCELLED, AssignmentState.NEVER_ACKED)
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        slot.assignment = None
        slot.context = None
        slot.register_backoff = None

    def _note(self, key: AssignmentKey, event: str, detail: str) -> None:
        self._story.add(key, self._now, event, detail)
        if self._notices is not None:
            self._notices.append(StoryNoted(key, StoryEntry(self._now, event, detail)))

    def _slot_hook(self, index: int) -> Callable[[State, State, Trigger], None]:
        def hook(source: State, dest: State, trigger: Trigger) -> None:
            if self._notices is not None:
                held = self._slots[index].assignment
                key = None if held is None else held.key
                self._notices.append(SlotMoved(index, source, dest, trigger, key))

        return hook

    def _clock(self) -> float:
        return self._now

    def _states(self) -> list[str]:
        return [slot.machine.state.value for slot in self._slots]

    _HANDLERS: Final[dict[type, Callable[[WorkerCore, Any], None]]] = {}  # filled below


def _registration_move(verdict: RegisterVerdict) -> tuple[AssignmentEvent, AssignmentState]:
    """The assignment move a registration verdict makes."""
    if verdict.fatal:
        if verdict.record:  # storage created an instance: consumed, yet no task will run
            return (AssignmentEvent.MALFORMED_CONTEXT, AssignmentState.ABANDONED)
        return (AssignmentEvent.INVALID_ARGUMENT, AssignmentState.NEVER_ACKED)
    if verdict.execute:
        return (AssignmentEvent.REGISTERED, AssignmentState.REGISTERED)
    if verdict.retry:
        return (AssignmentEvent.TRANSIENT_ERROR, AssignmentState.REGISTERING)
    return (AssignmentEvent.STALE, AssignmentState.DROPPED_STALE)


WorkerCore._HANDLERS.update(
    {
        Booted: WorkerCore._on_booted,
        WorkerRegistered: WorkerCore._on_worker_registered,
        WorkerRegistrationFailed: WorkerCore._on_worker_registration_failed,
        WorkerRegistrationCancelled: WorkerCore._on_worker_registration_cancelled,
        HeartbeatsStarted: WorkerCore._on_heartbeats_started,
        HeartbeatLoopEnded: WorkerCore._on_heartbeat_loop_ended,
        PollAnswered: WorkerCore._on_poll_answered,
        PollFailed: WorkerCore._on_poll_failed,
        TaskRegistered: WorkerCore._on_task_registered,
        TaskRegistrationFailed: WorkerCore._on_task_registration_failed,
        OutcomeArrived: WorkerCore._on_outcome,
        ExecutionFailed: WorkerCore._on_execution_failed,
        CallCancelled: WorkerCore._on_call_cancelled,
        TimerFired: WorkerCore._on_timer_fired,
        ReportSettled: WorkerCore._on_report_settled,
        StopRequested: WorkerCore._on_stop,
        ForceStopRequested: WorkerCore._on_force_stop,
        DrainDeadlinePassed: WorkerCore._on_drain_deadline,
        Evicted: WorkerCore._on_evicted,
        ShutdownAnswered: WorkerCore._on_shutdown_answered,
        ShutdownFailed: WorkerCore._on_shutdown_failed,
        ShutdownTimedOut: WorkerCore._on_shutdown_timed_out,
        ShellCancelled: WorkerCore._on_shell_cancelled,
    }
)
