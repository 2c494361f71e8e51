"""``storage.ExecutionManagerLivenessService`` over gRPC: the runtime's ``LivenessClient`` port."""

from __future__ import annotations

from worker.errors import Rpc
from worker.model import ExecutionManagerId, Registration, SessionId
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc
from worker.transport.calls import call_rpc
from worker.transport.channels import ChannelPool, StubPool
from worker.transport.convert import registration_from_proto

__all__ = ["GrpcLivenessClient"]


class GrpcLivenessClient:
    """Registers this worker and heartbeats storage; each call has ``rpc_timeout_sec``."""

    def __init__(self, channels: ChannelPool, rpc_timeout_sec: float) -> None:
        self._stubs = StubPool(channels, storage_pb2_grpc.ExecutionManagerLivenessServiceStub)
        self._rpc_timeout_sec = rpc_timeout_sec

    async def register(self, ip_address: str) -> Registration:
        """Register; ``ProtocolError`` when the answer has no ``registration``."""
        request = storage_pb2.RegisterExecutionManagerRequest(ip_address=ip_address)
        response: storage_pb2.RegisterExecutionManagerResponse = await call_rpc(
            Rpc.REGISTER_EXECUTION_MANAGER,
            self._stubs.next().RegisterExecutionManager,
            request,
            self._rpc_timeout_sec,
        )
        return registration_from_proto(response)

    async def heartbeat(self, em_id: ExecutionManagerId) -> SessionId:
        """Heartbeat; returns storage's current session."""
        request = storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id)
        response: storage_pb2.UpdateExecutionManagerHeartbeatResponse = await call_rpc(
            Rpc.STORAGE_HEARTBEAT,
            self._stubs.next().UpdateExecutionManagerHeartbeat,
            request,
            self._rpc_timeout_sec,
        )
        return SessionId(response.session_id)
