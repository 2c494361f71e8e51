"""Hypothesis RuleBasedStateMachine over the sans-I/O core: machine, decisions and ledger.

Rules are the events the trio shell feeds the core (poll answers, registration answers,
heartbeats, outcomes, stop/evict/fail, Shutdown); invariants are H1-H4, H8 and H9 of
scenarios.md section 6. No trio anywhere.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from worker.core.decisions import (
    REGISTERED,
    SessionGate,
    classify_register_error,
    session_gate,
)
from worker.core.ledger import AckLedger
from worker.core.machine import (
    INITIAL_STATE,
    TRANSITIONS,
    IllegalTransition,
    State,
    Transition,
    Trigger,
    WorkerMachine,
)
from worker.core.session import SessionObservation, SessionTracker
from worker.errors import (
    MalformedContextError,
    ProtocolError,
    Rpc,
    RpcError,
    StatusCode,
    error_for,
)
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
MALFORMED = "malformed"  # OK without a complete execution context
_REGISTER_CODES: list[StatusCode | str | None] = [
    None,  # OK
    MALFORMED,
    StatusCode.NOT_FOUND,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.INVALID_ARGUMENT,
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.INTERNAL,
    StatusCode.UNKNOWN,
]

# The oracle, written from the spec and NOT from the core: protocol.md 6.6 A1/A2 (which answers
# consume the assignment), 5.2 (which are fatal, which retry, which refresh) and 6.4 (the states
# each state may leave to).
_CONSUMING = {None, MALFORMED, StatusCode.NOT_FOUND, StatusCode.FAILED_PRECONDITION}
_FATAL = {MALFORMED, StatusCode.INVALID_ARGUMENT}
_RETRIED = {
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.INTERNAL,
    StatusCode.UNKNOWN,
}
_LEAVES_TO = {
    State.IDLE: {State.AWAITING, State.DRAINING},
    State.AWAITING: {State.IDLE, State.REGISTERING, State.DRAINING},
    State.REGISTERING: {State.EXECUTING, State.IDLE, State.DRAINING},
    State.EXECUTING: {State.IDLE, State.DRAINING},
    State.DRAINING: {State.STOPPED},
    State.STOPPED: set(),
}


def _register_error(code: StatusCode | str) -> RpcError | ProtocolError:
    if code == MALFORMED:
        return MalformedContextError(Rpc.REGISTER_TASK_INSTANCE, "execution_context is unset")
    assert isinstance(code, StatusCode)
    return error_for(Rpc.REGISTER_TASK_INSTANCE, code)


class CoreMachine(RuleBasedStateMachine):
    """Drives the core the way the runtime's main loop does, checking the ack invariants."""

    @initialize(seed_session=st.integers(min_value=1, max_value=5))
    def boot(self, seed_session: int) -> None:
        self.transitions: list[tuple[State, State, Trigger]] = []
        self.machine = WorkerMachine(hooks=(lambda s, d, t: self.transitions.append((s, d, t)),))
        self.ledger = AckLedger()
        self.tracker = SessionTracker(SessionId(seed_session))
        self.highest_session = seed_session  # the oracle of the tracker (never decreases)
        self.refreshes = 0
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
        """The spec says ``assignment`` is consumed now (the oracle's view, not the core's)."""
        self.consumed.append(assignment.record)
        self.unconsumed.discard(assignment.record)

    # --- main-loop events ------------------------------------------------------------------

    @precondition(lambda self: self.machine.state is State.IDLE)
    @rule()
    def poll(self) -> None:
        self.machine.fire(Trigger.POLL)
        self.carried = self.ledger.to_carry()

    # One rule for every answer, assignments first and most often: a separate assignment rule
    # competed with every other rule and left registration hardly exercised.
    @precondition(lambda self: self.machine.state is State.AWAITING)
    @rule(
        outcome=st.sampled_from(["assignment", "assignment", "no_task", "malformed", "error"]),
        delta=st.sampled_from([0, 1, -1]),
    )
    def poll_answer(self, outcome: str, delta: int) -> None:
        if outcome == "assignment":
            self._poll_assignment(delta)
            return
        ok = outcome != "error"
        self.poll_requests.append((self.carried, ok))
        if ok:
            self.ledger.carrier_completed(self.carried)
        self.machine.fire(Trigger.NO_TASK if outcome == "no_task" else Trigger.POLL_FAILED)

    def _poll_assignment(self, delta: int) -> None:
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
        gate = session_gate(session, self.tracker.current)
        assert (gate is SessionGate.STALE) == (session < self.highest_session)
        assert (gate is SessionGate.NEWER) == (session > self.highest_session)
        if gate is SessionGate.STALE:
            self.ledger.record(assignment.record)
            self._consume(assignment)
            self.machine.fire(Trigger.STALE_ASSIGNMENT, assignment=assignment)
            return
        self.holding = assignment
        self.machine.fire(Trigger.ASSIGNMENT, assignment=assignment)

    @precondition(lambda self: self.machine.state is State.REGISTERING)
    @rule(code=st.sampled_from(_REGISTER_CODES))
    def register_answer(self, code: StatusCode | str | None) -> None:
        assert self.holding is not None
        verdict = REGISTERED if code is None else classify_register_error(_register_error(code))
        # The core's verdict must agree with the spec's table, field by field.
        assert verdict.record == (code in _CONSUMING)
        assert verdict.fatal == (code in _FATAL)
        assert verdict.execute == (code is None)
        assert verdict.retry == (code in _RETRIED)
        assert verdict.refresh == (code is StatusCode.NOT_FOUND)
        # The shell's calling pattern: the ledger is fed from the verdict, the oracle from the spec.
        if verdict.record:
            self.ledger.record(self.holding.record)
        if code in _CONSUMING:
            self._consume(self.holding)
        if verdict.refresh:
            self.refreshes += 1
        if verdict.fatal:
            self.machine.fire(Trigger.FAIL, assignment=self.holding)
        elif verdict.execute:
            self.machine.fire(Trigger.REGISTERED, assignment=self.holding)
        elif not verdict.retry:
            self.machine.fire(Trigger.REGISTRATION_DROPPED, assignment=self.holding)
            self.holding = None
        elif self.tracker.is_stale(self.holding.session_id):  # the re-check between retries
            assert self.holding.session_id < self.highest_session
            self.ledger.record(self.holding.record)
            self._consume(self.holding)
            self.machine.fire(Trigger.REGISTRATION_DROPPED, assignment=self.holding)
            self.holding = None

    @precondition(lambda self: self.machine.state is State.EXECUTING)
    @rule()
    def finished(self) -> None:
        self.machine.fire(Trigger.FINISHED, assignment=self.holding)
        self.holding = None

    @precondition(lambda self: self.machine.state is not State.STOPPED)
    # Mostly the same or a higher session: a lower one evicts, and evicting every few steps would
    # leave the rest of the loop (registration, acks) hardly exercised.
    @rule(delta=st.sampled_from([0, 0, 0, 0, 1, 1, 2, -1]))
    def heartbeat(self, delta: int) -> None:
        session = max(0, self.tracker.current + delta)
        observation = self.tracker.observe(SessionId(session))
        assert (observation is SessionObservation.REGRESSED) == (session < self.highest_session)
        if observation is SessionObservation.REGRESSED:
            assert self.tracker.current == self.highest_session  # never lowered
            if self._running():
                self.machine.fire(Trigger.EVICT)
            return
        self.highest_session = max(self.highest_session, session)

    @precondition(
        lambda self: (
            self.machine.state not in (State.DRAINING, State.STOPPED) and len(self.transitions) >= 6
        )  # let the loop run a little first
    )
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

    @precondition(lambda self: self.machine.state is State.STOPPED)
    @rule()
    def stopped_is_terminal(self) -> None:
        """Once Stopped, every trigger is refused (and keeps Hypothesis a rule to run)."""
        for trigger in Trigger:
            with pytest.raises(IllegalTransition):
                self.machine.fire(trigger)

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
    def undeclared_moves_are_refused(self) -> None:
        """Every trigger the table does not declare from here raises and changes nothing."""
        before, moves = self.machine.state, len(self.transitions)
        for trigger in Trigger:
            if not self.machine.can(trigger):
                with pytest.raises(IllegalTransition):
                    self.machine.fire(trigger)
        assert self.machine.state is before
        assert len(self.transitions) == moves  # the hook saw no move

    @invariant()
    def ledger_matches_the_oracle(self) -> None:
        assert list(self.ledger.consumption_order) == self.consumed
        assert self.tracker.current == self.highest_session

    @invariant()
    def h8_declared_transitions(self) -> None:
        for source, dest, trigger in self.transitions:
            assert (source, dest, trigger) in _DECLARED
            assert Transition(trigger, source, dest) in TRANSITIONS
            assert dest in _LEAVES_TO[source], f"{source} may not leave to {dest} (6.4)"
        for first, second in zip(self.transitions, self.transitions[1:], strict=False):
            assert first[1] is second[0]  # moves chain: each starts where the last ended
        if self.transitions:
            assert self.transitions[0][0] is INITIAL_STATE
            assert self.transitions[-1][1] is self.machine.state

    @invariant()
    def h9_draining_is_final(self) -> None:
        seen = False
        for _, dest, _ in self.transitions:
            if seen:
                assert dest not in (State.AWAITING, State.REGISTERING, State.IDLE, State.EXECUTING)
            if dest is State.DRAINING:
                seen = True


TestCoreMachine = CoreMachine.TestCase
# Longer runs than the default 50 steps, so most of them get past a few registrations.
TestCoreMachine.settings = settings(stateful_step_count=100)


def test_table_matches_the_states_of_section_6_4() -> None:
    """The declared table moves exactly along protocol.md 6.4's "Leaves to" column."""
    declared = {(t.source, t.dest) for t in TRANSITIONS}
    allowed = {(source, dest) for source, dests in _LEAVES_TO.items() for dest in dests}
    assert declared == allowed
    assert len({(t.source, t.trigger) for t in TRANSITIONS}) == len(TRANSITIONS)  # deterministic
