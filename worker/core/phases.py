"""The worker's own story, declared as data: boot, serve, drain, stop the loops, Shutdown, exit.

Slots have their own machines (:mod:`worker.core.machine`); this table is the worker as a whole
(protocol.md sections 6.1 and 6.9). The core moves only along :data:`PHASE_MOVES` and raises
:class:`IllegalPhaseMove` on anything else, so the chart drawn from it is the core's real story.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

__all__ = [
    "FINAL_PHASE",
    "INITIAL_PHASE",
    "PHASE_MOVES",
    "IllegalPhaseMove",
    "Phase",
    "PhaseMove",
    "PhaseTrigger",
    "phase_after",
]


class Phase(enum.Enum):
    """Where the worker as a whole stands."""

    BOOT = "Boot"  # the executor pool is opening
    REGISTERING = "RegisteringWorker"  # RegisterExecutionManager in flight
    STARTING = "StartingLoops"  # registered; waiting for both loops' first heartbeats
    SERVING = "Serving"  # slots poll, register, execute
    DRAINING = "Draining"  # a stop cause occurred: no poll; running tasks and reports finish
    STOPPING_LOOPS = "StoppingLoops"  # drained: both heartbeat loops are cancelled and joined
    SHUTTING_DOWN = "ShuttingDown"  # Shutdown in flight or in retry backoff
    EXITED = "Exited"  # the exit code is known


class PhaseTrigger(enum.Enum):
    """What moves the worker from one phase to the next."""

    BOOTED = "booted"
    STOPPED_BEFORE_BOOT = "stopped_before_boot"
    REGISTERED = "registered"
    BOOT_FAILED = "boot_failed"  # RegisterExecutionManager failed, or a stop cancelled it
    LOOPS_STARTED = "loops_started"
    STOP_CAUSE = "stop_cause"  # signal, eviction, fatal error
    DRAINED = "drained"  # no slot call and no report left (or abandoned)
    LOOPS_ENDED = "loops_ended"
    OUTER_CANCEL = "outer_cancel"  # the shell itself is cancelled: a bounded goodbye
    SHUTDOWN_DONE = "shutdown_done"  # answered, failed for good, or out of budget


@attrs.frozen(slots=True)
class PhaseMove:
    """One declared move of the worker's phase."""

    trigger: PhaseTrigger
    source: Phase
    dest: Phase


_P = Phase
_T = PhaseTrigger

#: THE worker-level table; the ``phases`` statechart is drawn from it.
PHASE_MOVES: Final[tuple[PhaseMove, ...]] = (
    PhaseMove(_T.BOOTED, _P.BOOT, _P.REGISTERING),
    PhaseMove(_T.STOPPED_BEFORE_BOOT, _P.BOOT, _P.EXITED),
    PhaseMove(_T.REGISTERED, _P.REGISTERING, _P.STARTING),
    PhaseMove(_T.BOOT_FAILED, _P.REGISTERING, _P.EXITED),
    PhaseMove(_T.LOOPS_STARTED, _P.STARTING, _P.SERVING),
    PhaseMove(_T.STOP_CAUSE, _P.SERVING, _P.DRAINING),
    # A stop while the loops start: once they did, the worker drains at once.
    PhaseMove(_T.LOOPS_STARTED, _P.STARTING, _P.DRAINING),
    PhaseMove(_T.DRAINED, _P.DRAINING, _P.STOPPING_LOOPS),
    PhaseMove(_T.LOOPS_ENDED, _P.STOPPING_LOOPS, _P.SHUTTING_DOWN),
    *(
        PhaseMove(_T.OUTER_CANCEL, source, _P.SHUTTING_DOWN)
        for source in (_P.STARTING, _P.SERVING, _P.DRAINING, _P.STOPPING_LOOPS)
    ),
    PhaseMove(_T.SHUTDOWN_DONE, _P.SHUTTING_DOWN, _P.EXITED),
)

INITIAL_PHASE: Final = Phase.BOOT
FINAL_PHASE: Final = Phase.EXITED

_MOVES: Final = frozenset((move.trigger, move.source, move.dest) for move in PHASE_MOVES)


class IllegalPhaseMove(RuntimeError):
    """A phase move :data:`PHASE_MOVES` does not declare: always a bug in the core."""


def phase_after(phase: Phase, trigger: PhaseTrigger, dest: Phase) -> Phase:
    """``dest``, once checked to be the declared move of ``trigger`` from ``phase``."""
    if (trigger, phase, dest) not in _MOVES:
        raise IllegalPhaseMove(f"{trigger.value}: {phase.value} -> {dest.value}")
    return dest
