"""Protobuf <-> ``worker.model`` conversion: the only place that knows both shapes.

Decoding checks presence (``HasField``/``WhichOneof``) wherever the contract requires a value,
because a missing sub-message silently reads as its defaults (protocol.md section 2.5).
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.errors import MalformedContextError, ProtocolError, Rpc
from worker.model import (
    AssignmentId,
    ExecutionContext,
    ExecutionManagerId,
    FailureReport,
    JobId,
    Registration,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    SuccessReport,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
    TaskKind,
    TdlContext,
    TimeoutPolicy,
)
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2
from worker.transport._generated.storage import storage_pb2

__all__ = [
    "assignment_from_proto",
    "execution_context_from_proto",
    "failure_report_to_proto",
    "next_task_request",
    "record_from_proto",
    "record_to_proto",
    "registration_from_proto",
    "register_task_instance_request",
    "shutdown_request",
    "success_report_to_proto",
    "task_id_from_proto",
    "task_id_to_proto",
]


def task_id_to_proto(task_id: TaskId) -> common_pb2.TaskId:
    """``common.TaskId`` with the same kind set (index 0 included)."""
    if task_id.kind is TaskKind.INDEX:
        assert task_id.index is not None  # guaranteed by TaskId's own check
        return common_pb2.TaskId(index=task_id.index)
    if task_id.kind is TaskKind.COMMIT:
        return common_pb2.TaskId(commit=common_pb2.Void())
    return common_pb2.TaskId(cleanup=common_pb2.Void())


def task_id_from_proto(message: common_pb2.TaskId, rpc: Rpc) -> TaskId:
    """The model task id; ``ProtocolError`` when no ``kind`` is set."""
    kind = message.WhichOneof("kind")
    if kind == "index":
        return TaskId.of_index(message.index)
    if kind == "commit":
        return TaskId.commit()
    if kind == "cleanup":
        return TaskId.cleanup()
    raise ProtocolError(rpc, "the task id has no kind set")


def record_to_proto(record: TaskAssignmentRecord) -> scheduler_pb2.TaskAssignmentRecord:
    """``{id, from}``; ``from`` is a Python keyword, hence the keyword-argument mapping."""
    return scheduler_pb2.TaskAssignmentRecord(**{"id": record.id, "from": record.from_scheduler_id})


def record_from_proto(message: scheduler_pb2.TaskAssignmentRecord) -> TaskAssignmentRecord:
    """The model record of a wire record (used by servers and tests)."""
    from_scheduler_id: int = getattr(message, "from")
    return TaskAssignmentRecord(AssignmentId(message.id), SchedulerId(from_scheduler_id))


def next_task_request(
    em_id: ExecutionManagerId, prev_assignment: TaskAssignmentRecord | None, wait_time_ms: int
) -> scheduler_pb2.NextTaskRequest:
    """``NextTaskRequest``; ``prev_assignment`` is left unset (no ack) when ``None``."""
    request = scheduler_pb2.NextTaskRequest(execution_manager_id=em_id, wait_time_ms=wait_time_ms)
    if prev_assignment is not None:
        request.prev_assignment.CopyFrom(record_to_proto(prev_assignment))
    return request


def shutdown_request(
    em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
) -> scheduler_pb2.ShutdownRequest:
    """``ShutdownRequest`` carrying every pending record in the given (FIFO) order."""
    return scheduler_pb2.ShutdownRequest(
        execution_manager_id=em_id,
        prev_assignments=[record_to_proto(record) for record in prev_assignments],
    )


def assignment_from_proto(message: scheduler_pb2.NextTaskResponse) -> SchedulerAssignment | None:
    """The assignment of a ``NextTaskResponse``; ``None`` for ``no_task``.

    ``ProtocolError`` for an unset ``result`` or a missing / kind-less ``task_id``.
    """
    result = message.WhichOneof("result")
    if result == "no_task":
        return None
    if result != "assignment":
        raise ProtocolError(Rpc.NEXT_TASK, "the response has no result set")
    wire = message.assignment
    if not wire.HasField("task_id"):
        raise ProtocolError(Rpc.NEXT_TASK, "the assignment has no task id")
    assignment = TaskAssignment(
        id=AssignmentId(wire.id),
        resource_group_id=ResourceGroupId(wire.resource_group_id),
        job_id=JobId(wire.job_id),
        task_id=task_id_from_proto(wire.task_id, Rpc.NEXT_TASK),
        session_id=SessionId(wire.session_id),
    )
    return SchedulerAssignment(assignment, SchedulerId(wire.scheduler_id))


def register_task_instance_request(
    job_id: JobId, task_id: TaskId, em_id: ExecutionManagerId, session_id: SessionId
) -> storage_pb2.RegisterTaskInstanceRequest:
    """``RegisterTaskInstanceRequest`` for one assignment, pinned to its session."""
    return storage_pb2.RegisterTaskInstanceRequest(
        job_id=job_id,
        task_id=task_id_to_proto(task_id),
        execution_manager_id=em_id,
        session_id=session_id,
    )


def execution_context_from_proto(
    message: storage_pb2.RegisterTaskInstanceResponse,
) -> ExecutionContext:
    """The execution context; ``MalformedContextError`` when it or a sub-message is missing."""
    rpc = Rpc.REGISTER_TASK_INSTANCE
    if not message.HasField("execution_context"):
        raise MalformedContextError(rpc, "execution_context is missing")
    context = message.execution_context
    if not context.HasField("tdl_context"):
        raise MalformedContextError(rpc, "execution_context.tdl_context is missing")
    if not context.HasField("timeout_policy"):
        raise MalformedContextError(rpc, "execution_context.timeout_policy is missing")
    return ExecutionContext(
        task_instance_id=TaskInstanceId(context.task_instance_id),
        tdl_context=TdlContext(
            package=context.tdl_context.package, task_func=context.tdl_context.task_func
        ),
        timeout_policy=TimeoutPolicy(
            soft_timeout_ms=context.timeout_policy.soft_timeout_ms,
            hard_timeout_ms=context.timeout_policy.hard_timeout_ms,
        ),
        serialized_task_io=context.serialized_task_io,
    )


def success_report_to_proto(report: SuccessReport) -> storage_pb2.ReportTaskSuccessRequest:
    """``ReportTaskSuccessRequest`` with every field of the report."""
    return storage_pb2.ReportTaskSuccessRequest(
        job_id=report.job_id,
        task_id=task_id_to_proto(report.task_id),
        task_instance_id=report.task_instance_id,
        execution_manager_id=report.execution_manager_id,
        session_id=report.session_id,
        serialized_outputs=report.serialized_outputs,
    )


def failure_report_to_proto(report: FailureReport) -> storage_pb2.ReportTaskFailureRequest:
    """``ReportTaskFailureRequest`` with every field of the report."""
    return storage_pb2.ReportTaskFailureRequest(
        job_id=report.job_id,
        task_id=task_id_to_proto(report.task_id),
        task_instance_id=report.task_instance_id,
        execution_manager_id=report.execution_manager_id,
        session_id=report.session_id,
        error_message=report.error_message,
    )


def registration_from_proto(
    message: storage_pb2.RegisterExecutionManagerResponse,
) -> Registration:
    """The registration; ``ProtocolError`` when ``registration`` is unset."""
    if not message.HasField("registration"):
        raise ProtocolError(Rpc.REGISTER_EXECUTION_MANAGER, "registration is missing")
    return Registration(
        execution_manager_id=ExecutionManagerId(message.registration.execution_manager_id),
        session_id=SessionId(message.registration.session_id),
    )
