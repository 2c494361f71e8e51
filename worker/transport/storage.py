"""``storage.TaskInstanceManagementService`` over gRPC: the runtime's ``StorageClient`` port."""

from __future__ import annotations

from worker.errors import Rpc
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    FailureReport,
    JobId,
    SessionId,
    SuccessReport,
    TaskId,
)
from worker.transport._generated.common import common_pb2
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc
from worker.transport.calls import call_rpc
from worker.transport.channels import ChannelPool, StubPool
from worker.transport.convert import (
    execution_context_from_proto,
    failure_report_to_proto,
    register_task_instance_request,
    success_report_to_proto,
)

__all__ = ["GrpcStorageClient"]


class GrpcStorageClient:
    """Registers task instances and reports outcomes; each call has ``rpc_timeout_sec``."""

    def __init__(self, channels: ChannelPool, rpc_timeout_sec: float) -> None:
        self._stubs = StubPool(channels, storage_pb2_grpc.TaskInstanceManagementServiceStub)
        self._rpc_timeout_sec = rpc_timeout_sec

    async def register_task_instance(
        self,
        job_id: JobId,
        task_id: TaskId,
        em_id: ExecutionManagerId,
        session_id: SessionId,
    ) -> ExecutionContext:
        """Create a task instance; ``MalformedContextError`` for an incomplete context."""
        request = register_task_instance_request(job_id, task_id, em_id, session_id)
        response: storage_pb2.RegisterTaskInstanceResponse = await call_rpc(
            Rpc.REGISTER_TASK_INSTANCE,
            self._stubs.next().RegisterTaskInstance,
            request,
            self._rpc_timeout_sec,
        )
        return execution_context_from_proto(response)

    async def report_task_success(self, report: SuccessReport) -> None:
        """Report a successful execution."""
        _: common_pb2.Void = await call_rpc(
            Rpc.REPORT_TASK_SUCCESS,
            self._stubs.next().ReportTaskSuccess,
            success_report_to_proto(report),
            self._rpc_timeout_sec,
        )

    async def report_task_failure(self, report: FailureReport) -> None:
        """Report a failed execution."""
        _: common_pb2.Void = await call_rpc(
            Rpc.REPORT_TASK_FAILURE,
            self._stubs.next().ReportTaskFailure,
            failure_report_to_proto(report),
            self._rpc_timeout_sec,
        )
