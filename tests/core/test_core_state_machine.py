"""Hypothesis RuleBasedStateMachine over the sans-I/O core: machine, decisions and ledger.

Rules are the events the trio shell feeds the core (poll answers, registration answers,
heartbeats, outcomes, stop/evict/fail, Shutdown); invariants are H1-H4, H8 and H9 of
scenarios.md section 6. No trio anywhere.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from worker.core.decisions import (
    REGISTERED,
    HeartbeatVerdict,
    SessionGate,
    classify_heartbeat_session,
    classify_register_error,
    session_gate,
)
from worker.core.ledger import AckLedger
from worker.core.machine import (
    INITIAL_STATE,
    TRANSITIONS,
    State,
    Transition,
    Trigger,
    WorkerMachine,
)
from worker.core.session import SessionTracker
from worker.errors import Rpc, StatusCode, error_for
from worker.model import (
    AssignmentId,
    JobId,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
)

_DECLARED = {(t.source, t.dest, t.trigger) for t in TRANSITIONS}
_REGISTER_CODES = [
    None,  # OK
    StatusCode.NOT_FOUND,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.INVALID_ARGUMENT,
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.INTERNAL,
]


class CoreMachine(RuleBasedStateMachine):
    """Drives the core the way the runtime's main loop does, checking the ack invariants."""

    @initialize(seed_session=st.integers(min_value=1, max_value=5))
    def boot(self, seed_session: int) -> None:
        self.transitions: list[tuple[State, State, Trigger]] = []
        self.machine = WorkerMachine(hooks=(lambda s, d, t: self.transitions.append((s, d, t)),))
        self.ledger = AckLedger()
        self.tracker = SessionTracker(SessionId(seed_session))
        self.next_id = 0
        self.carried: TaskAssignmentRecord | None = None
        self.holding: SchedulerAssignment | None = None
        self.consumed: list[TaskAssignmentRecord] = []
        self.unconsumed: set[TaskAssignmentRecord] = set()
        # Requests actually sent: ("poll", carried, ok?) and ("shutdown", records).
        self.poll_requests: list[tuple[TaskAssignmentRecord | None, bool]] = []
        self.shutdown_records: tuple[TaskAssignmentRecord, ...] | None = None
        self.requests_after_draining = 0
        self.draining_seen = False

    # --- helpers ---------------------------------------------------------------------------

    def _running(self) -> bool:
        return self.machine.state not in (State.DRAINING, State.STOPPED)

    def _consume(self, assignment: SchedulerAssignment) -> None:
        self.ledger.record(assignment.record)
        self.consumed.append(assignment.record)
        self.unconsumed.discard(assignment.record)

    # --- main-loop events ------------------------------------------------------------------

    @precondition(lambda self: self.machine.state is State.IDLE)
    @rule()
    def poll(self) -> None:
        self.machine.fire(Trigger.POLL)
        self.carried = self.ledger.to_carry()

    @precondition(lambda self: self.machine.state is State.AWAITING)
    @rule(outcome=st.sampled_from(["no_task", "malformed", "error"]))
    def poll_answer(self, outcome: str) -> None:
        ok = outcome != "error"
        self.poll_requests.append((self.carried, ok))
        if ok:
            self.ledger.carrier_completed(self.carried)
        self.machine.fire(Trigger.NO_TASK if outcome == "no_task" else Trigger.POLL_FAILED)

    @precondition(lambda self: self.machine.state is State.AWAITING)
    @rule(delta=st.sampled_from([-1, 0, 1]))
    def poll_assignment(self, delta: int) -> None:
        self.poll_requests.append((self.carried, True))
        self.ledger.carrier_completed(self.carried)
        session = SessionId(max(0, self.tracker.current + delta))
        assignment = SchedulerAssignment(
            TaskAssignment(
                AssignmentId(self.next_id),
                ResourceGroupId(9),
                JobId(7),
                TaskId.of_index(0),
                session,
            ),
            SchedulerId(3),
        )
        self.next_id += 1
        self.unconsumed.add(assignment.record)
        if session_gate(session, self.tracker.current) is SessionGate.STALE:
            self._consume(assignment)
            self.machine.fire(Trigger.STALE_ASSIGNMENT, assignment=assignment)
            return
        self.holding = assignment
        self.machine.fire(Trigger.ASSIGNMENT, assignment=assignment)

    @precondition(lambda self: self.machine.state is State.REGISTERING)
    @rule(code=st.sampled_from(_REGISTER_CODES))
    def register_answer(self, code: StatusCode | None) -> None:
        assert self.holding is not None
        verdict = (
            REGISTERED
            if code is None
            else classify_register_error(error_for(Rpc.REGISTER_TASK_INSTANCE, code))
        )
        if verdict.record:
            self._consume(self.holding)
        if verdict.fatal:
            self.machine.fire(Trigger.FAIL, assignment=self.holding)
        elif verdict.execute:
            self.machine.fire(Trigger.REGISTERED, assignment=self.holding)
        elif not verdict.retry:
            self.machine.fire(Trigger.REGISTRATION_DROPPED, assignment=self.holding)
            self.holding = None
        elif self.tracker.is_stale(self.holding.session_id):  # the re-check between retries
            self._consume(self.holding)
            self.machine.fire(Trigger.REGISTRATION_DROPPED, assignment=self.holding)
            self.holding = None

    @precondition(lambda self: self.machine.state is State.EXECUTING)
    @rule()
    def finished(self) -> None:
        self.machine.fire(Trigger.FINISHED, assignment=self.holding)
        self.holding = None

    @precondition(lambda self: self.machine.state is not State.STOPPED)
    @rule(session=st.integers(min_value=0, max_value=8))
    def heartbeat(self, session: int) -> None:
        verdict = classify_heartbeat_session(SessionId(session), self.tracker.current)
        if verdict is HeartbeatVerdict.EVICTED:
            if self._running():
                self.machine.fire(Trigger.EVICT)
            return
        self.tracker.observe(SessionId(session))

    @precondition(lambda self: self.machine.state not in (State.DRAINING, State.STOPPED))
    @rule(trigger=st.sampled_from([Trigger.STOP, Trigger.EVICT, Trigger.FAIL]))
    def stop(self, trigger: Trigger) -> None:
        if self.machine.state is State.AWAITING:
            self.poll_requests.append((self.carried, False))  # the in-flight poll is cancelled
        self.machine.fire(trigger)

    @precondition(lambda self: self.machine.state is State.DRAINING)
    @rule()
    def shutdown(self) -> None:
        self.shutdown_records = self.ledger.shutdown_batch()
        self.machine.fire(Trigger.SHUTDOWN)

    @rule()
    def time_passes(self) -> None:
        """Nothing happens (keeps the machine runnable once Stopped)."""
        assert self.machine.state in State

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def h1_h3_only_consumed_records_are_sent(self) -> None:
        sent = [r for r, _ in self.poll_requests if r is not None]
        sent += list(self.shutdown_records or ())
        for record in sent:
            assert record in self.consumed
            assert record not in self.unconsumed

    @invariant()
    def h2_exactly_once(self) -> None:
        for record in self.consumed:
            delivered = sum(1 for r, ok in self.poll_requests if ok and r == record)
            in_shutdown = 1 if record in (self.shutdown_records or ()) else 0
            assert delivered + in_shutdown <= 1
            if self.shutdown_records is not None:
                assert delivered + in_shutdown == 1

    @invariant()
    def h4_fifo_at_most_one(self) -> None:
        order = [r for r, ok in self.poll_requests if ok and r is not None]
        order += list(self.shutdown_records or ())
        assert order == self.consumed[: len(order)]

    @invariant()
    def h8_declared_transitions(self) -> None:
        for move in self.transitions:
            assert move in _DECLARED
            assert Transition(move[2], move[0], move[1]) in TRANSITIONS
        if self.transitions:
            assert self.transitions[0][0] is INITIAL_STATE

    @invariant()
    def h9_draining_is_final(self) -> None:
        seen = False
        for _, dest, _ in self.transitions:
            if seen:
                assert dest not in (State.AWAITING, State.REGISTERING, State.IDLE, State.EXECUTING)
            if dest is State.DRAINING:
                seen = True


TestCoreMachine = CoreMachine.TestCase
