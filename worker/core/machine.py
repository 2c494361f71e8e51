"""The worker's state machine: THE transition table, declared once as data.

Each slot of the worker core (:mod:`worker.core.worker_state`) moves only through its own
:class:`WorkerMachine`, which builds a sync ``transitions.Machine`` from :data:`TRANSITIONS` with
``auto_transitions=False``, so no move can bypass the table: an undeclared move raises
:class:`IllegalTransition` at once (it is a bug). Every slot has its own copy of the machine and
all copies read this one table (protocol.md section 6.12); so do the statecharts in
``statecharts/`` and the property tests.

States and their meaning are protocol.md section 6.4; the names are normative.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import attrs
from transitions import Machine

from worker.core.identity_enum import IdentityEnum
from worker.core.story import AssignmentKey, StoryLog, key_text
from worker.model import SchedulerAssignment, SessionId

__all__ = [
    "INITIAL_STATE",
    "RUNNING_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "IllegalTransition",
    "State",
    "Transition",
    "TransitionHook",
    "Trigger",
    "WorkerMachine",
]

logger = logging.getLogger("worker.machine")


class State(IdentityEnum):
    """Main-loop states (protocol.md section 6.4)."""

    IDLE = "Idle"
    AWAITING = "Awaiting"
    REGISTERING = "Registering"
    EXECUTING = "Executing"
    DRAINING = "Draining"
    STOPPED = "Stopped"


class Trigger(IdentityEnum):
    """The events that move the main loop."""

    POLL = "poll"  # M0: send NextTask
    NO_TASK = "no_task"  # M1: OK + no_task
    POLL_FAILED = "poll_failed"  # M1: error status or malformed reply; back off
    STALE_ASSIGNMENT = "stale_assignment"  # M2: s < tracker, recorded without a storage call
    ASSIGNMENT = "assignment"  # M2: s >= tracker, go register
    REGISTERED = "registered"  # M3: storage created the instance
    REGISTRATION_DROPPED = "registration_dropped"  # M3: NOT_FOUND, FAILED_PRECONDITION, stale
    FINISHED = "finished"  # M5/M6: outcome handed to the reporters (or dropped as stale)
    STOP = "stop"  # first SIGTERM/SIGINT: drain
    EVICT = "evict"  # storage marked us dead, or its session went backwards
    FAIL = "fail"  # fatal error (malformed context, INVALID_ARGUMENT, broken pool)
    SHUTDOWN = "shutdown"  # Shutdown sent (or attempted)


@attrs.frozen(slots=True)
class Transition:
    """One declared move: ``trigger`` takes the machine from ``source`` to ``dest``."""

    trigger: Trigger
    source: State
    dest: State


#: The states a stop, an eviction or a fatal error leave for Draining.
RUNNING_STATES: Final = (State.IDLE, State.AWAITING, State.REGISTERING, State.EXECUTING)

#: THE transition table. Everything else (runtime, statecharts, property tests) reads it.
TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition(Trigger.POLL, State.IDLE, State.AWAITING),
    Transition(Trigger.NO_TASK, State.AWAITING, State.IDLE),
    Transition(Trigger.POLL_FAILED, State.AWAITING, State.IDLE),
    Transition(Trigger.STALE_ASSIGNMENT, State.AWAITING, State.IDLE),
    Transition(Trigger.ASSIGNMENT, State.AWAITING, State.REGISTERING),
    Transition(Trigger.REGISTERED, State.REGISTERING, State.EXECUTING),
    Transition(Trigger.REGISTRATION_DROPPED, State.REGISTERING, State.IDLE),
    Transition(Trigger.FINISHED, State.EXECUTING, State.IDLE),
    *(Transition(Trigger.STOP, source, State.DRAINING) for source in RUNNING_STATES),
    *(Transition(Trigger.EVICT, source, State.DRAINING) for source in RUNNING_STATES),
    *(Transition(Trigger.FAIL, source, State.DRAINING) for source in RUNNING_STATES),
    Transition(Trigger.SHUTDOWN, State.DRAINING, State.STOPPED),
)

INITIAL_STATE: Final = State.IDLE
TERMINAL_STATES: Final = frozenset({State.STOPPED})

# Hot-path lookups, computed once from the enums and the table: the state a ``transitions``
# state name stands for, and the story text of each declared move.
_STATE_NAMED: Final = {state.value: state for state in State}
_MOVE_TEXT: Final = {(t.source, t.dest): f"{t.source.value} -> {t.dest.value}" for t in TRANSITIONS}

#: Called after every move with ``(source, dest, trigger)``.
TransitionHook = Callable[[State, State, Trigger], None]


class IllegalTransition(RuntimeError):
    """A move the table does not declare: always a bug in the caller."""


class _Model:
    """The object ``transitions`` attaches its state attribute and trigger methods to."""

    state: str


class WorkerMachine:
    """The legality checker and recorder for every move of the main loop."""

    def __init__(
        self,
        hooks: tuple[TransitionHook, ...] = (),
        *,
        story: StoryLog | None = None,
        clock: Callable[[], float] | None = None,
        slot: int = 0,
    ) -> None:
        self._slot = slot
        self._story = story
        self._clock = clock
        self._model = _Model()
        self._machine = Machine(
            model=self._model,
            states=[state.value for state in State],
            transitions=[
                {"trigger": t.trigger.value, "source": t.source.value, "dest": t.dest.value}
                for t in TRANSITIONS
            ],
            initial=INITIAL_STATE.value,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )
        # Every declared move, read back once out of the ``transitions`` machine (which built it
        # from the table): ``(source name, trigger) -> (dest name, dest, story text)``. ``fire``
        # looks the move up here and sets the model's state itself; the library's per-call
        # pipeline (conditions, callbacks, its own lookups) costs more than the rest of a slot's
        # step, and the table declares no condition and no callback for it to run.
        self._moves: dict[tuple[str, Trigger], tuple[str, State, str]] = {}
        for trigger in Trigger:
            event = self._machine.events.get(trigger.value)
            for source_name, moves in event.transitions.items() if event else ():
                dest_name = moves[0].dest
                assert dest_name is not None  # the table declares no internal transition
                dest = _STATE_NAMED[dest_name]
                text = _MOVE_TEXT[_STATE_NAMED[source_name], dest]
                self._moves[source_name, trigger] = (dest_name, dest, text)
        self._hooks = list(hooks)

    @property
    def state(self) -> State:
        """The current state."""
        return _STATE_NAMED[self._model.state]

    def add_hook(self, hook: TransitionHook) -> None:
        """Call ``hook`` after every move (the property tests and the story log use this)."""
        self._hooks.append(hook)

    def can(self, trigger: Trigger) -> bool:
        """Whether ``trigger`` is declared from the current state."""
        return any(t.trigger is trigger and t.source is self.state for t in TRANSITIONS)

    def fire(
        self,
        trigger: Trigger,
        *,
        assignment: SchedulerAssignment | None = None,
        session: SessionId | None = None,
    ) -> State:
        """Take the declared move for ``trigger``; raise :class:`IllegalTransition` if none.

        Logs one structured DEBUG line (slot, from, to, trigger, assignment, session) and, when an
        assignment is named and a story log is attached, appends the move to its story.
        """
        model = self._model
        source_name = model.state
        move = self._moves.get((source_name, trigger))
        if move is None:
            raise IllegalTransition(f"no transition {trigger.value!r} from state {source_name!r}")
        dest_name, dest, text = move
        model.state = dest_name
        source = _STATE_NAMED[source_name]
        key: AssignmentKey | None = assignment.key if assignment is not None else None
        if logger.isEnabledFor(logging.DEBUG):  # a hot path: build the fields only when logged
            logger.debug(
                "transition %s -> %s on %s",
                source.value,
                dest.value,
                trigger.value,
                extra={
                    "fields": {
                        "slot": self._slot,
                        "from": source.value,
                        "to": dest.value,
                        "trigger": trigger.value,
                        "assignment": None if key is None else key_text(key),
                        "session": session,
                    }
                },
            )
        if key is not None and self._story is not None:
            now = self._clock() if self._clock is not None else 0.0
            self._story.add(key, now, text, trigger.value)
        for hook in self._hooks:
            hook(source, dest, trigger)
        return dest
