"""Typed errors, one per error kind of protocol.md section 5, and the code-to-kind table.

Clients (real gRPC and the test fakes alike) turn a failed call into ``error_for(rpc, code)``:
classification uses the status code only, never the message text. The table is data, so the
mapping is declared once and both the transport and the fakes read it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "ERROR_KIND_TABLE",
    "ErrorKind",
    "EvictedError",
    "ExecutorPoolError",
    "FinalReportError",
    "IllegalIdError",
    "InvalidInputError",
    "MalformedContextError",
    "MarkedDeadError",
    "PoolBroken",
    "PoolClosed",
    "PoolInitError",
    "ProtocolError",
    "Rpc",
    "RpcError",
    "ServerError",
    "StaleSessionError",
    "StaleStateError",
    "StatusCode",
    "TransportError",
    "error_for",
]


class StatusCode(enum.IntEnum):
    """gRPC status codes (same numbers as ``grpc.StatusCode``), so the core needs no grpc."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Rpc(enum.Enum):
    """Every RPC the worker sends."""

    NEXT_TASK = "SchedulerService.NextTask"
    SCHEDULER_HEARTBEAT = "SchedulerService.Heartbeat"
    SHUTDOWN = "SchedulerService.Shutdown"
    REGISTER_TASK_INSTANCE = "TaskInstanceManagementService.RegisterTaskInstance"
    REPORT_TASK_SUCCESS = "TaskInstanceManagementService.ReportTaskSuccess"
    REPORT_TASK_FAILURE = "TaskInstanceManagementService.ReportTaskFailure"
    REGISTER_EXECUTION_MANAGER = "ExecutionManagerLivenessService.RegisterExecutionManager"
    STORAGE_HEARTBEAT = "ExecutionManagerLivenessService.UpdateExecutionManagerHeartbeat"


class ErrorKind(enum.Enum):
    """The kinds of protocol.md section 5."""

    TRANSPORT = "transport"  # retry with backoff (UNAVAILABLE, DEADLINE_EXCEEDED, ...)
    SERVER = "server"  # any other code; retried like transport where the worker retries
    STALE_SESSION = "stale-session"  # register/report NOT_FOUND
    STALE_STATE = "stale-state"  # register/report FAILED_PRECONDITION
    INVALID_INPUT = "invalid-input"  # register/report INVALID_ARGUMENT
    MARKED_DEAD = "marked-dead"  # storage heartbeat FAILED_PRECONDITION
    ILLEGAL_ID = "illegal-id"  # storage heartbeat INVALID_ARGUMENT


class RpcError(Exception):
    """A call that ended with a non-OK status. Subclasses name the kind for that RPC."""

    kind: ErrorKind = ErrorKind.SERVER

    def __init__(self, rpc: Rpc, code: StatusCode, details: str = "") -> None:
        self.rpc = rpc
        self.code = code
        self.details = details
        suffix = f": {details}" if details else ""
        super().__init__(f"{rpc.value} failed with {code.name}{suffix}")


class TransportError(RpcError):
    """Unreachable peer, dropped connection or expired deadline (and any code treated so)."""

    kind = ErrorKind.TRANSPORT


class ServerError(RpcError):
    """The peer answered with a code that is neither transport nor a protocol meaning."""

    kind = ErrorKind.SERVER


class StaleSessionError(RpcError):
    """``NOT_FOUND`` on a session-checked storage call: the assignment's session is stale."""

    kind = ErrorKind.STALE_SESSION


class StaleStateError(RpcError):
    """``FAILED_PRECONDITION`` on a storage call: job/task state or instance limit forbid it."""

    kind = ErrorKind.STALE_STATE


class InvalidInputError(RpcError):
    """``INVALID_ARGUMENT`` from storage: a protocol mismatch, fatal on registration."""

    kind = ErrorKind.INVALID_INPUT


class EvictedError(RpcError):
    """Storage no longer knows this worker as alive."""


class MarkedDeadError(EvictedError):
    """Heartbeat ``FAILED_PRECONDITION``: storage marked this worker dead."""

    kind = ErrorKind.MARKED_DEAD


class IllegalIdError(EvictedError):
    """Heartbeat ``INVALID_ARGUMENT``: storage does not know this worker's id."""

    kind = ErrorKind.ILLEGAL_ID


class FinalReportError(RpcError):
    """A report answered with a code that must not be retried (other than stale ones)."""

    kind = ErrorKind.SERVER


class ProtocolError(Exception):
    """An OK answer that breaks the contract (an unset oneof, a missing sub-message).

    The call itself completed, so an acknowledgement it carried is delivered.
    """

    def __init__(self, rpc: Rpc, problem: str) -> None:
        self.rpc = rpc
        self.problem = problem
        super().__init__(f"{rpc.value} answered OK but {problem}")


class MalformedContextError(ProtocolError):
    """``RegisterTaskInstance`` answered OK without a complete execution context.

    Storage did create an instance, so the assignment is consumed (and acknowledged), but the
    worker cannot run it: fatal, exit 1.
    """


class ExecutorPoolError(Exception):
    """Base of the executor pool's own errors (raised, never returned as outcomes)."""


class PoolInitError(ExecutorPoolError):
    """The pool could not start its executors."""


class PoolBroken(ExecutorPoolError):
    """The crash-loop limit was reached: no executor can be started."""


class PoolClosed(ExecutorPoolError):
    """``execute`` was called after the pool closed."""


_TRANSPORT_CODES = frozenset({StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})

#: Per RPC: the codes with a specific meaning. Codes not listed map to the RPC's default.
ERROR_KIND_TABLE: Mapping[Rpc, Mapping[StatusCode, type[RpcError]]] = {
    Rpc.NEXT_TASK: dict.fromkeys(_TRANSPORT_CODES, TransportError),
    Rpc.SCHEDULER_HEARTBEAT: dict.fromkeys(_TRANSPORT_CODES, TransportError),
    Rpc.SHUTDOWN: dict.fromkeys(_TRANSPORT_CODES, TransportError),
    Rpc.REGISTER_TASK_INSTANCE: {
        StatusCode.UNAVAILABLE: TransportError,
        StatusCode.DEADLINE_EXCEEDED: TransportError,
        StatusCode.NOT_FOUND: StaleSessionError,
        StatusCode.FAILED_PRECONDITION: StaleStateError,
        StatusCode.INVALID_ARGUMENT: InvalidInputError,
    },
    Rpc.REPORT_TASK_SUCCESS: {
        StatusCode.UNAVAILABLE: TransportError,
        StatusCode.DEADLINE_EXCEEDED: TransportError,
        StatusCode.NOT_FOUND: StaleSessionError,
        StatusCode.FAILED_PRECONDITION: StaleStateError,
        StatusCode.INVALID_ARGUMENT: FinalReportError,
    },
    Rpc.REPORT_TASK_FAILURE: {
        StatusCode.UNAVAILABLE: TransportError,
        StatusCode.DEADLINE_EXCEEDED: TransportError,
        StatusCode.NOT_FOUND: StaleSessionError,
        StatusCode.FAILED_PRECONDITION: StaleStateError,
        StatusCode.INVALID_ARGUMENT: FinalReportError,
    },
    Rpc.REGISTER_EXECUTION_MANAGER: dict.fromkeys(_TRANSPORT_CODES, TransportError),
    Rpc.STORAGE_HEARTBEAT: {
        StatusCode.FAILED_PRECONDITION: MarkedDeadError,
        StatusCode.INVALID_ARGUMENT: IllegalIdError,
    },
}

#: What a code not listed in the table means for each RPC.
_DEFAULT_KIND: Mapping[Rpc, type[RpcError]] = {
    Rpc.NEXT_TASK: ServerError,
    Rpc.SCHEDULER_HEARTBEAT: ServerError,
    Rpc.SHUTDOWN: ServerError,
    Rpc.REGISTER_TASK_INSTANCE: ServerError,  # retried like transport (P5)
    Rpc.REPORT_TASK_SUCCESS: FinalReportError,
    Rpc.REPORT_TASK_FAILURE: FinalReportError,
    Rpc.REGISTER_EXECUTION_MANAGER: ServerError,
    Rpc.STORAGE_HEARTBEAT: TransportError,  # anything but eviction: warn, next tick
}


def error_for(rpc: Rpc, code: StatusCode, details: str = "") -> RpcError:
    """The typed error for a non-OK ``code`` answered to ``rpc`` (protocol.md section 5)."""
    if code is StatusCode.OK:
        raise ValueError("error_for() needs a non-OK status code")
    error_type = ERROR_KIND_TABLE[rpc].get(code, _DEFAULT_KIND[rpc])
    return error_type(rpc, code, details)
