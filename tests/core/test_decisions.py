"""The sans-I/O decisions: gates, verdicts, report building and messages, exit codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.decisions import (
    ERROR_MESSAGE_CAP_BYTES,
    REGISTERED,
    HeartbeatVerdict,
    ReportVerdict,
    SessionGate,
    StopCause,
    cap_error_message,
    classify_heartbeat_error,
    classify_register_error,
    classify_report_error,
    exit_code_for,
    failure_message,
    is_reportable,
    possible_orphan,
    report_for,
    session_gate,
)
from worker.core.encoding import success_request_size
from worker.errors import MalformedContextError, ProtocolError, Rpc, StatusCode, error_for
from worker.exit_codes import ExitCode
from worker.model import (
    AssignmentId,
    ExecutionContext,
    ExecutionManagerId,
    ExecutorCrash,
    FailureReport,
    InTaskFailure,
    JobId,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    Success,
    SuccessReport,
    TaskAssignment,
    TaskId,
    TaskInstanceId,
    TdlContext,
    Timeout,
    TimeoutPolicy,
)

S = SessionId


def test_session_gate() -> None:
    assert session_gate(S(4), S(5)) is SessionGate.STALE
    assert session_gate(S(5), S(5)) is SessionGate.CURRENT
    assert session_gate(S(6), S(5)) is SessionGate.NEWER
    assert is_reportable(S(5), S(5))
    assert is_reportable(S(6), S(5))
    assert not is_reportable(S(4), S(5))


@pytest.mark.parametrize(
    ("code", "record", "execute", "refresh", "retry", "fatal"),
    [
        (StatusCode.NOT_FOUND, True, False, True, False, False),
        (StatusCode.FAILED_PRECONDITION, True, False, False, False, False),
        (StatusCode.INVALID_ARGUMENT, False, False, False, False, True),
        (StatusCode.UNAVAILABLE, False, False, False, True, False),
        (StatusCode.DEADLINE_EXCEEDED, False, False, False, True, False),
        (StatusCode.INTERNAL, False, False, False, True, False),
        (StatusCode.UNKNOWN, False, False, False, True, False),
        (StatusCode.RESOURCE_EXHAUSTED, False, False, False, True, False),
    ],
)
def test_register_verdicts(
    code: StatusCode, record: bool, execute: bool, refresh: bool, retry: bool, fatal: bool
) -> None:
    verdict = classify_register_error(error_for(Rpc.REGISTER_TASK_INSTANCE, code))
    assert (verdict.record, verdict.execute, verdict.refresh, verdict.retry, verdict.fatal) == (
        record,
        execute,
        refresh,
        retry,
        fatal,
    )


def test_register_ok_and_malformed() -> None:
    assert REGISTERED.record
    assert REGISTERED.execute
    assert not REGISTERED.fatal
    malformed = classify_register_error(MalformedContextError(Rpc.REGISTER_TASK_INSTANCE, "x"))
    assert malformed.record
    assert malformed.fatal
    assert not malformed.execute


def test_heartbeat_verdicts() -> None:
    for code in (StatusCode.FAILED_PRECONDITION, StatusCode.INVALID_ARGUMENT):
        error = error_for(Rpc.STORAGE_HEARTBEAT, code)
        assert classify_heartbeat_error(error) is HeartbeatVerdict.EVICTED
    for code in (StatusCode.UNAVAILABLE, StatusCode.INTERNAL, StatusCode.NOT_FOUND):
        error = error_for(Rpc.STORAGE_HEARTBEAT, code)
        assert classify_heartbeat_error(error) is HeartbeatVerdict.TRANSIENT
    protocol = ProtocolError(Rpc.STORAGE_HEARTBEAT, "odd")
    assert classify_heartbeat_error(protocol) is HeartbeatVerdict.TRANSIENT


@pytest.mark.parametrize("rpc", [Rpc.REPORT_TASK_SUCCESS, Rpc.REPORT_TASK_FAILURE])
def test_report_verdicts(rpc: Rpc) -> None:
    expected = {
        StatusCode.UNAVAILABLE: ReportVerdict.RETRY,
        StatusCode.DEADLINE_EXCEEDED: ReportVerdict.RETRY,
        StatusCode.NOT_FOUND: ReportVerdict.FINAL_STALE,
        StatusCode.FAILED_PRECONDITION: ReportVerdict.FINAL_STALE,
        StatusCode.INVALID_ARGUMENT: ReportVerdict.FINAL_ERROR,
        StatusCode.INTERNAL: ReportVerdict.FINAL_ERROR,
        StatusCode.UNKNOWN: ReportVerdict.FINAL_ERROR,
    }
    for code, verdict in expected.items():
        assert classify_report_error(error_for(rpc, code)) is verdict


def test_failure_messages() -> None:
    assert (
        failure_message(InTaskFailure("ValueError", "boom")) == "in-task failure: ValueError: boom"
    )
    assert failure_message(InTaskFailure("RuntimeError", "")) == "in-task failure: RuntimeError"
    assert failure_message(Timeout(200)) == "hard timeout (200 ms) exceeded"
    assert (
        failure_message(ExecutorCrash(signal=9))
        == "executor crashed (exit_status = signal 9 (SIGKILL))"
    )
    assert failure_message(ExecutorCrash(exit_code=3)) == "executor crashed (exit_status = 3)"
    assert (
        failure_message(ExecutorCrash(detail="closed its channel before replying"))
        == "executor crashed (exit_status = unknown): closed its channel before replying"
    )
    assert "Traceback" not in failure_message(InTaskFailure("E", "m", traceback="Traceback..."))


def test_cap_is_exact_and_on_a_character_boundary() -> None:
    assert cap_error_message("x" * ERROR_MESSAGE_CAP_BYTES) == "x" * ERROR_MESSAGE_CAP_BYTES
    capped = cap_error_message("x" * (ERROR_MESSAGE_CAP_BYTES + 1))
    assert capped.endswith(" [truncated]")
    assert len(capped.encode()) == ERROR_MESSAGE_CAP_BYTES
    # A 3-byte character straddling the cut is dropped whole, never split.
    euro = cap_error_message("€" * 30_000)
    assert len(euro.encode()) <= ERROR_MESSAGE_CAP_BYTES
    assert euro.removesuffix(" [truncated]") == "€" * len(euro.removesuffix(" [truncated]"))


@given(st.text(max_size=300), st.integers(min_value=12, max_value=200))
def test_cap_property(message: str, cap: int) -> None:
    capped = cap_error_message(message, cap)
    assert len(capped.encode()) <= max(cap, len(message.encode()) if capped == message else cap)
    if len(message.encode()) <= cap:
        assert capped == message
    else:
        assert capped.endswith(" [truncated]")
        assert message.startswith(capped.removesuffix(" [truncated]"))


def _assignment(session: int = 1) -> SchedulerAssignment:
    return SchedulerAssignment(
        TaskAssignment(
            AssignmentId(1), ResourceGroupId(9), JobId(7), TaskId.of_index(0), S(session)
        ),
        SchedulerId(3),
    )


_CONTEXT = ExecutionContext(
    TaskInstanceId(11), TdlContext("m", "f"), TimeoutPolicy(1, 2), b"\x00\x00\x00\x00"
)


def test_report_for_success_and_failure() -> None:
    success = report_for(
        Success(b"\x00\x00\x00\x00"), _assignment(2), _CONTEXT, ExecutionManagerId(5), 4096
    )
    assert success == SuccessReport(
        JobId(7),
        TaskId.of_index(0),
        TaskInstanceId(11),
        ExecutionManagerId(5),
        S(2),
        b"\x00\x00\x00\x00",
    )
    failure = report_for(Timeout(300), _assignment(), _CONTEXT, ExecutionManagerId(5), 4096)
    assert isinstance(failure, FailureReport)
    assert failure.error_message == "hard timeout (300 ms) exceeded"


def test_report_for_output_too_large_uses_the_encoded_size() -> None:
    outputs = b"y" * 200
    probe = SuccessReport(
        JobId(7), TaskId.of_index(0), TaskInstanceId(11), ExecutionManagerId(5), S(1), outputs
    )
    size = success_request_size(probe)
    assert (
        report_for(Success(outputs), _assignment(), _CONTEXT, ExecutionManagerId(5), size) == probe
    )
    too_large = report_for(
        Success(outputs), _assignment(), _CONTEXT, ExecutionManagerId(5), size - 1
    )
    assert isinstance(too_large, FailureReport)
    assert too_large.error_message == (
        f"in-task failure: OutputTooLarge: outputs too large ({size} bytes > {size - 1})"
    )


def test_exit_codes_follow_priority() -> None:
    assert exit_code_for(set()) is ExitCode.OK
    assert exit_code_for({StopCause.GRACEFUL}) is ExitCode.OK
    assert exit_code_for({StopCause.GRACEFUL, StopCause.FORCED}) is ExitCode.FORCED
    assert exit_code_for({StopCause.FORCED, StopCause.EVICTED}) is ExitCode.EVICTED
    assert exit_code_for({StopCause.EVICTED, StopCause.FATAL}) is ExitCode.FATAL


def test_possible_orphan_only_after_failed_attempts() -> None:
    stale_state = classify_register_error(
        error_for(Rpc.REGISTER_TASK_INSTANCE, StatusCode.FAILED_PRECONDITION)
    )
    stale_session = classify_register_error(
        error_for(Rpc.REGISTER_TASK_INSTANCE, StatusCode.NOT_FOUND)
    )
    assert possible_orphan(stale_state, 1)
    assert not possible_orphan(stale_state, 0)
    assert not possible_orphan(stale_session, 3)
