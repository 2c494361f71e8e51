"""Hypothesis RuleBasedStateMachine over the REAL worker core, 1 to 4 slots.

The test plays the trio shell: it keeps what the core asked for (calls in flight per slot,
reports, timers, the heartbeat loops, Shutdown) and each rule delivers one drawn event that the
shell could really deliver next (a call answers, fails, or is cancelled once the core asked; a
signal, an eviction, a deadline). Every action the core returns is checked on the spot against
an oracle written from protocol.md, not from the core:

* acknowledgements (6.6, 6.12): only consumed records ride; a NextTask carries the oldest pending
  record that no NextTask in flight carries; never two in flight at once; never again after a
  carrier returned OK; Shutdown carries exactly the pending records, FIFO;
* no poll once draining began; no report once a forced stop or an eviction occurred;
* Shutdown only after both heartbeat loops ended, after the last slot call and report settled;
* the exit code: the highest of 2 > 1 > 4 > 3 > 0 among the causes that occurred (6.11);
* every slot moves along section 6.4's table, and a slot is busy exactly while it holds an
  assignment (6.12).
No trio anywhere.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

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
from worker.core.machine import INITIAL_STATE, TRANSITIONS, IllegalTransition, State, Trigger
from worker.core.session import SessionObservation
from worker.core.settings import RuntimeSettings
from worker.core.story import AssignmentKey
from worker.core.worker_state import WorkerCore
from worker.errors import (
    MalformedContextError,
    PoolBroken,
    ProtocolError,
    Rpc,
    RpcError,
    StatusCode,
    error_for,
)
from worker.model import (
    AssignmentId,
    ExecutionContext,
    ExecutionManagerId,
    InTaskFailure,
    JobId,
    Registration,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    Success,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
    TdlContext,
    TimeoutPolicy,
)

_DECLARED = {(t.source, t.dest, t.trigger) for t in TRANSITIONS}
MALFORMED = "malformed"  # OK without a complete execution context
OK = "ok"
_REGISTER_ANSWERS: list[StatusCode | str] = [
    OK,
    MALFORMED,
    StatusCode.NOT_FOUND,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.INVALID_ARGUMENT,
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.INTERNAL,
    StatusCode.UNKNOWN,
]

# --- The oracle, written from the spec and NOT from the core ------------------------------------
# protocol.md 6.6 A1/A2 and 5.2: which registration answers consume the assignment, which are
# fatal; 6.11: the exit code of each cause and the precedence 2 > 1 > 4 > 3 > 0; 6.4: the states
# each state may leave to.
_CONSUMING = {OK, MALFORMED, StatusCode.NOT_FOUND, StatusCode.FAILED_PRECONDITION}
_FATAL = {MALFORMED, StatusCode.INVALID_ARGUMENT}
_EXIT_CODE = {"fatal": 1, "evicted": 4, "forced": 3}
_PRECEDENCE = [2, 1, 4, 3, 0]  # the first one present wins
_LEAVES_TO = {
    State.IDLE: {State.AWAITING, State.DRAINING},
    State.AWAITING: {State.IDLE, State.REGISTERING, State.DRAINING},
    State.REGISTERING: {State.EXECUTING, State.IDLE, State.DRAINING},
    State.EXECUTING: {State.IDLE, State.DRAINING},
    State.DRAINING: {State.STOPPED},
    State.STOPPED: set(),
}
_HOLDING_STATES = {State.REGISTERING, State.EXECUTING}
EM = ExecutionManagerId(11)
# Stops end an example, so signals and evictions come only after a drawn number of events: most
# examples get several assignments through N slots before they drain.
_STOP_AFTER = st.sampled_from([40, 20, 60, 90, 10, 0])


def _expected_exit_code(causes: Iterable[str]) -> int:
    codes = {0} | {_EXIT_CODE[cause] for cause in causes if cause in _EXIT_CODE}
    return next(code for code in _PRECEDENCE if code in codes)


def _register_error(answer: StatusCode | str) -> RpcError | ProtocolError:
    if answer == MALFORMED:
        return MalformedContextError(Rpc.REGISTER_TASK_INSTANCE, "execution_context is unset")
    assert isinstance(answer, StatusCode)
    return error_for(Rpc.REGISTER_TASK_INSTANCE, answer)


def _context(n: int) -> ExecutionContext:
    return ExecutionContext(
        TaskInstanceId(n), TdlContext("m", "f"), TimeoutPolicy(1000, 2000), b"\x00\x00\x00\x00"
    )


def _recorder(
    moves: list[tuple[State, State, Trigger]],
) -> Callable[[State, State, Trigger], None]:
    def record(source: State, dest: State, trigger: Trigger) -> None:
        moves.append((source, dest, trigger))

    return record


class CoreDriver(RuleBasedStateMachine):
    """Plays the shell around a real :class:`WorkerCore` and checks every action it returns."""

    @initialize(
        slots=st.integers(min_value=1, max_value=4),
        seed_session=st.integers(min_value=1, max_value=5),
        poll_wait_ms=st.sampled_from([0, 1000]),
        stop_before_boot=st.sampled_from([False] * 7 + [True]),
        stop_after=_STOP_AFTER,
    )
    def boot(
        self,
        slots: int,
        seed_session: int,
        poll_wait_ms: int,
        stop_before_boot: bool,
        stop_after: int,
    ) -> None:
        self.events = 0
        self.stop_after = stop_after
        self.settings = RuntimeSettings(
            storage_heartbeat_interval_sec=1.0,
            scheduler_heartbeat_interval_sec=1.0,
            scheduler_poll_wait_ms=poll_wait_ms,
            drain_timeout_sec=5.0,
            backoff_initial_sec=0.05,
            backoff_max_sec=0.5,
            slots=slots,
        )
        self.core = WorkerCore(self.settings, random=random.Random(seed_session))
        self.seed_session = seed_session
        self.now = 0.0
        self.moves: list[list[tuple[State, State, Trigger]]] = [[] for _ in range(slots)]
        for index in range(slots):
            self.core.machine(index).add_hook(_recorder(self.moves[index]))
        # What the shell has outstanding.
        self.calls: dict[int, SendNextTask | RegisterTask | Execute | Sleep] = {}
        self.cancel_asked: set[int] = set()
        self.registering_worker: RegisterWorker | None = None
        self.registration_cancel_asked = False
        self.starting_heartbeats = False
        self.loops_running: set[str] = set()
        self.loops_stop_asked = False
        self.reports: list[AssignmentKey] = []
        self.drain_deadline: float | None = None
        self.shutdown: SendShutdown | None = None
        self.exit_code: int | None = None
        # The oracle's own books.
        self.next_id = 0
        self.registered = False
        self.draining = False
        self.causes: set[str] = set()
        self.consumed: list[TaskAssignmentRecord] = []
        self.acked: set[TaskAssignmentRecord] = set()
        self.session_high = seed_session  # the highest session storage has answered
        self.shutdowns: list[tuple[TaskAssignmentRecord, ...]] = []
        self.serving = False
        self.draining_by_signal = False
        if stop_before_boot:
            self.deliver(StopRequested())
        self.deliver(Booted())

    # --- delivering one event and checking the actions -----------------------------------------

    def deliver(self, event: Event) -> None:
        self.events += 1
        self._cause_of(event)
        for action in self.core.handle(event, self.now):
            self.check(action)

    def _cause_of(self, event: Event) -> None:
        """The oracle's stop causes (6.9): which events start or sharpen the stop."""
        shutting = bool(self.shutdowns) or self.exit_code is not None
        if isinstance(event, StopRequested):
            if self.draining_by_signal:
                self._cause("forced", shutting)
            self.draining_by_signal = True
            self._cause("graceful", shutting)
        elif isinstance(event, ForceStopRequested):
            self._cause("forced", shutting)
        elif isinstance(event, Evicted):
            self._cause("evicted", shutting)
        elif isinstance(event, DrainDeadlinePassed):
            if self.serving and not self.loops_stop_asked:
                self._cause("forced", shutting)
        elif isinstance(event, WorkerRegistrationFailed | ExecutionFailed):
            self._cause("fatal", shutting)
        elif isinstance(event, TaskRegistrationFailed):
            answer = MALFORMED if isinstance(event.error, ProtocolError) else event.error.code
            if answer in _FATAL and not self.draining:
                self._cause("fatal", shutting)

    def _cause(self, cause: str, shutting: bool) -> None:
        if shutting:
            return  # further signals are ignored once Shutdown is under way
        self.causes.add(cause)
        self.draining = True

    def pending(self) -> list[TaskAssignmentRecord]:
        return [r for r in self.consumed if r not in self.acked]

    def carried_in_flight(self) -> set[TaskAssignmentRecord]:
        return {
            call.carried
            for call in self.calls.values()
            if isinstance(call, SendNextTask) and call.carried is not None
        }

    def check(self, action: Action) -> None:
        assert self.exit_code is None, f"{action} after Exit"
        if isinstance(action, SendNextTask):
            assert not self.draining, "a poll after draining began"
            assert action.slot not in self.calls, "two calls at once in one slot"
            in_flight = self.carried_in_flight()
            free = [r for r in self.pending() if r not in in_flight]
            # A3 / 6.12: the oldest pending record no in-flight NextTask carries, else unset.
            assert action.carried == (free[0] if free else None), (action.carried, free)
            self.calls[action.slot] = action
        elif isinstance(action, RegisterTask | Execute | Sleep):
            assert action.slot not in self.calls, "two calls at once in one slot"
            self.calls[action.slot] = action
        elif isinstance(action, CancelCall | KillTask):
            assert action.slot in self.calls
            self.cancel_asked.add(action.slot)
        elif isinstance(action, StartReport):
            assert not self.causes & {"forced", "evicted"}, "a report after a forced stop/evict"
            self.reports.append(action.key)
        elif isinstance(action, CancelReports):
            assert "forced" in self.causes
        elif isinstance(action, RegisterWorker):
            self.registering_worker = action
        elif isinstance(action, CancelRegistration):
            assert self.registering_worker is not None
            self.registration_cancel_asked = True
        elif isinstance(action, StartHeartbeats):
            self.starting_heartbeats = True
        elif isinstance(action, StopHeartbeats):
            assert self.draining
            assert not self.calls, "heartbeats stopped while a slot call is outstanding"
            assert not self.reports, "heartbeats stopped while a report is being delivered"
            self.loops_stop_asked = True
        elif isinstance(action, ArmDrainDeadline):
            assert self.draining
            self.drain_deadline = action.deadline
        elif isinstance(action, RefreshSession):
            pass
        elif isinstance(action, SendShutdown):
            assert self.registered
            assert not self.loops_running, "Shutdown before both heartbeat loops ended"
            assert not self.calls
            if self.shutdowns:
                assert action.records == self.shutdowns[0], "a retried Shutdown changed records"
            else:
                assert list(action.records) == self.pending(), "A6: every pending record, FIFO"
            assert not set(action.records) & self.acked
            self.shutdowns.append(action.records)
            self.shutdown = action
        else:
            assert isinstance(action, Exit)
            if self.registered:
                assert self.shutdowns, "exit without Shutdown after registration"
            assert int(action.code) == _expected_exit_code(self.causes), (action, self.causes)
            self.exit_code = int(action.code)

    # --- helpers for rules ---------------------------------------------------------------------

    def _slot_with(self, kind: type, index: int) -> int | None:
        slots = sorted(s for s, call in self.calls.items() if isinstance(call, kind))
        return slots[index % len(slots)] if slots else None

    def _assignment(self, session_offset: int) -> SchedulerAssignment:
        self.next_id += 1
        session = max(1, self.session_high + session_offset)
        return SchedulerAssignment(
            TaskAssignment(
                AssignmentId(self.next_id),
                ResourceGroupId(1),
                JobId(7),
                TaskId.of_index(self.next_id),
                SessionId(session),
            ),
            SchedulerId(3),
        )

    # --- boot ----------------------------------------------------------------------------------

    @precondition(lambda self: self.registering_worker is not None)
    @rule(answer=st.sampled_from(["ok"] * 8 + ["error", "cancelled"]))
    def answer_worker_registration(self, answer: str) -> None:
        if answer == "cancelled" and not self.registration_cancel_asked:
            answer = "ok"  # the shell delivers a cancellation only when the core asked
        self.registering_worker = None
        if answer == "ok":
            self.registered = True
            self.deliver(WorkerRegistered(Registration(EM, SessionId(self.seed_session))))
        elif answer == "error":
            self.deliver(
                WorkerRegistrationFailed(
                    error_for(Rpc.REGISTER_EXECUTION_MANAGER, StatusCode.UNAVAILABLE)
                )
            )
        else:
            self.deliver(WorkerRegistrationCancelled())

    @precondition(lambda self: self.starting_heartbeats)
    @rule()
    def heartbeats_started(self) -> None:
        self.starting_heartbeats = False
        self.loops_running = {"storage", "scheduler"}
        self.serving = True
        self.deliver(HeartbeatsStarted())

    # --- slot calls ----------------------------------------------------------------------------

    @precondition(lambda self: any(isinstance(c, SendNextTask) for c in self.calls.values()))
    @rule(
        which=st.integers(0, 3),
        answer=st.sampled_from(["assignment", "no_task", "assignment", "error", "malformed"]),
        session_offset=st.sampled_from([-1, 0, 0, 0, 1]),
    )
    def answer_poll(self, which: int, answer: str, session_offset: int) -> None:
        slot = self._slot_with(SendNextTask, which)
        assert slot is not None
        call = self.calls.pop(slot)
        assert isinstance(call, SendNextTask)
        self.cancel_asked.discard(slot)
        if answer in ("no_task", "assignment", "malformed") and call.carried is not None:
            assert call.carried not in self.acked, "a record rode after its carrier returned OK"
            self.acked.add(call.carried)  # A4: completed carrier
        if answer == "no_task":
            self.deliver(PollAnswered(slot, None))
        elif answer == "assignment":
            assignment = self._assignment(session_offset)
            if not self.draining and assignment.session_id < self.session_high:
                self.consumed.append(assignment.record)  # gate 1: stale, consumed (A1)
            self.deliver(PollAnswered(slot, assignment))
        elif answer == "error":
            self.deliver(PollFailed(slot, error_for(Rpc.NEXT_TASK, StatusCode.UNAVAILABLE)))
        else:
            self.deliver(PollFailed(slot, ProtocolError(Rpc.NEXT_TASK, "result is unset")))

    @precondition(lambda self: any(isinstance(c, RegisterTask) for c in self.calls.values()))
    @rule(which=st.integers(0, 3), answer=st.sampled_from([OK] * 6 + _REGISTER_ANSWERS))
    def answer_registration(self, which: int, answer: StatusCode | str) -> None:
        slot = self._slot_with(RegisterTask, which)
        assert slot is not None
        call = self.calls.pop(slot)
        assert isinstance(call, RegisterTask)
        self.cancel_asked.discard(slot)
        if answer in _CONSUMING and not self.draining:
            self.consumed.append(call.assignment.record)  # A1; after a stop: A5, no record
        if answer == OK:
            self.deliver(TaskRegistered(slot, _context(self.next_id)))
        else:
            self.deliver(TaskRegistrationFailed(slot, _register_error(answer)))

    @precondition(lambda self: any(isinstance(c, Sleep) for c in self.calls.values()))
    @rule(which=st.integers(0, 3))
    def timer_fires(self, which: int) -> None:
        slot = self._slot_with(Sleep, which)
        assert slot is not None
        call = self.calls.pop(slot)
        assert isinstance(call, Sleep)
        self.cancel_asked.discard(slot)
        self.now = max(self.now, call.until)
        held = self.core.holds(slot)
        if held is not None and not self.draining and held.session_id < self.session_high:
            self.consumed.append(held.record)  # stale between registration retries (A1)
        self.deliver(TimerFired(slot))

    @precondition(lambda self: any(isinstance(c, Execute) for c in self.calls.values()))
    @rule(
        which=st.integers(0, 3),
        outcome=st.sampled_from(["success"] * 4 + ["failure"] * 2 + ["broken"]),
    )
    def task_ends(self, which: int, outcome: str) -> None:
        slot = self._slot_with(Execute, which)
        assert slot is not None
        self.calls.pop(slot)
        self.cancel_asked.discard(slot)
        self.now += 0.25
        if outcome == "success":
            self.deliver(OutcomeArrived(slot, Success(b"\x00\x00\x00\x00")))
        elif outcome == "failure":
            self.deliver(OutcomeArrived(slot, InTaskFailure("ValueError", "boom")))
        else:
            self.deliver(ExecutionFailed(slot, PoolBroken("crash loop")))

    @precondition(lambda self: bool(self.cancel_asked))
    @rule(which=st.integers(0, 3))
    def cancelled_call_ends(self, which: int) -> None:
        asked = sorted(self.cancel_asked)
        slot = asked[which % len(asked)]
        self.cancel_asked.discard(slot)
        self.calls.pop(slot)
        self.deliver(CallCancelled(slot))

    @precondition(lambda self: bool(self.reports))
    @rule(which=st.integers(0, 7))
    def report_settles(self, which: int) -> None:
        key = self.reports.pop(which % len(self.reports))
        self.deliver(ReportSettled(key))

    # --- the worker's surroundings -------------------------------------------------------------

    @precondition(lambda self: "storage" in self.loops_running and not self.loops_stop_asked)
    @rule(change=st.sampled_from([0, 1, 0, -1]))
    def storage_heartbeat(self, change: int) -> None:
        """The liveness loop's reply goes to the core's tracker; a regression evicts."""
        tracker = self.core.tracker
        assert tracker is not None
        if change < 0 and self.events < self.stop_after:
            change = 0
        session = SessionId(max(1, self.session_high + change))
        observation = tracker.observe(session)
        assert (observation is SessionObservation.REGRESSED) == (session < self.session_high)
        if observation is SessionObservation.REGRESSED:
            self.loops_running.discard("storage")  # the loop ends on eviction
            self.deliver(Evicted("storage session went backwards"))
            self.deliver(HeartbeatLoopEnded("storage"))
        self.session_high = max(self.session_high, session)

    @precondition(lambda self: "storage" in self.loops_running and not self.loops_stop_asked)
    @precondition(lambda self: self.events >= self.stop_after)
    @rule()
    def storage_evicts(self) -> None:
        self.loops_running.discard("storage")
        self.deliver(Evicted("marked dead"))
        self.deliver(HeartbeatLoopEnded("storage"))

    @rule()
    def signal(self) -> None:
        """A signal, after the drawn events: after the exit it must change nothing (no action)."""
        if self.events >= self.stop_after or self.exit_code is not None:
            self.deliver(StopRequested())

    @precondition(lambda self: self.exit_code is None and self.events >= self.stop_after)
    @rule()
    def force(self) -> None:
        self.deliver(ForceStopRequested())

    @precondition(lambda self: self.drain_deadline is not None and self.exit_code is None)
    @rule()
    def drain_deadline_passes(self) -> None:
        assert self.drain_deadline is not None
        self.now = max(self.now, self.drain_deadline)
        self.drain_deadline = None
        self.deliver(DrainDeadlinePassed())

    @precondition(lambda self: self.loops_stop_asked and bool(self.loops_running))
    @rule(which=st.integers(0, 1))
    def heartbeat_loop_ends(self, which: int) -> None:
        loop = sorted(self.loops_running)[which % len(self.loops_running)]
        self.loops_running.discard(loop)
        self.deliver(HeartbeatLoopEnded(loop))

    @precondition(lambda self: self.shutdown is not None)
    @rule(answer=st.sampled_from(["ok", "transient", "final", "timeout"]))
    def shutdown_answers(self, answer: str) -> None:
        shutdown = self.shutdown
        assert shutdown is not None
        self.shutdown = None
        self.now = max(self.now, shutdown.not_before)
        if answer == "ok":
            self.deliver(ShutdownAnswered())
        elif answer == "transient":
            self.deliver(ShutdownFailed(error_for(Rpc.SHUTDOWN, StatusCode.UNAVAILABLE)))
        elif answer == "final":
            self.deliver(ShutdownFailed(error_for(Rpc.SHUTDOWN, StatusCode.INTERNAL)))
        else:
            self.now = max(self.now, shutdown.deadline)
            self.deliver(ShutdownTimedOut())

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def the_tracker_holds_the_highest_session(self) -> None:
        tracker = self.core.tracker
        assert tracker is None or tracker.current == self.session_high

    @invariant()
    def slots_move_along_the_table(self) -> None:
        for index, moves in enumerate(self.moves):
            for source, dest, trigger in moves:
                assert (source, dest, trigger) in _DECLARED
                assert dest in _LEAVES_TO[source], f"{source} may not leave to {dest} (6.4)"
            for first, second in itertools.pairwise(moves):
                assert first[1] is second[0]
            if moves:
                assert moves[0][0] is INITIAL_STATE
                assert moves[-1][1] is self.core.slot_state(index)
            seen_draining = False
            for _, dest, _ in moves:
                if seen_draining:
                    assert dest in (State.DRAINING, State.STOPPED)
                seen_draining = seen_draining or dest is State.DRAINING

    @invariant()
    def every_slot_drains_with_the_worker(self) -> None:
        for index in range(self.core.slots):
            state = self.core.slot_state(index)
            if self.draining:
                assert state in (State.DRAINING, State.STOPPED)
            if self.exit_code is not None:
                assert state is State.STOPPED

    @invariant()
    def busy_means_holding_an_assignment(self) -> None:
        for index in range(self.core.slots):
            if self.core.slot_state(index) in _HOLDING_STATES:
                assert self.core.holds(index) is not None
            if self.core.slot_state(index) in (State.IDLE, State.AWAITING):
                assert self.core.holds(index) is None

    @invariant()
    def undeclared_moves_are_refused(self) -> None:
        for index in range(self.core.slots):
            machine = self.core.machine(index)
            before, moves = machine.state, len(self.moves[index])
            for trigger in Trigger:
                if not machine.can(trigger):
                    with pytest.raises(IllegalTransition):
                        machine.fire(trigger)
            assert machine.state is before
            assert len(self.moves[index]) == moves  # a refused move reaches no hook

    @invariant()
    def only_consumed_records_are_pending(self) -> None:
        assert list(self.core.ledger.pending) == self.pending()


TestCoreDriver = CoreDriver.TestCase
# Longer runs than the default 50 steps, so most of them get past boot and a few assignments.
TestCoreDriver.settings = settings(stateful_step_count=120, max_examples=150)


def test_table_matches_the_states_of_section_6_4() -> None:
    """The declared table moves exactly along protocol.md 6.4's "Leaves to" column."""
    declared = {(t.source, t.dest) for t in TRANSITIONS}
    allowed = {(source, dest) for source, dests in _LEAVES_TO.items() for dest in dests}
    assert declared == allowed
    assert len({(t.source, t.trigger) for t in TRANSITIONS}) == len(TRANSITIONS)  # deterministic


@pytest.mark.parametrize(
    ("causes", "code"),
    [
        (set(), 0),
        ({"graceful"}, 0),
        ({"forced"}, 3),
        ({"evicted"}, 4),
        ({"fatal"}, 1),
        ({"fatal", "evicted"}, 1),
        ({"evicted", "forced"}, 4),
        ({"fatal", "forced"}, 1),
        ({"graceful", "forced", "evicted", "fatal"}, 1),
    ],
)
def test_the_oracle_exit_code_table_is_section_6_11(causes: set[str], code: int) -> None:
    assert _expected_exit_code(causes) == code


def _only(actions: list[Action], kind: type) -> list[Any]:
    return [action for action in actions if isinstance(action, kind)]


def test_two_slots_never_carry_one_record_at_once_and_never_after_an_ok() -> None:
    """6.12: slot B's poll carries R; slot A polls meanwhile: R is not free, so A carries none."""
    settings = RuntimeSettings(
        storage_heartbeat_interval_sec=1.0,
        scheduler_heartbeat_interval_sec=1.0,
        scheduler_poll_wait_ms=1000,
        slots=2,
    )
    core = WorkerCore(settings)
    core.handle(Booted(), 0.0)
    core.handle(WorkerRegistered(Registration(EM, SessionId(1))), 0.0)
    polls = _only(core.handle(HeartbeatsStarted(), 0.0), SendNextTask)
    assert [(p.slot, p.carried) for p in polls] == [(0, None), (1, None)]
    a = SchedulerAssignment(
        TaskAssignment(
            AssignmentId(1), ResourceGroupId(1), JobId(7), TaskId.of_index(1), SessionId(1)
        ),
        SchedulerId(3),
    )
    [register] = _only(core.handle(PollAnswered(0, a), 0.0), RegisterTask)
    [execute] = _only(core.handle(TaskRegistered(0, _context(1)), 0.0), Execute)
    assert execute.slot == 0
    # Slot 1's poll returns idle; its next poll carries R (the only pending record).
    [b_poll] = _only(core.handle(PollAnswered(1, None), 0.0), SendNextTask)
    assert b_poll.carried == a.record
    # Slot 0's task ends while slot 1's poll is in flight: slot 0 must not carry R too.
    [a_poll] = _only(
        core.handle(OutcomeArrived(0, Success(b"\x00\x00\x00\x00")), 0.1), SendNextTask
    )
    assert a_poll.carried is None
    # Slot 1's carrier fails: R is free again, and slot 1's next poll (after the backoff) takes it.
    [sleep] = _only(
        core.handle(PollFailed(1, error_for(Rpc.NEXT_TASK, StatusCode.UNAVAILABLE)), 0.2), Sleep
    )
    [b_again] = _only(core.handle(TimerFired(1), sleep.until), SendNextTask)
    assert b_again.carried == a.record
    # It returns OK: R is acknowledged and rides on nothing afterwards, nor in Shutdown.
    [b_third] = _only(core.handle(PollAnswered(1, None), sleep.until), SendNextTask)
    assert b_third.carried is None
    assert core.ledger.pending == ()
    assert register.slot == 0


def test_a_stop_before_the_boot_arms_no_drain_and_the_boot_exits() -> None:
    """Nothing runs yet, so nothing drains: the worker exits at its boot, with no Shutdown."""
    core = WorkerCore(RuntimeSettings(1.0, 1.0, 1000))
    assert core.handle(StopRequested(), 0.0) == []
    [exit_action] = core.handle(Booted(), 0.0)
    assert isinstance(exit_action, Exit)
    assert int(exit_action.code) == 0  # a graceful stop (6.11)
