"""Executor round trip on a warm executor, start-up time and idle memory (executor.md §9).

``python -m bench.executor_roundtrip [--calls N] [--warmup N] [--starts N]`` (or
``python -m bench executor_roundtrip`` with the defaults) prints a markdown
table: parent-side wall time per ``execute`` (from the call to the returned outcome, log
forwarding idle) and the executor's own ``elapsed_us``, for a trivial task (no arguments, returns
``None``) and for Spider's workload (100 path-like strings echoed, with and without Spider's
50 us sleep); then spawn-to-ready time and idle resident memory. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from worker.executor.logs import ExecutorLogLine
from worker.executor.pool import ExecutorPool, open_pool
from worker.executor.settings import PoolSettings
from worker.executor.wire import encode_values
from worker.model import (
    ExecutionRequest,
    JobId,
    ResourceGroupId,
    Success,
    TaskId,
    TaskInstanceId,
)

TASKS = '''\
"""Benchmark tasks."""
import time


def trivial():
    return None


def echo_strings(paths):
    return paths


def echo_strings_after_sleep(paths):
    time.sleep(50e-6)
    return paths
'''

PATHS = [
    f"/data/spider/job-0007/input/part-{i:05d}/chunk-{i * 7919 % 100000:05d}.bin"
    for i in range(100)
]


def _request(func: str, io: bytes) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=JobId(7),
        task_id=TaskId.of_index(0),
        task_instance_id=TaskInstanceId(1),
        resource_group_id=ResourceGroupId(9),
        package="bench_tasks",
        task_func=func,
        serialized_task_io=io,
        hard_timeout_ms=60_000,
    )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _row(name: str, wall_us: list[float], elapsed_us: list[float]) -> str:
    wall = sorted(wall_us)
    inner = sorted(elapsed_us)
    return (
        f"| {name} | {len(wall)} | {statistics.fmean(wall):.0f} | {_percentile(wall, 0.5):.0f} | "
        f"{_percentile(wall, 0.95):.0f} | {_percentile(wall, 0.99):.0f} | {wall[-1]:.0f} | "
        f"{statistics.fmean(inner):.0f} | {_percentile(inner, 0.5):.0f} |"
    )


async def _measure(
    pool: ExecutorPool, request: ExecutionRequest, warmup: int, calls: int
) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        await pool.execute(request)
    wall: list[float] = []
    inner: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        outcome = await pool.execute(request)
        wall.append((clock() - started) / 1000)
        assert isinstance(outcome, Success), outcome
        inner.append(outcome.elapsed_us)
    return wall, inner


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _discard(_line: ExecutorLogLine) -> None:
    """Log lines are not part of the measurement (there are none while idle)."""


async def _run(calls: int, warmup: int, starts: int) -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        package_dir = Path(directory)
        (package_dir / "bench_tasks.py").write_text(TASKS)
        settings = PoolSettings(package_dir=package_dir)
        rows = [
            "| workload | n | avg us | p50 us | p95 us | p99 us | max us | "
            "executor avg us | executor p50 us |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        async with open_pool(settings, log_sink=_discard) as pool:
            workloads = [
                ("trivial task (no args, returns None)", _request("trivial", b"\0\0\0\0")),
                (
                    "100 path-like strings echoed",
                    _request("echo_strings", encode_values([PATHS])),
                ),
                (
                    "100 strings echoed after a 50 us sleep (Spider's sample)",
                    _request("echo_strings_after_sleep", encode_values([PATHS])),
                ),
            ]
            for name, request in workloads:
                wall, inner = await _measure(pool, request, warmup, calls)
                rows.append(_row(name, wall, inner))
            pid = pool.executor_pids[0]
            assert pid is not None
            await trio.sleep(0.5)
            rss = _rss_kib(pid)
        start_ms: list[float] = []
        for _ in range(starts):
            started = time.perf_counter()
            async with open_pool(settings, log_sink=_discard) as pool:
                start_ms.append((time.perf_counter() - started) * 1000)
        start_ms.sort()
        rows.append("")
        rows.append("| executor | value |")
        rows.append("|---|---|")
        p50_start = _percentile(start_ms, 0.5)
        rows.append(
            f"| spawn to ready (open_pool, {starts} runs) | p50 {p50_start:.1f} ms, "
            f"max {start_ms[-1]:.1f} ms |"
        )
        rows.append(f"| idle resident memory (VmRSS) | {rss / 1024:.1f} MiB |")
        return rows


def main(argv: list[str]) -> int:
    """Run the benchmark and print the markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench executor_roundtrip")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--starts", type=int, default=20)
    options = parser.parse_args(argv)
    for row in trio.run(_run, options.calls, options.warmup, options.starts):
        print(row)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
