"""The trio bridge for grpcio's synchronous API: unary calls as trio-native awaitables.

grpcio has no trio integration, and a blocking call in a worker thread cannot be interrupted by
a trio cancel scope. Instead every call goes through the call future
(``multi_callable.future(request, timeout=...)``): grpcio completes it on its own completion
thread, whose done-callback only hands control back to trio
(``TrioToken.run_sync_soon``) - no thread per call. A trio cancellation cancels the future,
which resets the HTTP/2 stream (the server sees the cancellation), and returns at once; the
result of a cancelled call is discarded.

Every call carries a deadline. grpcio enforces it; as a second line of defence the wait is also
bounded on the trio side, a grace period later, so a lost completion can never hang a task.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final, Protocol, TypeVar

import grpc
import trio

from worker.errors import StatusCode

__all__ = [
    "DEADLINE_GRACE_SEC",
    "CallFailed",
    "UnaryFuture",
    "UnaryMultiCallable",
    "await_future",
    "unary_call",
]

#: How long after the gRPC deadline the trio side gives up on a completion that never came.
DEADLINE_GRACE_SEC: Final = 1.0

_ResponseT = TypeVar("_ResponseT")
_ResponseT_co = TypeVar("_ResponseT_co", covariant=True)
_RequestT_contra = TypeVar("_RequestT_contra", contravariant=True)


class CallFailed(Exception):
    """A unary call ended with a non-OK status; ``code`` is the status, ``details`` its text."""

    def __init__(self, code: StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}" if details else code.name)


class UnaryFuture(Protocol[_ResponseT_co]):
    """The part of grpcio's call future the bridge uses."""

    def result(self, timeout: float | None = None) -> _ResponseT_co:
        """The response; raises ``grpc.RpcError`` for a non-OK status."""
        ...

    def cancel(self) -> bool:
        """Cancel the call on the wire."""
        ...

    def add_done_callback(self, fn: Any) -> None:
        """Call ``fn(future)`` once the call completed (at once when it already has)."""
        ...


class UnaryMultiCallable(Protocol[_RequestT_contra, _ResponseT_co]):
    """A unary-unary method of a grpcio channel, as the generated stubs expose it."""

    def future(
        self, request: _RequestT_contra, timeout: float | None = None
    ) -> UnaryFuture[_ResponseT_co]:
        """Start the call asynchronously."""
        ...


def _status_of(error: grpc.RpcError) -> CallFailed:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    grpc_code = code() if callable(code) else grpc.StatusCode.UNKNOWN
    text = details() if callable(details) else str(error)
    return CallFailed(StatusCode(grpc_code.value[0]), text or "")


async def await_future(future: UnaryFuture[_ResponseT]) -> _ResponseT:
    """Wait for a grpcio future without blocking trio; return its ``result()``.

    A trio cancellation (the caller bounds the wait with a cancel scope) cancels the future and
    propagates. Errors of the future's ``result()`` (``grpc.RpcError`` for a failed call)
    propagate unchanged.
    """
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    # Touched from trio only: once the task was woken or aborted, later wake-ups are ignored.
    waiting = True

    def wake_in_trio() -> None:
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task)

    def on_done(_future: object) -> None:
        # Runs on grpcio's completion thread (or inline when already done): only hand over.
        # A finished trio run has nobody waiting for this answer any more.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(wake_in_trio)

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        nonlocal waiting
        waiting = False
        future.cancel()
        return trio.lowlevel.Abort.SUCCEEDED

    future.add_done_callback(on_done)
    await trio.lowlevel.wait_task_rescheduled(abort)
    return future.result(timeout=0)


async def unary_call(
    method: UnaryMultiCallable[Any, _ResponseT], request: object, *, deadline_sec: float
) -> _ResponseT:
    """Send ``request`` through ``method`` with a gRPC deadline ``deadline_sec`` from now.

    Returns the response message, raises ``CallFailed`` for a non-OK status (an expired
    deadline is ``DEADLINE_EXCEEDED``). A trio cancellation cancels the call on the wire and
    propagates ``trio.Cancelled`` without waiting for grpcio.
    """
    if deadline_sec <= 0:
        raise ValueError(f"a call needs a positive deadline, got {deadline_sec!r}")
    future = method.future(request, timeout=deadline_sec)
    try:
        with trio.fail_after(deadline_sec + DEADLINE_GRACE_SEC):
            return await await_future(future)
    except grpc.RpcError as error:
        raise _status_of(error) from None
    except trio.TooSlowError:
        raise CallFailed(
            StatusCode.DEADLINE_EXCEEDED, "no completion from grpcio by the deadline"
        ) from None
