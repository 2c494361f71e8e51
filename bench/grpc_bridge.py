"""Unary round trips through the trio bridge versus a plain blocking grpcio stub.

``python -m bench.grpc_bridge [--calls N] [--rounds N]`` (or ``python -m bench grpc_bridge``)
prints a markdown table. Both clients call ``SchedulerService.Heartbeat`` on the same in-process
loopback server, which answers at once, in the same run:

* sequential: one caller, one call at a time (bridge: one trio task; blocking: one thread);
* 8-way: eight concurrent callers (bridge: eight trio tasks on one thread; blocking: eight
  threads), ``N`` calls in all.

Each configuration runs ``rounds`` times, alternating bridge and blocking, and the best round
counts (the machine is shared). The ratio is bridge / blocking; the sequential difference is
also given as microseconds of overhead per call. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
import trio

from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport.bridge import unary_call

CONCURRENCY = 8
DEADLINE_SEC = 30.0


class _AnswerAtOnce(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Every method answers at once (only Heartbeat is called)."""

    def NextTask(self, request: Any, context: Any) -> scheduler_pb2.NextTaskResponse:
        """Answer ``no_task`` immediately."""
        return scheduler_pb2.NextTaskResponse(no_task=common_pb2.Void())

    def Heartbeat(self, request: Any, context: Any) -> common_pb2.Void:
        """Answer immediately."""
        return common_pb2.Void()

    def Shutdown(self, request: Any, context: Any) -> common_pb2.Void:
        """Answer immediately."""
        return common_pb2.Void()


def _start_server() -> tuple[Any, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * CONCURRENCY))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(_AnswerAtOnce(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _threaded(call: Callable[[], object], calls: int, callers: int) -> float:
    """Seconds for ``calls`` runs of ``call`` spread over ``callers`` threads."""
    per_caller = calls // callers

    def caller() -> None:
        for _ in range(per_caller):
            call()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _blocking(stub: Any, calls: int, callers: int) -> float:
    """Seconds for ``calls`` blocking calls spread over ``callers`` threads."""
    request = scheduler_pb2.HeartbeatRequest(execution_manager_id=1)
    return _threaded(lambda: stub.Heartbeat(request, timeout=DEADLINE_SEC), calls, callers)


def _futures(stub: Any, calls: int, callers: int) -> float:
    """Seconds for ``calls`` calls through grpcio's futures, each awaited with ``result()``."""
    request = scheduler_pb2.HeartbeatRequest(execution_manager_id=1)
    return _threaded(
        lambda: stub.Heartbeat.future(request, timeout=DEADLINE_SEC).result(), calls, callers
    )


def _bridged(stub: Any, calls: int, callers: int) -> float:
    """Seconds for ``calls`` bridged calls spread over ``callers`` trio tasks."""
    request = scheduler_pb2.HeartbeatRequest(execution_manager_id=1)
    per_caller = calls // callers

    async def caller() -> None:
        for _ in range(per_caller):
            await unary_call(stub.Heartbeat, request, deadline_sec=DEADLINE_SEC)

    async def run_all() -> float:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
        return time.perf_counter() - started

    return trio.run(run_all)


_CLIENTS: dict[str, Callable[[Any, int, int], float]] = {
    "blocking": _blocking,
    "future": _futures,
    "bridge": _bridged,
}


def main(argv: Sequence[str]) -> int:
    """Run the comparison and print the table; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_bridge")
    parser.add_argument("--calls", type=int, default=4000, help="calls per round (default 4000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (default 3)")
    options = parser.parse_args(list(argv))
    calls = options.calls - options.calls % CONCURRENCY

    server, port = _start_server()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        for run in _CLIENTS.values():  # warm up the connection and every path
            run(stub, 400, 1)
        rows = []
        for label, callers in (("sequential", 1), (f"{CONCURRENCY}-way", CONCURRENCY)):
            best = dict.fromkeys(_CLIENTS, 0.0)
            for _ in range(options.rounds):  # interleaved, so load drift hits every client alike
                for name, run in _CLIENTS.items():
                    best[name] = max(best[name], calls / run(stub, calls, callers))
            rows.append((label, best))
    finally:
        channel.close()
        server.stop(grace=None)

    print(f"{calls} unary Heartbeat calls per round, best of {options.rounds} rounds, loopback\n")
    print(
        "| callers | blocking stub (calls/s) | grpcio future().result() (calls/s)"
        " | trio bridge (calls/s) | bridge / blocking |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, best in rows:
        blocking, future, bridge = best["blocking"], best["future"], best["bridge"]
        print(
            f"| {label} | {blocking:,.0f} | {future:,.0f} | {bridge:,.0f}"
            f" | {bridge / blocking:.2f} |"
        )
    sequential = rows[0][1]
    overhead_us = (1 / sequential["bridge"] - 1 / sequential["blocking"]) * 1e6
    future_us = (1 / sequential["future"] - 1 / sequential["blocking"]) * 1e6
    print(
        f"\nSequential overhead of the bridge: {overhead_us:+.0f} us per call"
        f" (grpcio's own future path, without trio: {future_us:+.0f} us per call)."
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
