"""The runtime's ports: what it needs from the scheduler, storage, liveness and the executors.

The gRPC clients (``worker.transport``), the executor pool (``worker.executor``) and the test
fakes (``worker.testing``) implement these protocols; the runtime depends on nothing else.

Error contract, shared by every implementation:

* a call that ends with a non-OK status raises ``worker.errors.error_for(rpc, code, details)``
  (a subclass of ``RpcError``; the code alone decides the subclass);
* an OK answer that breaks the contract raises ``ProtocolError`` (``MalformedContextError`` for
  ``RegisterTaskInstance``): the call completed, so an acknowledgement it carried is delivered;
* a trio cancellation cancels the call and propagates ``trio.Cancelled``; the result of a
  cancelled call is discarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    ExecutionRequest,
    FailureReport,
    JobId,
    Outcome,
    Registration,
    SchedulerAssignment,
    SessionId,
    SuccessReport,
    TaskAssignmentRecord,
    TaskId,
)

__all__ = ["Executor", "ExecutorFactory", "LivenessClient", "SchedulerClient", "StorageClient"]


class SchedulerClient(Protocol):
    """``scheduler.SchedulerService`` as the worker uses it."""

    async def next_task(
        self,
        em_id: ExecutionManagerId,
        prev_assignment: TaskAssignmentRecord | None,
        wait_time_ms: int,
    ) -> SchedulerAssignment | None:
        """Long-poll for one assignment; ``None`` means ``no_task``.

        ``prev_assignment=None`` leaves the field unset on the wire (no acknowledgement).
        Raises ``ProtocolError`` for an unset ``result`` or a task id without a kind.
        """
        ...

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        """Tell the scheduler this worker is alive."""
        ...

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        """Say goodbye, carrying every still-pending acknowledgement in FIFO order."""
        ...


class StorageClient(Protocol):
    """``storage.TaskInstanceManagementService`` as the worker uses it."""

    async def register_task_instance(
        self,
        job_id: JobId,
        task_id: TaskId,
        em_id: ExecutionManagerId,
        session_id: SessionId,
    ) -> ExecutionContext:
        """Create a task instance; raises ``MalformedContextError`` for an incomplete context."""
        ...

    async def report_task_success(self, report: SuccessReport) -> None:
        """Report a successful execution."""
        ...

    async def report_task_failure(self, report: FailureReport) -> None:
        """Report a failed execution."""
        ...


class LivenessClient(Protocol):
    """``storage.ExecutionManagerLivenessService`` as the worker uses it."""

    async def register(self, ip_address: str) -> Registration:
        """Register this worker; raises ``ProtocolError`` when ``registration`` is unset."""
        ...

    async def heartbeat(self, em_id: ExecutionManagerId) -> SessionId:
        """Heartbeat; returns storage's current session."""
        ...


class Executor(Protocol):
    """The executor pool as the runtime uses it (executor.md section 1)."""

    async def execute(self, request: ExecutionRequest) -> Outcome:
        """Run one task to exactly one outcome.

        Raises ``PoolBroken``/``PoolClosed``; on cancellation the executor's process group is
        killed and ``trio.Cancelled`` propagates with no outcome.
        """
        ...


class ExecutorFactory(Protocol):
    """Opens the executor pool: spawns every executor and waits for readiness.

    Raises ``PoolInitError`` from ``__aenter__`` when the pool cannot start; leaving the context
    closes every executor and leaves no process behind.
    """

    def __call__(self) -> AbstractAsyncContextManager[Executor]:
        """Return the async context manager that owns the pool."""
        ...
