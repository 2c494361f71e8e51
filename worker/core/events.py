"""What the trio shell tells the worker core: one value per thing that happened.

Every event is a frozen value. Slot events name the slot whose call ended; each call the core
asked for (an action) ends in exactly one slot event: answered, failed or cancelled. The shell
stamps no time on events: it passes its clock's ``now`` to :meth:`WorkerCore.handle` instead.
"""

from __future__ import annotations

import attrs

from worker.core.story import AssignmentKey
from worker.errors import ExecutorPoolError, ProtocolError, RpcError
from worker.model import ExecutionContext, Outcome, Registration, SchedulerAssignment

__all__ = [
    "Booted",
    "CallCancelled",
    "DrainDeadlinePassed",
    "Event",
    "Evicted",
    "ExecutionFailed",
    "ForceStopRequested",
    "HeartbeatLoopEnded",
    "HeartbeatsStarted",
    "OutcomeArrived",
    "PollAnswered",
    "PollFailed",
    "ReportSettled",
    "ShellCancelled",
    "ShutdownAnswered",
    "ShutdownFailed",
    "ShutdownTimedOut",
    "StopRequested",
    "TaskRegistered",
    "TaskRegistrationFailed",
    "TimerFired",
    "WorkerRegistered",
    "WorkerRegistrationCancelled",
    "WorkerRegistrationFailed",
]


@attrs.frozen(slots=True)
class Booted:
    """The executor pool is open: the worker may register."""


@attrs.frozen(slots=True)
class WorkerRegistered:
    """``RegisterExecutionManager`` answered."""

    registration: Registration


@attrs.frozen(slots=True)
class WorkerRegistrationFailed:
    """``RegisterExecutionManager`` failed (any error is fatal: no retry)."""

    error: RpcError | ProtocolError


@attrs.frozen(slots=True)
class WorkerRegistrationCancelled:
    """A stop cancelled ``RegisterExecutionManager`` (the core asked for it)."""


@attrs.frozen(slots=True)
class HeartbeatsStarted:
    """Both heartbeat loops sent their first heartbeat: slots may poll."""


@attrs.frozen(slots=True)
class HeartbeatLoopEnded:
    """One heartbeat loop ended: ``loop`` is ``"storage"`` or ``"scheduler"``."""

    loop: str


@attrs.frozen(slots=True)
class PollAnswered:
    """``NextTask`` of ``slot`` returned OK: an assignment, or ``None`` for ``no_task``."""

    slot: int
    assignment: SchedulerAssignment | None


@attrs.frozen(slots=True)
class PollFailed:
    """``NextTask`` of ``slot`` failed: an error status, or a malformed OK reply."""

    slot: int
    error: RpcError | ProtocolError


@attrs.frozen(slots=True)
class TaskRegistered:
    """``RegisterTaskInstance`` of ``slot`` answered with a complete context."""

    slot: int
    context: ExecutionContext


@attrs.frozen(slots=True)
class TaskRegistrationFailed:
    """``RegisterTaskInstance`` of ``slot`` failed (or answered a malformed context)."""

    slot: int
    error: RpcError | ProtocolError


@attrs.frozen(slots=True)
class OutcomeArrived:
    """The task of ``slot`` ended with ``outcome``."""

    slot: int
    outcome: Outcome


@attrs.frozen(slots=True)
class ExecutionFailed:
    """The executor pool broke while running the task of ``slot``: no outcome."""

    slot: int
    error: ExecutorPoolError


@attrs.frozen(slots=True)
class CallCancelled:
    """The call, sleep or task of ``slot`` was cancelled before it ended."""

    slot: int


@attrs.frozen(slots=True)
class TimerFired:
    """The backoff sleep of ``slot`` ended."""

    slot: int


@attrs.frozen(slots=True)
class ReportSettled:
    """The report of ``key`` landed, was rejected, turned stale or was abandoned."""

    key: AssignmentKey


@attrs.frozen(slots=True)
class StopRequested:
    """A stop signal: the first drains, the next one forces the stop."""


@attrs.frozen(slots=True)
class ForceStopRequested:
    """Stop at once (kill running tasks, abandon reports), whatever came before."""


@attrs.frozen(slots=True)
class DrainDeadlinePassed:
    """The drain deadline the core armed has passed."""


@attrs.frozen(slots=True)
class Evicted:
    """Storage evicted this worker (or its session went backwards)."""

    reason: str


@attrs.frozen(slots=True)
class ShutdownAnswered:
    """``Shutdown`` returned OK."""


@attrs.frozen(slots=True)
class ShutdownFailed:
    """``Shutdown`` failed with ``error``."""

    error: RpcError | ProtocolError


@attrs.frozen(slots=True)
class ShutdownTimedOut:
    """The ``Shutdown`` budget ran out before it was answered."""


@attrs.frozen(slots=True)
class ShellCancelled:
    """The shell itself is being cancelled from outside (not a stop the core asked for)."""


Event = (
    Booted
    | WorkerRegistered
    | WorkerRegistrationFailed
    | WorkerRegistrationCancelled
    | HeartbeatsStarted
    | HeartbeatLoopEnded
    | PollAnswered
    | PollFailed
    | TaskRegistered
    | TaskRegistrationFailed
    | OutcomeArrived
    | ExecutionFailed
    | CallCancelled
    | TimerFired
    | ReportSettled
    | StopRequested
    | ForceStopRequested
    | DrainDeadlinePassed
    | Evicted
    | ShutdownAnswered
    | ShutdownFailed
    | ShutdownTimedOut
    | ShellCancelled
)
