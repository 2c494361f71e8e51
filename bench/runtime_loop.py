"""Runtime overhead per assignment: the whole main loop on in-process fakes (real clock).

``python -m bench.runtime_loop [--assignments N] [--repeat R]`` (or ``python -m bench
runtime_loop``) pushes N assignments through poll → register → execute → report → ack with
zero-latency fakes and prints a markdown table of the loop's own cost (what remains once the
network and the executor take no time). Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Sequence

import trio

from worker.logging_setup import logging_configured
from worker.model import (
    AssignmentId,
    ExecutionContext,
    JobId,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    TaskAssignment,
    TaskId,
    TaskInstanceId,
    TdlContext,
    TimeoutPolicy,
)
from worker.runtime import RuntimeSettings, WorkerRuntime
from worker.testing import (
    Assign,
    FakeLiveness,
    FakePool,
    FakeScheduler,
    FakeStorage,
    Journal,
)


async def _one_run(assignments: int) -> float:
    journal = Journal()
    scheduler, storage = FakeScheduler(journal), FakeStorage(journal)
    liveness, pool = FakeLiveness(journal, em_id=1), FakePool(journal)
    for n in range(assignments):
        task = TaskAssignment(
            AssignmentId(n), ResourceGroupId(1), JobId(1), TaskId.of_index(n), SessionId(1)
        )
        scheduler.push(Assign(SchedulerAssignment(task, SchedulerId(1))))
        storage.push_register(
            ExecutionContext(
                TaskInstanceId(n + 1),
                TdlContext("m", "f"),
                TimeoutPolicy(1000, 2000),
                b"\x00\x00\x00\x00",
            )
        )
    settings = RuntimeSettings(1.0, 1.0, 1000)
    runtime = WorkerRuntime(
        settings,
        scheduler=scheduler,
        storage=storage,
        liveness=liveness,
        open_executor=pool,
        random=random.Random(0),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        started = time.perf_counter()
        await storage.wait_for_reports(assignments, 600)
        elapsed = time.perf_counter() - started
        runtime.request_stop()
    return elapsed


def main(argv: Sequence[str]) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_loop")
    parser.add_argument("--assignments", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(list(argv))
    # At the default level (INFO), through the worker's own console formatter, into /dev/null:
    # the lines a user's worker writes for every task are part of the loop's cost.
    with (
        open(os.devnull, "w", encoding="utf-8") as sink,
        logging_configured("console", "info", sink),
    ):
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
