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
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

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


class BareScheduler:
    """The first ``assignments`` polls each hand out one assignment; later polls wait (as an
    empty long poll does) until the runtime cancels them."""

    def __init__(self, assignments: int) -> None:
        self._assignments = [
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
        if self._polled == len(self._assignments):
            await trio.sleep_forever()
        self._polled += 1
        return self._assignments[self._polled - 1]

    async def heartbeat(self, em_id: ExecutionManagerId) -> None:
        await trio.lowlevel.checkpoint()

    async def shutdown(
        self, em_id: ExecutionManagerId, prev_assignments: Sequence[TaskAssignmentRecord]
    ) -> None:
        await trio.lowlevel.checkpoint()


class BareStorage:
    """Task-instance and liveness services; ``all_reported`` is set by the last report."""

    def __init__(self, assignments: int) -> None:
        self._contexts = [
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
        return self._contexts[self._registered - 1]

    async def report_task_success(self, report: SuccessReport) -> None:
        await self._report()

    async def report_task_failure(self, report: FailureReport) -> None:
        await self._report()

    async def _report(self) -> None:
        await trio.lowlevel.checkpoint()
        self._reported += 1
        if self._reported == len(self._contexts):
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
        runs = [trio.run(_one_run, args.assignments) for _ in range(args.repeat)]
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
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
