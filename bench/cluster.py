"""Cluster benchmark: throughput, per-task latency breakdown and memory on the local cluster.

``python -m bench cluster`` (or ``main([...])``) runs, on the embedded reference cluster over
loopback with real worker processes, a job of trivial tasks with 1, 2 and 4 workers (``--workers``)
of 1 slot each (``--slots 1,2,4`` runs every worker count with each slot count), and reports:

* throughput (tasks/s) from job start to the job's end;
* a per-task latency breakdown from server-side timestamps of the three RPCs of each task:
  *poll* (time the delivering ``NextTask`` spent in the scheduler), *register* (assignment
  delivered → ``RegisterTaskInstance`` answered: worker turnaround plus the storage call),
  *execute* (registration answered → ``ReportTaskSuccess`` arrived: executor round trip plus
  sending the report), *report* (storage's handling of the report), *storage register* (storage's
  handling of the registration, part of *register*) and *cycle* (one delivery to
  the same worker's next). *next poll - report* is when the next ``NextTask`` reached the
  scheduler relative to the report reaching storage: negative means the report was not on the
  critical path;
* the resident memory (VmRSS) of a worker process and of its idle executor;
* the design's floor: the worker's own bridged ``NextTask`` and ``RegisterTaskInstance`` clients
  against servers that answer at once, plus one executor round trip, per task, in one process.

Prints markdown tables; figures only, never pass/fail.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import logging
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import attrs
import grpc
import trio

from worker.cluster.embedded import ClusterSettings, EmbeddedCluster
from worker.cluster.jobs import JobBuilder
from worker.cluster.processes import WorkerProcess, descendants
from worker.cluster.storage import JobState
from worker.examples import EXAMPLES_DIR

__all__ = ["main"]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@attrs.define
class _Timeline:
    """Server-side timestamps of each task's RPCs (perf_counter seconds)."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    polls: dict[tuple[int, str], tuple[int, float, float]] = attrs.field(factory=dict)
    registers: dict[tuple[int, str], tuple[float, float]] = attrs.field(factory=dict)
    reports: dict[tuple[int, str], tuple[float, float]] = attrs.field(factory=dict)
    poll_starts: dict[int, list[float]] = attrs.field(factory=lambda: defaultdict(list))

    def observe(self, rpc: str, request: Any, response: Any, started: float, done: float) -> None:
        """The cluster's server observer hook."""
        with self.lock:
            if rpc == "NextTask":
                self.poll_starts[request.execution_manager_id].append(started)
                if response.WhichOneof("result") == "assignment":
                    a = response.assignment
                    key = (a.job_id, str(a.task_id).strip())
                    self.polls[key] = (request.execution_manager_id, started, done)
            elif rpc == "RegisterTaskInstance":
                self.registers[(request.job_id, str(request.task_id).strip())] = (started, done)
            elif rpc == "ReportTaskSuccess":
                self.reports[(request.job_id, str(request.task_id).strip())] = (started, done)


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f}" if values else "-"


def _p90_ms(values: list[float]) -> str:
    if len(values) < 10:
        return "-"
    return f"{statistics.quantiles(values, n=10)[-1] * 1000:.2f}"


@attrs.frozen
class _RunResult:
    workers: int
    slots: int
    tasks: int
    seconds: float
    breakdown: dict[str, list[float]]
    worker_rss_mb: float
    executor_rss_mb: float


def _run_cluster(workers: int, slots: int, tasks: int, workdir: Path) -> _RunResult:
    timeline = _Timeline()
    name = f"bench-{workers}x{slots}"
    with EmbeddedCluster(ClusterSettings(database=workdir / f"{name}.db")) as cluster:
        cluster.scheduler_server.hooks.observer = timeline.observe
        cluster.storage_server.hooks.observer = timeline.observe
        config = cluster.worker_config(
            EXAMPLES_DIR,
            poll_wait_ms=1000,
            heartbeat_sec=1.0,
            log_level="warning",
            extra={"slots": slots},
        )
        processes = [WorkerProcess(f"{name}-{i}", config, workdir) for i in range(workers)]
        try:
            # The clock starts once every slot of every worker is blocked in its long poll.
            deadline = time.monotonic() + 60
            while cluster.scheduler.waiting_polls < workers * slots:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{workers} workers of {slots} slots did not all reach their long poll"
                    )
                time.sleep(0.01)
            builder = JobBuilder("bench", package_dir=EXAMPLES_DIR)
            for index in range(tasks):
                builder.task(f"t{index}", "fibonacci_tasks", "fibonacci", [1])
            started = time.monotonic()
            job_id = cluster.submit(builder.build())
            state = cluster.wait_job(job_id, timeout_sec=600, poll_sec=0.01)
            seconds = time.monotonic() - started
            if state is not JobState.SUCCEEDED:
                raise RuntimeError(f"bench job ended {state.name}")
            worker_rss = _rss_mb(processes[0].pid)
            executors = descendants(processes[0].pid)
            executor_rss = max((_rss_mb(pid) for pid in executors), default=float("nan"))
        finally:
            for process in processes:
                process.stop(timeout_sec=30)
                process.close()
    return _RunResult(
        workers, slots, tasks, seconds, _breakdown(timeline), worker_rss, executor_rss
    )


def _breakdown(timeline: _Timeline) -> dict[str, list[float]]:
    parts: dict[str, list[float]] = defaultdict(list)
    by_worker: dict[int, list[float]] = defaultdict(list)
    poll_starts = {em_id: sorted(starts) for em_id, starts in timeline.poll_starts.items()}
    for key, (em_id, poll_start, poll_end) in timeline.polls.items():
        register = timeline.registers.get(key)
        report = timeline.reports.get(key)
        if register is None or report is None:
            continue
        parts["poll"].append(poll_end - poll_start)
        parts["register"].append(register[1] - poll_end)
        parts["execute"].append(report[0] - register[1])
        parts["report"].append(report[1] - report[0])
        parts["storage register"].append(register[1] - register[0])
        by_worker[em_id].append(poll_end)
        # The worker's first NextTask after its registration was answered.
        starts = poll_starts[em_id]
        later = bisect.bisect_right(starts, register[1])
        if later < len(starts):
            parts["next poll - report"].append(starts[later] - report[0])
    for deliveries in by_worker.values():
        deliveries.sort()
        parts["cycle"].extend(b - a for a, b in itertools.pairwise(deliveries))
    return parts


# --- the floor: the worker's own clients against instant servers, plus the executor ----------


def _instant_servers() -> tuple[grpc.Server, int]:
    from worker.transport._generated.common import common_pb2
    from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
    from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc

    assignment = scheduler_pb2.NextTaskResponse(
        assignment=scheduler_pb2.SchedulerAssignment(
            id=1, job_id=1, task_id=common_pb2.TaskId(index=0), scheduler_id=1, session_id=1
        )
    )
    context = storage_pb2.RegisterTaskInstanceResponse(
        execution_context=storage_pb2.ExecutionContext(
            task_instance_id=1,
            tdl_context=storage_pb2.TdlContext(package="fibonacci_tasks", task_func="fibonacci"),
            timeout_policy=storage_pb2.TimeoutPolicy(soft_timeout_ms=1000, hard_timeout_ms=60000),
            serialized_task_io=b"\x01\x00\x00\x00\x01\x00\x00\x00\x01",
        )
    )

    class Scheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
        def NextTask(self, request: Any, context_: Any) -> Any:
            return assignment

        def Heartbeat(self, request: Any, context_: Any) -> Any:
            return common_pb2.Void()

        def Shutdown(self, request: Any, context_: Any) -> Any:
            return common_pb2.Void()

    class Storage(storage_pb2_grpc.TaskInstanceManagementServiceServicer):
        def RegisterTaskInstance(self, request: Any, context_: Any) -> Any:
            return context

        def ReportTaskSuccess(self, request: Any, context_: Any) -> Any:
            return common_pb2.Void()

        def ReportTaskFailure(self, request: Any, context_: Any) -> Any:
            return common_pb2.Void()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(Scheduler(), server)
    storage_pb2_grpc.add_TaskInstanceManagementServiceServicer_to_server(Storage(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


async def _floor(iterations: int) -> dict[str, float]:
    from worker.executor.pool import open_pool
    from worker.executor.settings import PoolSettings
    from worker.model import ExecutionManagerId, ExecutionRequest, Success
    from worker.transport.channels import ChannelOptions, ChannelPool
    from worker.transport.scheduler import GrpcSchedulerClient
    from worker.transport.storage import GrpcStorageClient

    server, port = _instant_servers()
    channels = ChannelPool("127.0.0.1", port, 1, ChannelOptions())
    try:
        scheduler = GrpcSchedulerClient(channels, 30)
        storage = GrpcStorageClient(channels, 30)
        em_id = ExecutionManagerId(1)
        totals = {"NextTask": 0.0, "RegisterTaskInstance": 0.0, "executor": 0.0}
        async with open_pool(PoolSettings(package_dir=EXAMPLES_DIR)) as pool:
            for iteration in range(iterations + 20):
                t0 = time.perf_counter()
                delivered = await scheduler.next_task(em_id, None, 1000)
                assert delivered is not None
                t1 = time.perf_counter()
                a = delivered.assignment
                context = await storage.register_task_instance(
                    a.job_id, a.task_id, em_id, a.session_id
                )
                t2 = time.perf_counter()
                outcome = await pool.execute(ExecutionRequest.for_assignment(a, context))
                t3 = time.perf_counter()
                assert isinstance(outcome, Success), outcome
                if iteration >= 20:  # warm-up excluded
                    totals["NextTask"] += t1 - t0
                    totals["RegisterTaskInstance"] += t2 - t1
                    totals["executor"] += t3 - t2
    finally:
        channels.close()
        server.stop(0)
    return {name: total / iterations for name, total in totals.items()}


def main(argv: Sequence[str]) -> int:
    """Run the benchmark and print markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m bench cluster")
    parser.add_argument("--tasks-per-worker", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--slots", default="1", help="comma-separated slots per worker")
    parser.add_argument("--floor-iterations", type=int, default=500)
    args = parser.parse_args(list(argv))
    counts = [int(n) for n in args.workers.split(",")]
    slot_counts = [int(n) for n in args.slots.split(",")]
    if min(counts + slot_counts) < 1:
        parser.error("--workers and --slots take counts >= 1")
    # Duplicate acks from draining workers are expected (at-least-once); keep the tables clean.
    logging.getLogger("worker.cluster").setLevel(logging.ERROR)

    floor = trio.run(_floor, args.floor_iterations)
    floor_per_task = sum(floor.values())
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as name:
        for workers, slots in itertools.product(counts, slot_counts):
            tasks = args.tasks_per_worker * workers
            results.append(_run_cluster(workers, slots, tasks, Path(name)))

    print("### Throughput (trivial tasks, local cluster, loopback)\n")
    print("| workers | slots | tasks | seconds | tasks/s | vs floor (1 worker) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rate = r.tasks / r.seconds
        share = f"{rate * floor_per_task / r.workers:.0%}"
        print(f"| {r.workers} | {r.slots} | {r.tasks} | {r.seconds:.2f} | {rate:.0f} | {share} |")
    print("\n### Per-task latency (ms; median / p90, server-side timestamps)\n")
    names = [
        "poll",
        "register",
        "storage register",
        "execute",
        "report",
        "cycle",
        "next poll - report",
    ]
    print("| workers | slots | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in results:
        cells = [f"{_median_ms(r.breakdown[n])} / {_p90_ms(r.breakdown[n])}" for n in names]
        print(f"| {r.workers} | {r.slots} | " + " | ".join(cells) + " |")
    print("\n### Floor of the design (one process: bridged clients + executor round trip)\n")
    print("| part | ms per task |")
    print("|---|---|")
    for part, seconds in floor.items():
        print(f"| {part} | {seconds * 1000:.3f} |")
    print(f"| **total** | **{floor_per_task * 1000:.3f}** ({1 / floor_per_task:.0f} tasks/s) |")
    print("\n### Memory (VmRSS after the first run)\n")
    print("| process | MB |")
    print("|---|---|")
    print(f"| worker | {results[0].worker_rss_mb:.1f} |")
    print(f"| idle executor | {results[0].executor_rss_mb:.1f} |")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
