"""Shared helpers: the three gRPC clients over one pool, and one sample call per worker RPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from worker.errors import Rpc
from worker.model import (
    AssignmentId,
    ExecutionManagerId,
    FailureReport,
    JobId,
    SchedulerId,
    SessionId,
    SuccessReport,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
)
from worker.transport.channels import ChannelPool
from worker.transport.liveness import GrpcLivenessClient
from worker.transport.scheduler import GrpcSchedulerClient
from worker.transport.storage import GrpcStorageClient

__all__ = ["EM_ID", "METHOD_PATHS", "NO_TASK", "SAMPLE_CALLS", "Clients"]

EM_ID = ExecutionManagerId(1)
NO_TASK = bytes.fromhex("12 00")  # NextTaskResponse{no_task: {}}

#: The method path of every RPC the worker sends (protocol.md sections 2.2 and 2.3).
METHOD_PATHS: dict[Rpc, str] = {
    Rpc.NEXT_TASK: "/scheduler.SchedulerService/NextTask",
    Rpc.SCHEDULER_HEARTBEAT: "/scheduler.SchedulerService/Heartbeat",
    Rpc.SHUTDOWN: "/scheduler.SchedulerService/Shutdown",
    Rpc.REGISTER_TASK_INSTANCE: "/storage.TaskInstanceManagementService/RegisterTaskInstance",
    Rpc.REPORT_TASK_SUCCESS: "/storage.TaskInstanceManagementService/ReportTaskSuccess",
    Rpc.REPORT_TASK_FAILURE: "/storage.TaskInstanceManagementService/ReportTaskFailure",
    Rpc.REGISTER_EXECUTION_MANAGER: (
        "/storage.ExecutionManagerLivenessService/RegisterExecutionManager"
    ),
    Rpc.STORAGE_HEARTBEAT: (
        "/storage.ExecutionManagerLivenessService/UpdateExecutionManagerHeartbeat"
    ),
}


@attrs.frozen
class Clients:
    """The three port clients sharing one channel pool."""

    scheduler: GrpcSchedulerClient
    storage: GrpcStorageClient
    liveness: GrpcLivenessClient

    @classmethod
    def over(cls, channels: ChannelPool, rpc_timeout_sec: float = 10.0) -> Clients:
        """Clients whose calls all go to ``channels``."""
        return cls(
            GrpcSchedulerClient(channels, rpc_timeout_sec),
            GrpcStorageClient(channels, rpc_timeout_sec),
            GrpcLivenessClient(channels, rpc_timeout_sec),
        )


SUCCESS = SuccessReport(
    JobId(2), TaskId.of_index(0), TaskInstanceId(9), EM_ID, SessionId(3), b"\0\0\0\0"
)
FAILURE = FailureReport(JobId(2), TaskId.commit(), TaskInstanceId(9), EM_ID, SessionId(3), "boom")
RECORD = TaskAssignmentRecord(AssignmentId(0), SchedulerId(7))


def _next_task(clients: Clients) -> Awaitable[object]:
    return clients.scheduler.next_task(EM_ID, RECORD, 0)


def _register_task_instance(clients: Clients) -> Awaitable[object]:
    return clients.storage.register_task_instance(JobId(2), TaskId.of_index(0), EM_ID, SessionId(3))


#: One call per RPC, each through the port client method that sends it.
SAMPLE_CALLS: dict[Rpc, Callable[[Clients], Awaitable[object]]] = {
    Rpc.NEXT_TASK: _next_task,
    Rpc.SCHEDULER_HEARTBEAT: lambda clients: clients.scheduler.heartbeat(EM_ID),
    Rpc.SHUTDOWN: lambda clients: clients.scheduler.shutdown(EM_ID, [RECORD]),
    Rpc.REGISTER_TASK_INSTANCE: _register_task_instance,
    Rpc.REPORT_TASK_SUCCESS: lambda clients: clients.storage.report_task_success(SUCCESS),
    Rpc.REPORT_TASK_FAILURE: lambda clients: clients.storage.report_task_failure(FAILURE),
    Rpc.REGISTER_EXECUTION_MANAGER: lambda clients: clients.liveness.register("0.0.0.0"),
    Rpc.STORAGE_HEARTBEAT: lambda clients: clients.liveness.heartbeat(EM_ID),
}
