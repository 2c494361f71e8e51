"""FakeScheduler: a scripted ``SchedulerClient`` that tracks outstanding acknowledgements."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from worker.errors import ProtocolError, Rpc, StatusCode, error_for
from worker.model import ExecutionManagerId, SchedulerAssignment, TaskAssignmentRecord
from worker.testing.journal import Journal, Phase
from worker.testing.script import (
    EMPTY,
    Always,
    Assign,
    Error,
    Hang,
    MalformedItem,
    NoTaskItem,
    Script,
)

__all__ = ["FakeScheduler", "NextTaskCall", "SchedulerItem"]

SchedulerItem = Assign | NoTaskItem | MalformedItem | Error
OkOrError = Error | None


@attrs.define
class NextTaskCall:
    """One ``next_task`` call; ``outcome`` is filled in when it ends.

    ``outcome``: ``"assignment"``, ``"no_task"``, ``"malformed"``, an error code name, or
    ``"cancelled"`` (``None`` while in flight). ``prev`` is ``None`` when the field was unset.
    """

    seq: int
    em_id: ExecutionManagerId
    prev: TaskAssignmentRecord | None
    wait_time_ms: int
    started: float
    outcome: str | None = None
    ended: float | None = None
    assignment: SchedulerAssignment | None = None

    @property
    def ok(self) -> bool:
        """Whether the call completed OK (so the record it carried was delivered)."""
        return self.outcome in ("assignment", "no_task", "malformed")


class FakeScheduler:
    """Scripted scheduler (scenarios.md section 1). An empty ``next_task`` script blocks."""

    def __init__(self, journal: Journal, *, apply_acks_on_error: bool = True) -> None:
        self.journal = journal
        self.apply_acks_on_error = apply_acks_on_error
        self.script: Script[SchedulerItem] = Script()
        self.heartbeat_script: Script[OkOrError] = Script()
        self.shutdown_script: Script[OkOrError] = Script()
        self.calls: list[NextTaskCall] = []
        self.heartbeat_times: list[float] = []
        self.shutdown_calls: list[list[TaskAssignmentRecord]] = []
        self.outstanding: set[TaskAssignmentRecord] = set()
        self.handed_out: list[TaskAssignmentRecord] = []
        self._handed_out_set: set[TaskAssignmentRecord] = set()
        self.duplicate_acks: list[TaskAssignmentRecord] = []
        self.unknown_acks: list[TaskAssignmentRecord] = []

    @property
    def next_task_count(self) -> int:
        """How many ``next_task`` calls started."""
        return len(self.calls)

    @property
    def heartbeat_count(self) -> int:
        """How many scheduler heartbeats started."""
        return len(self.heartbeat_times)

    def push(self, *items: SchedulerItem | Always[SchedulerItem] | Hang) -> None:
        """Append to the ``next_task`` script."""
        self.script.push(*items)

    def _apply_ack(self, record: TaskAssignmentRecord) -> None:
        if record in self.outstanding:
            self.outstanding.remove(record)
        elif record in self._handed_out_set:
            self.duplicate_acks.append(record)
        else:
            self.unknown_acks.append(record)

    async def next_task(
        self,
        em_id: ExecutionManagerId,
        prev_assignment: TaskAssignmentRecord | None,
        wait_time_ms: int,
    ) -> SchedulerAssignment | None:
        """Answer from the script; apply the carried acknowledgement per the outcome."""
        call = NextTaskCall(
            len(self.calls) + 1, em_id, prev_assignment, wait_time_ms, trio.current_time()
        )
        self.calls.append(call)
        args = (em_id, prev_assignment, wait_time_ms)
        self.journal.add("scheduler", "next_task", Phase.START, args)

        def finish(outcome: str, ok: bool) -> None:
            call.outcome = outcome
            call.ended = trio.current_time()
            if prev_assignment is not None and (ok or self.apply_acks_on_error):
                self._apply_ack(prev_assignment)
            self.journal.add("scheduler", "next_task", Phase.END, args, outcome)

        try:
            item = await self.script.take(wait_when_empty=True)
        except trio.Cancelled:
            finish("cancelled", ok=False)
            raise
        assert item is not EMPTY
        if isinstance(item, Assign):
            record = item.assignment.record
            self.outstanding.add(record)
            self.handed_out.append(record)
            self._handed_out_set.add(record)
            call.assignment = item.assignment
            finish("assignment", ok=True)
            return item.assignment
        if isinstance(item, NoTaskItem):
            finish("no_task", ok=True)
            return None
        if isinstance(item, MalformedItem):
            finish("malformed", ok=True)
            raise ProtocolError(Rpc.NEXT_TASK, "result is unset")
        assert isinstance(item, Error)
        finish(item.code.name, ok=False)
        raise error_for(Rpc.NEXT_TASK, item.code)

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        """Count the call; answer from ``heartbeat_script`` (default OK)."""
        self.heartbeat_times.append(trio.current_time())
        await _answer_void(
            self.journal, "heartbeat", (em_id,), self.heartbeat_script, Rpc.SCHEDULER_HEARTBEAT
        )

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        """Record the call and remove its records; answer from ``shutdown_script``."""
        records = list(prev_assignments)
        self.shutdown_calls.append(records)
        for record in records:
            self._apply_ack(record)
        await _answer_void(
            self.journal, "shutdown", (em_id, tuple(records)), self.shutdown_script, Rpc.SHUTDOWN
        )


async def _answer_void(
    journal: Journal, method: str, args: tuple[object, ...], script: Script[OkOrError], rpc: Rpc
) -> None:
    journal.add("scheduler", method, Phase.START, args)
    try:
        item = await script.take(wait_when_empty=False)
    except trio.Cancelled:
        journal.add("scheduler", method, Phase.END, args, "cancelled")
        raise
    if isinstance(item, Error):
        journal.add("scheduler", method, Phase.END, args, item.code.name)
        raise error_for(rpc, item.code)
    journal.add("scheduler", method, Phase.END, args, StatusCode.OK.name)
