"""Unary round trips through the trio bridge versus a plain blocking grpcio stub.

``python -m bench.grpc_bridge [--calls N] [--rounds N]`` (or ``python -m bench grpc_bridge``)
prints a markdown table. Every client calls ``SchedulerService.Heartbeat`` on the same loopback
server, which answers at once and runs in its own process (as the cluster does for a worker, so
the server's work does not share this process's interpreter lock), in the same run:

* sequential: one caller, one call at a time (bridge: one trio task; blocking: one thread);
* 8-way: eight concurrent callers (bridge: eight trio tasks on one thread; blocking: eight
  threads), ``N`` calls in all.

The clients: grpcio's blocking stub; grpcio's ``future().result()``; the trio bridge on a plain
channel (grpcio starts its completion thread again whenever the channel was idle); the trio bridge
on the worker's ``ChannelPool`` channel, whose parked call keeps that thread alive
(:mod:`worker.transport.parking`).

Each configuration runs ``rounds`` times, the clients interleaved, and the median round counts.
Besides calls per second it gives the CPU per call of this process (client side, all threads)
and of the server process. The ratio is bridge / blocking; the sequential difference is also
given as microseconds of overhead per call. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import attrs
import grpc
import trio

from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport.bridge import unary_call
from worker.transport.channels import ChannelOptions, ChannelPool

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


def _serve() -> None:
    """The server process: print the port, serve; at each input line print the CPU seconds used."""
    server, port = _start_server()
    print(port, flush=True)
    for _ in sys.stdin:
        print(time.process_time(), flush=True)
    server.stop(grace=None)


class _ServerProcess:
    """``_serve`` in a child process; ``cpu_sec()`` asks it for its CPU time so far."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_bridge", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self.port = int(self._stdout.readline())

    def cpu_sec(self) -> float:
        self._stdin.write("\n")
        self._stdin.flush()
        return float(self._stdout.readline())

    def stop(self) -> None:
        self._stdin.close()
        self._process.wait(timeout=30)


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


@attrs.frozen(slots=True)
class _Client:
    """One way to call: ``run(stub, calls, callers)`` gives seconds; ``parked``: which channel."""

    label: str
    run: Callable[[Any, int, int], float]
    parked: bool


_CLIENTS = (
    _Client("blocking stub", _blocking, parked=False),
    _Client("grpcio future().result()", _futures, parked=False),
    _Client("trio bridge, plain channel", _bridged, parked=False),
    _Client("trio bridge, worker's channel (parked call)", _bridged, parked=True),
)


@attrs.frozen(slots=True)
class _Round:
    """One measured round of one client."""

    calls_per_sec: float
    client_cpu_us: float
    server_cpu_us: float


def main(argv: Sequence[str]) -> int:
    """Run the comparison and print the table; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_bridge")
    parser.add_argument("--calls", type=int, default=4000, help="calls per round (default 4000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (default 3)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(list(argv))
    if options.serve:
        _serve()
        return 0
    calls = options.calls - options.calls % CONCURRENCY

    rows: list[tuple[str, dict[str, list[_Round]]]] = []
    # Each piece is undone, last first, however far the set-up got: no server child is left.
    with contextlib.ExitStack() as undo:
        server = _ServerProcess()
        undo.callback(server.stop)
        plain = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        undo.callback(plain.close)
        pool = ChannelPool("127.0.0.1", server.port, 1, ChannelOptions())
        undo.callback(pool.close)
        stubs = {
            False: scheduler_pb2_grpc.SchedulerServiceStub(plain),
            True: scheduler_pb2_grpc.SchedulerServiceStub(pool.channels[0]),
        }
        for client in _CLIENTS:  # warm up the connections and every path
            client.run(stubs[client.parked], 400, 1)
        for label, callers in (("sequential", 1), (f"{CONCURRENCY}-way", CONCURRENCY)):
            rounds: dict[str, list[_Round]] = {client.label: [] for client in _CLIENTS}
            for _ in range(options.rounds):  # interleaved, so load drift hits every client alike
                for client in _CLIENTS:
                    server_before, client_before = server.cpu_sec(), time.process_time()
                    seconds = client.run(stubs[client.parked], calls, callers)
                    client_cpu = time.process_time() - client_before
                    server_cpu = server.cpu_sec() - server_before
                    rounds[client.label].append(
                        _Round(calls / seconds, client_cpu / calls * 1e6, server_cpu / calls * 1e6)
                    )
            rows.append((label, rounds))

    print(
        f"{calls} unary Heartbeat calls per round, median of {options.rounds} interleaved rounds,"
        " loopback, server in its own process\n"
    )
    print("| callers | client | calls/s | / blocking | client CPU us/call | server CPU us/call |")
    print("|---|---|---:|---:|---:|---:|")
    medians: dict[tuple[str, str], _Round] = {}
    for label, rounds in rows:
        for client in _CLIENTS:
            measured = rounds[client.label]
            median = _Round(
                statistics.median(r.calls_per_sec for r in measured),
                statistics.median(r.client_cpu_us for r in measured),
                statistics.median(r.server_cpu_us for r in measured),
            )
            medians[label, client.label] = median
        blocking = medians[label, _CLIENTS[0].label].calls_per_sec
        for client in _CLIENTS:
            median = medians[label, client.label]
            print(
                f"| {label} | {client.label} | {median.calls_per_sec:,.0f}"
                f" | {median.calls_per_sec / blocking:.2f} | {median.client_cpu_us:.0f}"
                f" | {median.server_cpu_us:.0f} |"
            )
    sequential = {client.label: medians["sequential", client.label] for client in _CLIENTS}
    blocking_us = 1e6 / sequential[_CLIENTS[0].label].calls_per_sec
    print()
    for client in _CLIENTS[1:]:
        overhead_us = 1e6 / sequential[client.label].calls_per_sec - blocking_us
        print(f"Sequential overhead of {client.label}: {overhead_us:+.0f} us per call.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
