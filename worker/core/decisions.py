"""The worker's protocol decisions as plain functions over values (protocol.md sections 5-6).

Everything the trio shell must decide lives here, synchronous and fully typed: which session gate
an assignment passes, what a registration answer or a heartbeat answer means, whether an outcome
is still reportable, which report an outcome becomes (with the exact messages of executor.md
section 5 and the 65,536-byte cap), what a report error means, and which exit code a set of
stop causes yields. The shell only performs the I/O these verdicts ask for.
"""

from __future__ import annotations

import enum
import signal as signal_module

import attrs

from worker.core.encoding import success_request_size
from worker.core.identity_enum import IdentityEnum
from worker.errors import (
    EvictedError,
    InvalidInputError,
    ProtocolError,
    RpcError,
    StaleSessionError,
    StaleStateError,
    TransportError,
)
from worker.exit_codes import ExitCode, combine
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    ExecutorCrash,
    FailureReport,
    InTaskFailure,
    Outcome,
    SchedulerAssignment,
    SessionId,
    Success,
    SuccessReport,
    Timeout,
)

__all__ = [
    "ERROR_MESSAGE_CAP_BYTES",
    "POOL_BROKEN_CAUSES",
    "TRUNCATION_SUFFIX",
    "HeartbeatVerdict",
    "RegisterVerdict",
    "REGISTERED",
    "ReportVerdict",
    "SessionGate",
    "StopCause",
    "cap_error_message",
    "classify_heartbeat_error",
    "classify_register_error",
    "classify_report_error",
    "exit_code_for",
    "failure_message",
    "is_reportable",
    "possible_orphan",
    "output_too_large_message",
    "report_for",
    "session_gate",
]

#: executor.md section 5: ``error_message`` is capped at this many UTF-8 bytes.
ERROR_MESSAGE_CAP_BYTES = 65_536
TRUNCATION_SUFFIX = " [truncated]"


class SessionGate(enum.Enum):
    """Gate 1 (protocol.md section 6.5, M2) for an assignment pinned to session ``s``."""

    STALE = "stale"  # s < tracker: record, no storage call
    CURRENT = "current"  # s == tracker: register
    NEWER = "newer"  # s > tracker: request a refresh heartbeat, register with s


def session_gate(assignment_session: SessionId, tracker: SessionId) -> SessionGate:
    """Which gate verdict an assignment of ``assignment_session`` gets against ``tracker``."""
    if assignment_session < tracker:
        return SessionGate.STALE
    if assignment_session == tracker:
        return SessionGate.CURRENT
    return SessionGate.NEWER


@attrs.frozen(slots=True)
class RegisterVerdict:
    """What one ``RegisterTaskInstance`` answer means (protocol.md section 5.2)."""

    record: bool  # the assignment is consumed: append its acknowledgement record
    execute: bool  # run the task
    refresh: bool  # request an immediate liveness heartbeat
    retry: bool  # back off, re-check gate 1, re-send the same request
    fatal: bool  # stop the worker: drain, exit 1
    reason: str


REGISTERED = RegisterVerdict(True, True, False, False, False, "registered")
_STALE_SESSION = RegisterVerdict(True, False, True, False, False, "stale session (NOT_FOUND)")
_STALE_STATE = RegisterVerdict(True, False, False, False, False, "stale state")
_INVALID_INPUT = RegisterVerdict(False, False, False, False, True, "invalid argument")
_MALFORMED = RegisterVerdict(True, False, False, False, True, "malformed execution context")
_RETRY = RegisterVerdict(False, False, False, True, False, "transient failure")


def classify_register_error(error: RpcError | ProtocolError) -> RegisterVerdict:
    """The verdict for a failed registration (an OK answer is :data:`REGISTERED`)."""
    if isinstance(error, ProtocolError):
        # MalformedContextError: storage did create an instance, so consumed, then fatal.
        return _MALFORMED
    if isinstance(error, StaleSessionError):
        return _STALE_SESSION
    if isinstance(error, StaleStateError):
        return _STALE_STATE
    if isinstance(error, InvalidInputError):
        return _INVALID_INPUT
    return _RETRY  # TransportError and ServerError alike (P5)


def possible_orphan(verdict: RegisterVerdict, failed_attempts: int) -> bool:
    """Whether ``FAILED_PRECONDITION`` after failed attempts may hide an orphan instance.

    An earlier attempt may have registered with its reply lost (protocol.md section 6.5, M3);
    the instance is released only when storage reaps this worker, so it is logged at ERROR.
    """
    return verdict is _STALE_STATE and failed_attempts > 0


class HeartbeatVerdict(enum.Enum):
    """What one failed storage heartbeat means (protocol.md section 5.3).

    An OK reply is judged by :meth:`~worker.core.session.SessionTracker.observe`: a lower
    session there is an eviction too.
    """

    EVICTED = "evicted"
    TRANSIENT = "transient"  # warn, next tick


def classify_heartbeat_error(error: RpcError | ProtocolError) -> HeartbeatVerdict:
    """A failed heartbeat: MarkedDead / IllegalId evict, anything else is transient."""
    if isinstance(error, EvictedError):
        return HeartbeatVerdict.EVICTED
    return HeartbeatVerdict.TRANSIENT


def is_reportable(assignment_session: SessionId, tracker: SessionId) -> bool:
    """Gate 2: an outcome (or one more report attempt) is sent only while ``tracker <= s``."""
    return not tracker > assignment_session


def cap_error_message(message: str, cap_bytes: int = ERROR_MESSAGE_CAP_BYTES) -> str:
    """Cap ``message`` at ``cap_bytes`` UTF-8 bytes, cut on a character boundary + suffix."""
    encoded = message.encode("utf-8")
    if len(encoded) <= cap_bytes:
        return message
    budget = cap_bytes - len(TRUNCATION_SUFFIX.encode("utf-8"))
    # errors="ignore" drops a multi-byte character cut in half, so the cut is on a boundary.
    return encoded[: max(budget, 0)].decode("utf-8", errors="ignore") + TRUNCATION_SUFFIX


def _signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return "unknown signal"


def failure_message(outcome: InTaskFailure | Timeout | ExecutorCrash) -> str:
    """The exact ``error_message`` of a failed outcome (executor.md section 5), uncapped."""
    if isinstance(outcome, InTaskFailure):
        text = f"in-task failure: {outcome.type}"
        return f"{text}: {outcome.message}" if outcome.message else text
    if isinstance(outcome, Timeout):
        return f"hard timeout ({outcome.hard_timeout_ms} ms) exceeded"
    if outcome.signal is not None:
        status = f"signal {outcome.signal} ({_signal_name(outcome.signal)})"
    elif outcome.exit_code is not None:
        status = str(outcome.exit_code)
    else:
        status = "unknown"
    text = f"executor crashed (exit_status = {status})"
    return f"{text}: {outcome.detail}" if outcome.detail else text


def output_too_large_message(size: int, limit: int) -> str:
    """The failure sent instead of a success whose request could never land."""
    return f"in-task failure: OutputTooLarge: outputs too large ({size} bytes > {limit})"


def report_for(
    outcome: Outcome,
    assignment: SchedulerAssignment,
    context: ExecutionContext,
    em_id: ExecutionManagerId,
    max_send_bytes: int,
) -> SuccessReport | FailureReport:
    """The report ``outcome`` becomes, pinned to the assignment's session."""
    task = assignment.assignment
    if isinstance(outcome, Success):
        success = SuccessReport(
            job_id=task.job_id,
            task_id=task.task_id,
            task_instance_id=context.task_instance_id,
            execution_manager_id=em_id,
            session_id=task.session_id,
            serialized_outputs=outcome.outputs,
        )
        size = success_request_size(success)
        if size <= max_send_bytes:
            return success
        message = output_too_large_message(size, max_send_bytes)
    else:
        message = failure_message(outcome)
    return FailureReport(
        job_id=task.job_id,
        task_id=task.task_id,
        task_instance_id=context.task_instance_id,
        execution_manager_id=em_id,
        session_id=task.session_id,
        error_message=cap_error_message(message),
    )


class ReportVerdict(enum.Enum):
    """What a failed report attempt means (protocol.md section 6.8)."""

    RETRY = "retry"  # UNAVAILABLE / DEADLINE_EXCEEDED: back off, re-check gate 2, resend
    FINAL_STALE = "final-stale"  # NOT_FOUND / FAILED_PRECONDITION: warn, give up
    FINAL_ERROR = "final-error"  # any other code: error, give up


def classify_report_error(error: RpcError | ProtocolError) -> ReportVerdict:
    """The verdict for a report attempt that raised ``error``."""
    if isinstance(error, TransportError):
        return ReportVerdict.RETRY
    if isinstance(error, StaleSessionError | StaleStateError):
        return ReportVerdict.FINAL_STALE
    return ReportVerdict.FINAL_ERROR  # FinalReportError, any other code, a malformed answer


class StopCause(IdentityEnum):
    """Why the worker stops; each maps to an exit code (protocol.md section 6.11)."""

    GRACEFUL = "graceful"  # first signal, drained in time
    FORCED = "forced"  # second signal, or the drain deadline passed
    EVICTED = "evicted"  # heartbeat FAILED_PRECONDITION / INVALID_ARGUMENT / lower session
    FATAL = "fatal"  # boot failure, INVALID_ARGUMENT / malformed context, broken pool


_EXIT_FOR_CAUSE: dict[StopCause, ExitCode] = {
    StopCause.GRACEFUL: ExitCode.OK,
    StopCause.FORCED: ExitCode.FORCED,
    StopCause.EVICTED: ExitCode.EVICTED,
    StopCause.FATAL: ExitCode.FATAL,
}


#: The causes a broken executor pool adds, whatever else happened (protocol.md section 6.11).
POOL_BROKEN_CAUSES: frozenset[StopCause] = frozenset({StopCause.FATAL})


def exit_code_for(causes: set[StopCause] | frozenset[StopCause]) -> ExitCode:
    """The code of the highest-priority cause that occurred (``OK`` for none)."""
    return combine(_EXIT_FOR_CAUSE[cause] for cause in causes)
