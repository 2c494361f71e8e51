"""The life of one assignment: its states, the declared moves, and the core's tracker of them.

The worker's table (:mod:`worker.core.machine`) describes each slot's main loop; this one follows
a single assignment from the ``NextTask`` reply that carries it to its acknowledgement
(protocol.md sections 6.5 and 6.6). The core moves every assignment it holds through
:class:`AssignmentLifecycles`, which refuses any move :data:`ASSIGNMENT_TRANSITIONS` does not
declare, so the assignment statechart drawn from this table is the states the core really holds.
Where the two tables overlap, each assignment move names the slot move it rides on, and
:func:`overlap_errors` (run by ``tests/test_statecharts.py``) checks the pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import attrs

from worker.core.identity_enum import IdentityEnum
from worker.core.machine import TRANSITIONS, State, Transition, Trigger
from worker.core.story import AssignmentKey

__all__ = [
    "ACK_SOURCES",
    "ASSIGNMENT_FINAL_STATES",
    "ASSIGNMENT_INITIAL_STATE",
    "ASSIGNMENT_TRANSITIONS",
    "HELD_IN",
    "overlap_errors",
    "AssignmentEvent",
    "AssignmentLifecycles",
    "IllegalAssignmentMove",
    "AssignmentMove",
    "AssignmentState",
]


class AssignmentState(IdentityEnum):
    """Where one assignment stands (its record, if any, is in the pending-ack queue)."""

    RECEIVED = "Received"  # a NextTask reply carried it
    REGISTERING = "Registering"  # RegisterTaskInstance in flight or in retry backoff
    REGISTERED = "Registered"  # storage created the instance: consumed, record appended (A1)
    EXECUTING = "Executing"  # the task runs in an executor
    DROPPED_STALE = "DroppedStale"  # consumed without an outcome: stale session or stale state
    OUTCOME_REPORTED = "OutcomeReported"  # the outcome went to the report nursery
    ABANDONED = "Abandoned"  # consumed, no outcome will be sent (killed, malformed context)
    ACKNOWLEDGED = "Acknowledged"  # a NextTask carrying its record returned OK, or Shutdown sent
    NEVER_ACKED = "NeverAcked"  # not consumed (A2): the scheduler reschedules it later


class AssignmentEvent(IdentityEnum):
    """What moves one assignment; several share a main-loop trigger."""

    STALE_SESSION = "stale_session"  # M2: s < tracker
    ACCEPTED = "accepted"  # M2: s >= tracker
    MALFORMED = "malformed"  # protocol error: unset result or invalid task id
    ARRIVED_DRAINING = "arrived_draining"  # the reply came after Draining began
    TRANSIENT_ERROR = "transient_error"  # Transport/Server: back off, resend (P5)
    REGISTERED = "registered"  # OK with a complete context
    STALE = "stale"  # NOT_FOUND, FAILED_PRECONDITION, or s < tracker on a retry
    MALFORMED_CONTEXT = "malformed_context"  # OK without a full context: fatal, but consumed
    INVALID_ARGUMENT = "invalid_argument"  # fatal, not consumed
    CANCELLED = "cancelled"  # a stop cancelled the registration (P8, A5)
    EXECUTE = "execute"  # handed to the executor pool
    OUTCOME = "outcome"  # success, in-task failure, hard timeout or crash; gate 2 passed
    OUTCOME_STALE = "outcome_stale"  # gate 2: tracker > s, the outcome is dropped
    DRAIN = "drain"  # first signal or fatal error: the task keeps running
    KILLED = "killed"  # eviction or forced stop: process group killed, no outcome
    POOL_BROKEN = "pool_broken"  # fatal: no outcome for the task in hand
    ACK = "ack"  # its record went out on an OK NextTask or in Shutdown


@attrs.frozen(slots=True)
class AssignmentMove:
    """One move of an assignment; ``worker`` is the main-loop move it rides on, if any.

    ``worker`` is ``None`` when the main loop does not move: a registration retry, a step inside
    one main-loop state, an acknowledgement, or a move made while the worker is already Draining.
    """

    event: AssignmentEvent
    source: AssignmentState
    dest: AssignmentState
    worker: Transition | None = None


#: The slot state an assignment in this state is held in (a slot holds at most one).
HELD_IN: Final[dict[AssignmentState, State]] = {
    AssignmentState.RECEIVED: State.AWAITING,
    AssignmentState.REGISTERING: State.REGISTERING,
    AssignmentState.REGISTERED: State.EXECUTING,
    AssignmentState.EXECUTING: State.EXECUTING,
}

_A = AssignmentState
_E = AssignmentEvent

#: The assignment table: the second statechart, and the overlap checked against the worker's.
ASSIGNMENT_TRANSITIONS: Final[tuple[AssignmentMove, ...]] = (
    AssignmentMove(
        _E.STALE_SESSION,
        _A.RECEIVED,
        _A.DROPPED_STALE,
        Transition(Trigger.STALE_ASSIGNMENT, State.AWAITING, State.IDLE),
    ),
    AssignmentMove(
        _E.ACCEPTED,
        _A.RECEIVED,
        _A.REGISTERING,
        Transition(Trigger.ASSIGNMENT, State.AWAITING, State.REGISTERING),
    ),
    AssignmentMove(
        _E.MALFORMED,
        _A.RECEIVED,
        _A.NEVER_ACKED,
        Transition(Trigger.POLL_FAILED, State.AWAITING, State.IDLE),
    ),
    AssignmentMove(
        _E.ARRIVED_DRAINING,
        _A.RECEIVED,
        _A.NEVER_ACKED,
        Transition(Trigger.STOP, State.AWAITING, State.DRAINING),
    ),
    AssignmentMove(_E.TRANSIENT_ERROR, _A.REGISTERING, _A.REGISTERING),
    AssignmentMove(
        _E.REGISTERED,
        _A.REGISTERING,
        _A.REGISTERED,
        Transition(Trigger.REGISTERED, State.REGISTERING, State.EXECUTING),
    ),
    AssignmentMove(
        _E.STALE,
        _A.REGISTERING,
        _A.DROPPED_STALE,
        Transition(Trigger.REGISTRATION_DROPPED, State.REGISTERING, State.IDLE),
    ),
    AssignmentMove(
        _E.MALFORMED_CONTEXT,
        _A.REGISTERING,
        _A.ABANDONED,
        Transition(Trigger.FAIL, State.REGISTERING, State.DRAINING),
    ),
    AssignmentMove(
        _E.INVALID_ARGUMENT,
        _A.REGISTERING,
        _A.NEVER_ACKED,
        Transition(Trigger.FAIL, State.REGISTERING, State.DRAINING),
    ),
    AssignmentMove(
        _E.CANCELLED,
        _A.REGISTERING,
        _A.NEVER_ACKED,
        Transition(Trigger.STOP, State.REGISTERING, State.DRAINING),
    ),
    AssignmentMove(
        _E.CANCELLED,
        _A.REGISTERING,
        _A.NEVER_ACKED,
        Transition(Trigger.EVICT, State.REGISTERING, State.DRAINING),
    ),
    # With several slots, a fatal error in one slot stops another slot's registration.
    AssignmentMove(
        _E.CANCELLED,
        _A.REGISTERING,
        _A.NEVER_ACKED,
        Transition(Trigger.FAIL, State.REGISTERING, State.DRAINING),
    ),
    AssignmentMove(_E.EXECUTE, _A.REGISTERED, _A.EXECUTING),
    AssignmentMove(
        _E.OUTCOME,
        _A.EXECUTING,
        _A.OUTCOME_REPORTED,
        Transition(Trigger.FINISHED, State.EXECUTING, State.IDLE),
    ),
    AssignmentMove(
        _E.OUTCOME_STALE,
        _A.EXECUTING,
        _A.DROPPED_STALE,
        Transition(Trigger.FINISHED, State.EXECUTING, State.IDLE),
    ),
    AssignmentMove(
        _E.DRAIN,
        _A.EXECUTING,
        _A.EXECUTING,
        Transition(Trigger.STOP, State.EXECUTING, State.DRAINING),
    ),
    AssignmentMove(
        _E.DRAIN,
        _A.EXECUTING,
        _A.EXECUTING,
        Transition(Trigger.FAIL, State.EXECUTING, State.DRAINING),
    ),
    AssignmentMove(
        _E.KILLED,
        _A.EXECUTING,
        _A.ABANDONED,
        Transition(Trigger.EVICT, State.EXECUTING, State.DRAINING),
    ),
    # A forced stop (second signal, drain deadline) comes while the worker is already Draining.
    AssignmentMove(_E.KILLED, _A.EXECUTING, _A.ABANDONED),
    AssignmentMove(
        _E.POOL_BROKEN,
        _A.EXECUTING,
        _A.ABANDONED,
        Transition(Trigger.FAIL, State.EXECUTING, State.DRAINING),
    ),
    AssignmentMove(_E.ACK, _A.DROPPED_STALE, _A.ACKNOWLEDGED),
    AssignmentMove(_E.ACK, _A.OUTCOME_REPORTED, _A.ACKNOWLEDGED),
    AssignmentMove(_E.ACK, _A.ABANDONED, _A.ACKNOWLEDGED),
)

ASSIGNMENT_INITIAL_STATE: Final = AssignmentState.RECEIVED
ASSIGNMENT_FINAL_STATES: Final = frozenset(
    {AssignmentState.ACKNOWLEDGED, AssignmentState.NEVER_ACKED}
)


def overlap_errors(
    moves: Iterable[AssignmentMove] = ASSIGNMENT_TRANSITIONS,
    worker_table: Iterable[Transition] = TRANSITIONS,
) -> list[str]:
    """Every way ``moves`` disagrees with the worker's table where the two overlap (empty = none).

    * a named main-loop move must be declared, start where the main loop holds the assignment,
      and end where it then holds it (``Idle`` once released; a stop may lead anywhere);
    * a move with no main-loop move must not change the state the loop holds it in;
    * every main-loop move that touches a held assignment must appear in ``moves``.
    """
    moves = tuple(moves)
    declared = set(worker_table)
    errors: list[str] = []
    for move in moves:
        where = f"{move.event.value}: {move.source.value} -> {move.dest.value}"
        if move.worker is None:
            held = (HELD_IN.get(move.source), HELD_IN.get(move.dest))
            if None not in held and held[0] is not held[1]:
                errors.append(f"{where} changes the main-loop state without a worker move")
            continue
        if move.worker not in declared:
            errors.append(f"{where} rides on an undeclared worker move {move.worker}")
        if HELD_IN.get(move.source) is not move.worker.source:
            errors.append(f"{where}: the main loop does not hold it in {move.worker.source.value}")
        if move.worker.dest is State.DRAINING:
            continue
        expected = HELD_IN.get(move.dest, State.IDLE)
        if move.worker.dest is not expected:
            errors.append(f"{where}: the main loop should end in {expected.value}")
    covered = {move.worker for move in moves if move.worker is not None}
    for transition in declared - covered:
        if transition.source in (State.REGISTERING, State.EXECUTING) or transition.trigger in (
            Trigger.ASSIGNMENT,
            Trigger.STALE_ASSIGNMENT,
        ):
            errors.append(f"worker move {transition} touches an assignment but is not drawn")
    return sorted(errors)


#: The states an acknowledgement moves on from; earlier (several slots: another slot's poll
#: carried the record while the task still runs) it is taken as soon as one of them is reached.
ACK_SOURCES: Final = frozenset(
    move.source for move in ASSIGNMENT_TRANSITIONS if move.event is AssignmentEvent.ACK
)

_DECLARED_MOVES: Final = frozenset(
    (move.event, move.source, move.dest) for move in ASSIGNMENT_TRANSITIONS
)

#: Called after every move with ``(key, event, source, dest)``.
AssignmentHook = Callable[[AssignmentKey, AssignmentEvent, AssignmentState, AssignmentState], None]


class IllegalAssignmentMove(RuntimeError):
    """A move :data:`ASSIGNMENT_TRANSITIONS` does not declare: always a bug in the core."""


class AssignmentLifecycles:
    """The state of every assignment the core still follows; final ones are forgotten.

    An assignment is followed from its arrival until it is acknowledged or will never be; the
    ones waiting for their acknowledgement are bounded by the ledger's pending records.
    """

    def __init__(self, hook: AssignmentHook | None = None) -> None:
        self._states: dict[AssignmentKey, AssignmentState] = {}
        self._acked_early: set[AssignmentKey] = set()
        self._hook = hook

    def __len__(self) -> int:
        return len(self._states)

    def state(self, key: AssignmentKey) -> AssignmentState | None:
        """Where ``key`` stands (``None``: not followed, or already final)."""
        return self._states.get(key)

    def arrive(self, key: AssignmentKey) -> None:
        """A ``NextTask`` reply carried assignment ``key``."""
        self._states[key] = ASSIGNMENT_INITIAL_STATE

    def move(self, key: AssignmentKey, event: AssignmentEvent, dest: AssignmentState) -> None:
        """Move ``key`` on ``event`` to ``dest``; an undeclared move raises (a bug)."""
        source = self._states[key]
        if (event, source, dest) not in _DECLARED_MOVES:
            raise IllegalAssignmentMove(f"{event.value}: {source.value} -> {dest.value}")
        if self._hook is not None:
            self._hook(key, event, source, dest)
        if dest in ASSIGNMENT_FINAL_STATES:
            del self._states[key]
            self._acked_early.discard(key)
            return
        self._states[key] = dest
        if dest in ACK_SOURCES and key in self._acked_early:
            self.move(key, AssignmentEvent.ACK, AssignmentState.ACKNOWLEDGED)

    def acknowledge(self, key: AssignmentKey) -> None:
        """The record of ``key`` went out on an OK ``NextTask`` or in ``Shutdown``."""
        state = self._states.get(key)
        if state is None:
            return
        if state in ACK_SOURCES:
            self.move(key, AssignmentEvent.ACK, AssignmentState.ACKNOWLEDGED)
        else:
            self._acked_early.add(key)
