"""FakePool: a scripted ``ExecutorFactory`` + ``Executor`` (no processes at all)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from worker.errors import ExecutorPoolError, PoolClosed
from worker.model import ExecutionRequest, Outcome, Success
from worker.testing.journal import Journal, Phase
from worker.testing.script import EMPTY, Always, Hang, HoldItem, Script

__all__ = ["DEFAULT_OUTCOME", "FakePool", "PoolItem", "Raise"]

#: What ``execute`` returns when nothing is scripted: a success with zero payloads.
DEFAULT_OUTCOME: Outcome = Success(b"\x00\x00\x00\x00")


@attrs.frozen(slots=True)
class Raise:
    """``execute`` raises this pool error (e.g. ``PoolBroken``)."""

    error: ExecutorPoolError


PoolItem = Success | Outcome | HoldItem | Raise


@attrs.define
class Execution:
    """One ``execute`` call; ``outcome`` is the outcome's class name, an error, or cancelled."""

    request: ExecutionRequest
    started: float
    outcome: str | None = None
    ended: float | None = None


class FakePool:
    """Scripted executor pool (scenarios.md section 1); call it to open it."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.script: Script[PoolItem] = Script()
        self.raise_on_open: ExecutorPoolError | None = None
        self.executions: list[Execution] = []
        self.holds_cancelled = 0
        self.opened = False
        self.closed = False
        self._releases = 0
        self._holds = 0
        self._released = trio.Event()

    @property
    def requests(self) -> list[ExecutionRequest]:
        """The request of every ``execute`` call, in call order."""
        return [execution.request for execution in self.executions]

    def push(self, *items: PoolItem | Always[PoolItem] | Hang) -> None:
        """Append outcomes, ``Hold``, ``Hang(t)`` or ``Raise(error)`` to the script."""
        self.script.push(*items)

    def raise_on_execute(self, error: ExecutorPoolError) -> None:
        """The next ``execute`` raises ``error``."""
        self.script.push(Raise(error))

    def release(self) -> None:
        """Let one ``Hold`` (the oldest not yet released, even a future one) return."""
        self._releases += 1
        self._released.set()
        self._released = trio.Event()

    def __call__(self) -> AbstractAsyncContextManager[FakePool]:
        """Open the pool (``ExecutorFactory``)."""
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[FakePool]:
        self.journal.add("pool", "open", Phase.START, ())
        if self.raise_on_open is not None:
            self.journal.add("pool", "open", Phase.END, (), repr(self.raise_on_open))
            raise self.raise_on_open
        self.opened = True
        self.journal.add("pool", "open", Phase.END, (), "ok")
        try:
            # Like the real pool, the open context holds a nursery: a caller that leaves a cancel
            # scope while this context is still open corrupts trio's scope stack and fails here.
            async with trio.open_nursery():
                yield self
        finally:
            self.closed = True
            self.journal.add("pool", "close", Phase.START, ())

    async def execute(self, request: ExecutionRequest) -> Outcome:
        """Record the request; return the next scripted outcome (``Hold`` blocks)."""
        if self.closed:
            raise PoolClosed("execute after close")
        execution = Execution(request, trio.current_time())
        self.executions.append(execution)
        self.journal.add("pool", "execute", Phase.START, (request,))
        try:
            while True:
                item = await self.script.take(wait_when_empty=False)
                if not isinstance(item, HoldItem):
                    break
                self._holds += 1
                my_hold = self._holds
                try:
                    while self._releases < my_hold:
                        await self._released.wait()
                except trio.Cancelled:
                    self.holds_cancelled += 1
                    raise
        except trio.Cancelled:
            execution.outcome, execution.ended = "cancelled", trio.current_time()
            self.journal.add("pool", "execute", Phase.END, (request,), "cancelled")
            raise
        execution.ended = trio.current_time()
        if isinstance(item, Raise):
            execution.outcome = type(item.error).__name__
            self.journal.add("pool", "execute", Phase.END, (request,), execution.outcome)
            raise item.error
        outcome: Outcome = DEFAULT_OUTCOME if item is EMPTY else item  # type: ignore[assignment]
        execution.outcome = type(outcome).__name__
        self.journal.add("pool", "execute", Phase.END, (request,), outcome)
        return outcome
