"""What the worker core asks the trio shell to do: one value per call, timer or effect.

Slot actions (``SendNextTask``, ``RegisterTask``, ``Execute``, ``Sleep``) start the one call a
slot may have outstanding; the shell answers each with exactly one slot event. Times are
absolute, on the clock whose ``now`` the shell passes to :meth:`WorkerCore.handle`.
"""

from __future__ import annotations

import attrs

from worker.core.story import AssignmentKey
from worker.exit_codes import ExitCode
from worker.model import (
    ExecutionManagerId,
    ExecutionRequest,
    FailureReport,
    SchedulerAssignment,
    SuccessReport,
    TaskAssignmentRecord,
)

__all__ = [
    "Action",
    "ArmDrainDeadline",
    "CancelCall",
    "CancelRegistration",
    "CancelReports",
    "Execute",
    "Exit",
    "KillTask",
    "RefreshSession",
    "RegisterTask",
    "RegisterWorker",
    "SendNextTask",
    "SendShutdown",
    "Sleep",
    "StartHeartbeats",
    "StartReport",
    "StopHeartbeats",
]


@attrs.frozen(slots=True)
class RegisterWorker:
    """Send the one ``RegisterExecutionManager``."""

    ip_address: str


@attrs.frozen(slots=True)
class CancelRegistration:
    """Cancel ``RegisterExecutionManager`` in flight (a stop during boot)."""


@attrs.frozen(slots=True)
class StartHeartbeats:
    """Start both heartbeat loops for ``em_id``; answer :class:`HeartbeatsStarted`."""

    em_id: ExecutionManagerId


@attrs.frozen(slots=True)
class StopHeartbeats:
    """Cancel both heartbeat loops; each answers :class:`HeartbeatLoopEnded` once it ended."""


@attrs.frozen(slots=True)
class SendNextTask:
    """``slot`` long-polls, carrying ``carried`` (``None``: the field stays unset)."""

    slot: int
    em_id: ExecutionManagerId
    carried: TaskAssignmentRecord | None
    wait_time_ms: int


@attrs.frozen(slots=True)
class RegisterTask:
    """``slot`` sends ``RegisterTaskInstance`` for ``assignment``."""

    slot: int
    em_id: ExecutionManagerId
    assignment: SchedulerAssignment


@attrs.frozen(slots=True)
class Execute:
    """``slot`` runs ``request`` in an executor."""

    slot: int
    request: ExecutionRequest


@attrs.frozen(slots=True)
class Sleep:
    """``slot`` sleeps until ``until`` (a backoff), then answers :class:`TimerFired`."""

    slot: int
    until: float


@attrs.frozen(slots=True)
class CancelCall:
    """Cancel the poll, registration or backoff sleep of ``slot``."""

    slot: int


@attrs.frozen(slots=True)
class KillTask:
    """Kill the task ``slot`` runs (its process group): it ends with no outcome."""

    slot: int


@attrs.frozen(slots=True)
class StartReport:
    """Deliver ``report`` in the report nursery; answer :class:`ReportSettled` with ``key``."""

    key: AssignmentKey
    report: SuccessReport | FailureReport


@attrs.frozen(slots=True)
class CancelReports:
    """Abandon every report still being delivered."""


@attrs.frozen(slots=True)
class RefreshSession:
    """Ask the storage liveness loop for a heartbeat now."""


@attrs.frozen(slots=True)
class ArmDrainDeadline:
    """Answer :class:`DrainDeadlinePassed` at ``deadline`` unless the worker exited first."""

    deadline: float


@attrs.frozen(slots=True)
class SendShutdown:
    """Send ``Shutdown`` with ``records``, not before ``not_before``; give up at ``deadline``."""

    em_id: ExecutionManagerId
    records: tuple[TaskAssignmentRecord, ...]
    not_before: float
    deadline: float


@attrs.frozen(slots=True)
class Exit:
    """The worker is done: return ``code``."""

    code: ExitCode


Action = (
    RegisterWorker
    | CancelRegistration
    | StartHeartbeats
    | StopHeartbeats
    | SendNextTask
    | RegisterTask
    | Execute
    | Sleep
    | CancelCall
    | KillTask
    | StartReport
    | CancelReports
    | RefreshSession
    | ArmDrainDeadline
    | SendShutdown
    | Exit
)
