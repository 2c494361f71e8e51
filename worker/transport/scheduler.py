"""``scheduler.SchedulerService`` over gRPC: the runtime's ``SchedulerClient`` port."""

from __future__ import annotations

from collections.abc import Sequence

from worker.errors import Rpc
from worker.model import ExecutionManagerId, SchedulerAssignment, TaskAssignmentRecord
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport.calls import call_rpc
from worker.transport.channels import ChannelPool, StubPool
from worker.transport.convert import assignment_from_proto, next_task_request, shutdown_request

__all__ = ["GrpcSchedulerClient"]


class GrpcSchedulerClient:
    """Calls the scheduler through a channel pool; every call has a deadline.

    ``NextTask`` gets ``wait_time_ms`` plus ``rpc_timeout_sec``; every other call
    ``rpc_timeout_sec`` (protocol.md section 6.10).
    """

    def __init__(self, channels: ChannelPool, rpc_timeout_sec: float) -> None:
        self._stubs = StubPool(channels, scheduler_pb2_grpc.SchedulerServiceStub)
        self._rpc_timeout_sec = rpc_timeout_sec

    async def next_task(
        self,
        em_id: ExecutionManagerId,
        prev_assignment: TaskAssignmentRecord | None,
        wait_time_ms: int,
    ) -> SchedulerAssignment | None:
        """Long-poll for one assignment (``None`` = ``no_task``), carrying at most one ack."""
        request = next_task_request(em_id, prev_assignment, wait_time_ms)
        response: scheduler_pb2.NextTaskResponse = await call_rpc(
            Rpc.NEXT_TASK,
            self._stubs.next().NextTask,
            request,
            wait_time_ms / 1000 + self._rpc_timeout_sec,
        )
        return assignment_from_proto(response)

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        """Tell the scheduler this worker is alive."""
        request = scheduler_pb2.HeartbeatRequest(execution_manager_id=em_id)
        _: common_pb2.Void = await call_rpc(
            Rpc.SCHEDULER_HEARTBEAT, self._stubs.next().Heartbeat, request, self._rpc_timeout_sec
        )

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        """Say goodbye with every still-pending record, in FIFO order."""
        request = shutdown_request(em_id, prev_assignments)
        _: common_pb2.Void = await call_rpc(
            Rpc.SHUTDOWN, self._stubs.next().Shutdown, request, self._rpc_timeout_sec
        )
