"""FakeStorage: a scripted ``StorageClient`` recording registrations and report attempts."""

from __future__ import annotations

import math
from typing import Generic, TypeVar

import attrs
import trio

from worker.errors import MalformedContextError, Rpc, StatusCode, error_for
from worker.model import (
    ExecutionContext,
    ExecutionManagerId,
    FailureReport,
    JobId,
    SessionId,
    SuccessReport,
    TaskId,
)
from worker.testing.journal import Journal, Phase
from worker.testing.script import EMPTY, Always, Error, Hang, MalformedItem, Script

__all__ = ["FakeStorage", "RegisterCall", "RegisterItem", "ReportAttempt"]

R = TypeVar("R", SuccessReport, FailureReport)
RegisterItem = ExecutionContext | Error | MalformedItem
ReportItem = Error | None


@attrs.frozen(slots=True)
class RegisterCall:
    """One ``register_task_instance`` call, recorded when it starts."""

    job_id: JobId
    task_id: TaskId
    em_id: ExecutionManagerId
    session_id: SessionId
    time: float


@attrs.define
class ReportAttempt(Generic[R]):
    """One report attempt; ``attempt`` counts attempts for the same task instance from 1."""

    report: R
    attempt: int
    started: float
    outcome: str | None = None
    ended: float | None = None


class FakeStorage:
    """Scripted storage (scenarios.md section 1)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.register_script: Script[RegisterItem] = Script()
        self.register_scripts: dict[TaskId, Script[RegisterItem]] = {}
        self.success_script: Script[ReportItem] = Script()
        self.failure_script: Script[ReportItem] = Script()
        self.register_calls: list[RegisterCall] = []
        self.register_cancelled = 0
        self.exhausted = False
        self.success_reports: list[ReportAttempt[SuccessReport]] = []
        self.failure_reports: list[ReportAttempt[FailureReport]] = []
        self._blocked = False
        self._reports_changed = trio.Event()
        self._attempts_per_instance: dict[tuple[str, tuple[object, ...]], int] = {}

    def push_register(self, *items: RegisterItem | Always[RegisterItem] | Hang) -> None:
        """Append to the shared register script."""
        self.register_script.push(*items)

    def script_register(
        self, task_id: TaskId, items: tuple[RegisterItem | Always[RegisterItem] | Hang, ...]
    ) -> None:
        """Give the calls for ``task_id`` their own queue, used instead of the shared one."""
        self.register_scripts[task_id] = Script(items)

    def block_register(self) -> None:
        """From now on every register call blocks until cancelled."""
        self._blocked = True

    async def register_task_instance(
        self,
        job_id: JobId,
        task_id: TaskId,
        em_id: ExecutionManagerId,
        session_id: SessionId,
    ) -> ExecutionContext:
        """Record the call first, then answer from the script (or block)."""
        self.register_calls.append(
            RegisterCall(job_id, task_id, em_id, session_id, trio.current_time())
        )
        args = (job_id, task_id, em_id, session_id)
        self.journal.add("storage", "register_task_instance", Phase.START, args)
        script = self.register_scripts.get(task_id, self.register_script)
        try:
            if self._blocked:
                await trio.sleep_forever()
            item = await script.take(wait_when_empty=False)
            if item is EMPTY:
                self.exhausted = True
                item = await script.take(wait_when_empty=True)
        except trio.Cancelled:
            self.register_cancelled += 1
            self.journal.add("storage", "register_task_instance", Phase.END, args, "cancelled")
            raise
        if isinstance(item, Error):
            self.journal.add("storage", "register_task_instance", Phase.END, args, item.code.name)
            raise error_for(Rpc.REGISTER_TASK_INSTANCE, item.code)
        if isinstance(item, MalformedItem):
            self.journal.add("storage", "register_task_instance", Phase.END, args, "malformed")
            raise MalformedContextError(Rpc.REGISTER_TASK_INSTANCE, "execution_context is unset")
        assert isinstance(item, ExecutionContext)
        self.journal.add("storage", "register_task_instance", Phase.END, args, item)
        return item

    async def report_task_success(self, report: SuccessReport) -> None:
        """Record the attempt; answer from ``success_script`` (default OK)."""
        await self._report(
            "report_task_success",
            report,
            self.success_reports,
            self.success_script,
            Rpc.REPORT_TASK_SUCCESS,
        )

    async def report_task_failure(self, report: FailureReport) -> None:
        """Record the attempt; answer from ``failure_script`` (default OK)."""
        await self._report(
            "report_task_failure",
            report,
            self.failure_reports,
            self.failure_script,
            Rpc.REPORT_TASK_FAILURE,
        )

    async def _report(
        self,
        method: str,
        report: R,
        attempts: list[ReportAttempt[R]],
        script: Script[ReportItem],
        rpc: Rpc,
    ) -> None:
        key = (method, _instance(report))
        number = self._attempts_per_instance.get(key, 0) + 1
        self._attempts_per_instance[key] = number
        attempt = ReportAttempt(report, number, trio.current_time())
        attempts.append(attempt)
        self._reports_changed.set()
        self._reports_changed = trio.Event()
        self.journal.add("storage", method, Phase.START, (report,))
        try:
            item = await script.take(wait_when_empty=False)
        except trio.Cancelled:
            attempt.outcome, attempt.ended = "cancelled", trio.current_time()
            self.journal.add("storage", method, Phase.END, (report,), "cancelled")
            raise
        code = item.code if isinstance(item, Error) else StatusCode.OK
        attempt.outcome, attempt.ended = code.name, trio.current_time()
        self.journal.add("storage", method, Phase.END, (report,), code.name)
        if isinstance(item, Error):
            raise error_for(rpc, item.code)

    @property
    def reports(self) -> list[ReportAttempt[SuccessReport] | ReportAttempt[FailureReport]]:
        """Every report attempt of either kind, in start order."""
        both: list[ReportAttempt[SuccessReport] | ReportAttempt[FailureReport]] = [
            *self.success_reports,
            *self.failure_reports,
        ]
        return sorted(both, key=lambda a: a.started)

    async def wait_for_reports(self, n: int, timeout: float = math.inf) -> None:  # noqa: ASYNC109 (scenarios.md API)
        """Wait until at least ``n`` report attempts (of either kind) started."""
        with trio.fail_after(timeout):
            while len(self.success_reports) + len(self.failure_reports) < n:
                await self._reports_changed.wait()


def _instance(report: SuccessReport | FailureReport) -> tuple[object, ...]:
    return (report.job_id, report.task_id, report.task_instance_id)
