"""Script items and the FIFO script queue shared by every fake (scenarios.md section 1)."""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

import attrs
import trio

from worker.errors import StatusCode
from worker.model import SchedulerAssignment

__all__ = [
    "EMPTY",
    "Always",
    "Assign",
    "Block",
    "Empty",
    "Error",
    "Hang",
    "Hold",
    "Malformed",
    "MalformedItem",
    "NoTask",
    "NoTaskItem",
    "Script",
]

T = TypeVar("T")


@attrs.frozen(slots=True)
class Assign:
    """Scheduler reply: this assignment."""

    assignment: SchedulerAssignment


class NoTaskItem:
    """Scheduler reply: OK with ``no_task``."""

    def __repr__(self) -> str:
        return "NoTask"


class MalformedItem:
    """An OK reply that breaks the contract (unset ``result``, incomplete context, ...)."""

    def __repr__(self) -> str:
        return "Malformed"


NoTask: Final = NoTaskItem()
Malformed: Final = MalformedItem()


@attrs.frozen(slots=True)
class Error:
    """The call fails with this gRPC status code (raised as ``error_for(rpc, code)``)."""

    code: StatusCode


@attrs.frozen(slots=True)
class Hang:
    """Block ``seconds``, then take the next item; ``None`` blocks until cancelled."""

    seconds: float | None


#: Block until cancelled (``Hang(None)``).
Block: Final = Hang(None)


class HoldItem:
    """FakePool: block until ``FakePool.release()``, then take the next item (default success)."""

    def __repr__(self) -> str:
        return "Hold"


Hold: Final = HoldItem()


@attrs.frozen(slots=True)
class Always(Generic[T]):
    """Answer every call with ``item`` until ``trio.current_time()`` reaches ``until``."""

    item: T
    until: float | None = None


class Empty:
    """What :meth:`Script.take` returns when nothing is queued and it must not wait."""

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY: Final = Empty()


class Script(Generic[T]):
    """A FIFO of items; ``Always`` and ``Hang`` are interpreted here, the rest by the fake."""

    def __init__(self, items: tuple[T | Always[T] | Hang, ...] = ()) -> None:
        self._items: deque[T | Always[T] | Hang] = deque(items)
        self._pushed = trio.Event()

    def push(self, *items: T | Always[T] | Hang) -> None:
        """Append items and wake callers blocked on an empty queue."""
        self._items.extend(items)
        self._pushed.set()
        self._pushed = trio.Event()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> tuple[T | Always[T] | Hang, ...]:
        """What is still queued."""
        return tuple(self._items)

    async def take(self, *, wait_when_empty: bool) -> T | Empty:
        """The answer for one call: blocks on ``Hang`` and, if asked, on an empty queue.

        Every call is a checkpoint, as a real RPC is: it may be cancelled before it is answered.
        """
        await trio.lowlevel.checkpoint()
        while True:
            if not self._items:
                if not wait_when_empty:
                    return EMPTY
                await self._pushed.wait()
                continue
            head = self._items[0]
            if isinstance(head, Always):
                if head.until is None or trio.current_time() < head.until:
                    return head.item
                self._items.popleft()
                continue
            self._items.popleft()
            if isinstance(head, Hang):
                if head.seconds is None:
                    await trio.sleep_forever()
                else:
                    await trio.sleep(head.seconds)
                continue
            return head
