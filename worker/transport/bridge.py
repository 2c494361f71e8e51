"""The trio bridge for grpcio's synchronous API: unary calls as trio-native awaitables.

grpcio has no trio integration, and a blocking call in a worker thread cannot be interrupted by
a trio cancel scope. Instead every call goes through the call future
(``multi_callable.future(request, timeout=...)``): grpcio completes it on its own completion
thread, whose done-callback only hands control back to trio
(``TrioToken.run_sync_soon``; answers arriving in a burst share one wake-up) - no thread per
call. A trio cancellation cancels the future,
which resets the HTTP/2 stream (the server sees the cancellation), and returns at once; the
result of a cancelled call is discarded.

Every call carries a deadline, which grpcio enforces: the call completes with
``DEADLINE_EXCEEDED`` at the latest then, so the wait is bounded without a trio-side timer (one
per call would cost more than the rest of the bridge's own work).
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Protocol, TypeVar

import grpc
import trio

from worker.errors import StatusCode

__all__ = [
    "CallFailed",
    "UnaryFuture",
    "UnaryMultiCallable",
    "await_future",
    "unary_call",
]

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


class _Waiter:
    """One task parked on one future; ``wake`` (trio thread only) reschedules it at most once."""

    __slots__ = ("task", "waiting")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.waiting = True

    def wake(self) -> None:
        if self.waiting:
            self.waiting = False
            trio.lowlevel.reschedule(self.task)


class _Completions:
    """Hands completed calls from grpcio's threads to trio, one wake-up per burst.

    grpcio calls ``complete`` on its completion thread. The first completion of a burst asks
    trio (``run_sync_soon``) to ``drain``; completions arriving before that drain ran ride along
    with it, so a burst of answers costs one cross-thread wake-up, not one each. The deque and
    the flag are safe to share: appends, pops and attribute stores are atomic operations.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._done: collections.deque[_Waiter] = collections.deque()
        self._drain_scheduled = False

    def complete(self, waiter: _Waiter) -> None:
        self._done.append(waiter)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            # A finished trio run has nobody waiting for these answers any more.
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:
        # Cleared before draining: a completion appended from now on is either drained by
        # this loop or schedules the next drain itself.
        self._drain_scheduled = False
        while self._done:
            self._done.popleft().wake()


_COMPLETIONS: trio.lowlevel.RunVar[_Completions] = trio.lowlevel.RunVar("worker_grpc_completions")


def _completions() -> _Completions:
    try:
        return _COMPLETIONS.get()
    except LookupError:
        completions = _Completions(trio.lowlevel.current_trio_token())
        _COMPLETIONS.set(completions)
        return completions


async def await_future(future: UnaryFuture[_ResponseT]) -> _ResponseT:
    """Wait for a grpcio future without blocking trio; return its ``result()``.

    A trio cancellation (the caller bounds the wait with a cancel scope) cancels the future and
    propagates. Errors of the future's ``result()`` (``grpc.RpcError`` for a failed call)
    propagate unchanged.
    """
    completions = _completions()
    waiter = _Waiter(trio.lowlevel.current_task())

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        waiter.waiting = False  # a completion that still arrives is ignored
        future.cancel()
        return trio.lowlevel.Abort.SUCCEEDED

    # Runs on grpcio's completion thread (or at once when already done): only hands over.
    future.add_done_callback(lambda _future: completions.complete(waiter))
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
    # The wait needs no trio-side timer: grpcio completes every call by its deadline (with
    # DEADLINE_EXCEEDED), and closing the channel completes every pending call (CANCELLED).
    future = method.future(request, timeout=deadline_sec)
    try:
        return await await_future(future)
    except grpc.RpcError as error:
        raise _status_of(error) from None
