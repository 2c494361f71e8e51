"""Runtime overhead per assignment: the whole main loop on bare in-process ports (real clock).

``python -m bench.runtime_loop [--assignments N] [--repeat R]`` (or ``python -m bench
runtime_loop``) pushes N assignments through poll → register → execute → report → ack and prints
a markdown table of the loop's own cost: what remains once the network and the executor take no
time. The ports answer from lists built before the clock starts, after one trio checkpoint each
(a real call suspends at least once) and record nothing: the test fakes (``worker.testing``)
journal every call for the tests' oracles, and that bookkeeping is not the worker's cost.
Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from worker.core.events import (
    Booted,
    HeartbeatsStarted,
    OutcomeArrived,
    PollAnswered,
    ReportSettled,
    TaskRegistered,
    WorkerRegistered,
)
from worker.core.worker_state import WorkerCore
from worker.logging_setup import logging_configured
from worker.model import (
    AssignmentId,
    ExecutionContext,
    ExecutionManagerId,
    ExecutionRequest,
    FailureReport,
    JobId,
    Outcome,
    Registration,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    Success,
    SuccessReport,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
    TdlContext,
    TimeoutPolicy,
)
from worker.runtime import RuntimeSettings, WorkerRuntime

_SESSION = SessionId(1)
_NO_OUTPUTS = b"\x00\x00\x00\x00"
_SUCCESS: Outcome = Success(_NO_OUTPUTS)
_REQUEST = ExecutionRequest(
    JobId(1), TaskId.of_index(0), TaskInstanceId(1), ResourceGroupId(1), "m", "f", b"", 2000
)
_REPORT = SuccessReport(
    JobId(1), TaskId.of_index(0), TaskInstanceId(1), ExecutionManagerId(1), _SESSION, _NO_OUTPUTS
)


class BareScheduler:
    """The first ``assignments`` polls each hand out one assignment; later polls wait (as an
    empty long poll does) until the runtime cancels them."""

    def __init__(self, assignments: int) -> None:
        self.assignments = [
            SchedulerAssignment(
                TaskAssignment(
                    AssignmentId(n), ResourceGroupId(1), JobId(1), TaskId.of_index(n), _SESSION
                ),
                SchedulerId(1),
            )
            for n in range(assignments)
        ]
        self._polled = 0
        self.first_poll = trio.Event()

    async def next_task(
        self,
        em_id: ExecutionManagerId,
        prev_assignment: TaskAssignmentRecord | None,
        wait_time_ms: int,
    ) -> SchedulerAssignment | None:
        self.first_poll.set()
        await trio.lowlevel.checkpoint()
        if self._polled == len(self.assignments):
            await trio.sleep_forever()
        self._polled += 1
        return self.assignments[self._polled - 1]

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        await trio.lowlevel.checkpoint()

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        await trio.lowlevel.checkpoint()


class BareStorage:
    """Task-instance and liveness services; ``all_reported`` is set by the last report."""

    def __init__(self, assignments: int) -> None:
        self.contexts = [
            ExecutionContext(
                TaskInstanceId(n + 1), TdlContext("m", "f"), TimeoutPolicy(1000, 2000), _NO_OUTPUTS
            )
            for n in range(assignments)
        ]
        self._registered = 0
        self._reported = 0
        self.all_reported = trio.Event()

    async def register_task_instance(
        self, job_id: JobId, task_id: TaskId, em_id: ExecutionManagerId, session_id: SessionId
    ) -> ExecutionContext:
        await trio.lowlevel.checkpoint()
        self._registered += 1
        return self.contexts[self._registered - 1]

    async def report_task_success(self, report: SuccessReport) -> None:
        await self._report()

    async def report_task_failure(self, report: FailureReport) -> None:
        await self._report()

    async def _report(self) -> None:
        await trio.lowlevel.checkpoint()
        self._reported += 1
        if self._reported == len(self.contexts):
            self.all_reported.set()

    async def register(self, ip_address: str) -> Registration:
        await trio.lowlevel.checkpoint()
        return Registration(ExecutionManagerId(1), _SESSION)

    async def heartbeat(self, em_id: ExecutionManagerId) -> SessionId:
        await trio.lowlevel.checkpoint()
        return _SESSION


class BarePool:
    """An executor pool whose every execution succeeds at once."""

    def __call__(self) -> AbstractAsyncContextManager[BarePool]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[BarePool]:
        async with trio.open_nursery():  # as the real pool's context does
            yield self

    async def execute(self, request: ExecutionRequest) -> Outcome:
        await trio.lowlevel.checkpoint()
        return _SUCCESS


async def _one_run(assignments: int) -> float:
    """Seconds from the first poll to the last report of ``assignments`` assignments."""
    scheduler, storage = BareScheduler(assignments), BareStorage(assignments)
    runtime = WorkerRuntime(
        RuntimeSettings(1.0, 1.0, 1000),
        scheduler=scheduler,
        storage=storage,
        liveness=storage,
        open_executor=BarePool(),
        random=random.Random(0),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        await scheduler.first_poll.wait()
        started = time.perf_counter()
        with trio.fail_after(600):
            await storage.all_reported.wait()
        elapsed = time.perf_counter() - started
        runtime.request_stop()
    return elapsed


def _core_alone(assignments: int) -> float:
    """Seconds the core takes for the same assignments, events in and actions out, no trio."""
    core = WorkerCore(RuntimeSettings(1.0, 1.0, 1000), random=random.Random(0))
    scheduler, storage = BareScheduler(assignments), BareStorage(assignments)
    now = time.monotonic
    for event in (Booted(), WorkerRegistered(Registration(ExecutionManagerId(1), _SESSION))):
        core.handle(event, now())
    core.handle(HeartbeatsStarted(), now())
    started = time.perf_counter()
    for assignment, context in zip(scheduler.assignments, storage.contexts, strict=True):
        core.handle(PollAnswered(0, assignment), now())
        core.handle(TaskRegistered(0, context), now())
        core.handle(OutcomeArrived(0, _SUCCESS), now())
        core.note(assignment.key, "reported", "success", now())  # what the reporter adds
        core.handle(ReportSettled(assignment.key), now())
    return time.perf_counter() - started


def _lines_alone(assignments: int) -> float:
    """Seconds the two per-task INFO lines take alone, with the fields the core gives them."""
    core_logger = logging.getLogger("worker.core")
    started = time.perf_counter()
    for n in range(assignments):
        fields: dict[str, object] = {
            "task": "m.f",
            "job_id": 1,
            "task_id": f"Index({n})",
            "task_instance_id": n + 1,
            "slot": 0,
        }
        core_logger.info("task started", extra={"fields": fields})
        fields = {**fields, "result": "succeeded", "duration_sec": 0.000123}
        core_logger.info("task finished", extra={"fields": fields})
    return time.perf_counter() - started


async def _calls_alone(assignments: int) -> float:
    """Seconds trio takes for the same calls and report tasks with no core and no logging: the
    shell's floor on these ports (each call one checkpoint, each report its own task)."""
    scheduler, storage, pool = BareScheduler(assignments), BareStorage(assignments), BarePool()
    em_id = ExecutionManagerId(1)
    started = time.perf_counter()
    async with trio.open_nursery() as reports:
        for _ in range(assignments):
            assignment = await scheduler.next_task(em_id, None, 1000)
            assert assignment is not None
            task = assignment.assignment
            await storage.register_task_instance(task.job_id, task.task_id, em_id, _SESSION)
            await pool.execute(_REQUEST)
            reports.start_soon(storage.report_task_success, _REPORT)
        await storage.all_reported.wait()
    return time.perf_counter() - started


def _repeat(run: Callable[[], float], times: int) -> list[float]:
    """``times`` results of ``run``, each started with no garbage left by the one before."""
    results = []
    for _ in range(times):
        gc.collect()
        results.append(run())
    return results


def main(argv: Sequence[str]) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_loop")
    parser.add_argument("--assignments", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(list(argv))
    # At the default level (INFO), through the worker's own console formatter, into /dev/null,
    # line-buffered as stderr is: the lines a user's worker writes for every task are part of
    # the loop's cost.
    with (
        open(os.devnull, "w", buffering=1, encoding="utf-8") as sink,
        logging_configured("console", "info", sink),
    ):
        trio.run(_one_run, min(args.assignments, 300))  # warm-up: imports, first-call caches
        runs = _repeat(lambda: trio.run(_one_run, args.assignments), args.repeat)
        core_runs = _repeat(lambda: _core_alone(args.assignments), args.repeat)
        line_runs = _repeat(lambda: _lines_alone(args.assignments), args.repeat)
        with logging_configured("console", "warning", sink):
            quiet_runs = _repeat(lambda: trio.run(_one_run, args.assignments), args.repeat)
            quiet_core_runs = _repeat(lambda: _core_alone(args.assignments), args.repeat)
        call_runs = _repeat(lambda: trio.run(_calls_alone, args.assignments), args.repeat)
    per_assignment_us = [run / args.assignments * 1e6 for run in runs]
    print("| metric | value |")
    print("|---|---|")
    print(f"| assignments per run | {args.assignments} |")
    print(f"| runs | {args.repeat} |")
    median_us = statistics.median(per_assignment_us)
    print(
        f"| median µs per assignment (poll → register → execute → report → ack) | {median_us:.1f} |"
    )
    print(f"| best µs per assignment | {min(per_assignment_us):.1f} |")
    print(f"| median assignments per second | {args.assignments / statistics.median(runs):.0f} |")
    # Where the time goes: the same work with parts taken away (medians, µs per assignment).
    for label, parts in (
        ("the same at WARNING (no per-task line)", quiet_runs),
        ("the core alone, INFO (events in, actions out; no trio)", core_runs),
        ("the core alone, WARNING", quiet_core_runs),
        ("the two per-task INFO lines alone", line_runs),
        ("trio alone: the same calls and report tasks, no core, no logging", call_runs),
    ):
        print(f"| {label} | {statistics.median(parts) / args.assignments * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
