"""The trio bridge over real loopback gRPC: cancellation on the wire, deadlines, no thread leak."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio

from tests.transport.clients import EM_ID, METHOD_PATHS, Clients
from tests.transport.scripted import SERVER_THREADS, ScriptedServer
from worker.errors import Rpc, StatusCode, TransportError
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport.bridge import CallFailed, unary_call
from worker.transport.channels import ChannelOptions, ChannelPool
from worker.transport.scheduler import GrpcSchedulerClient

NO_TASK = bytes.fromhex("12 00")
CANCEL_LIMIT_SEC = 0.050  # protocol.md / issue: a cancelled call returns and reaches the server


class LongPoll:
    """A NextTask behaviour that holds the call until the client cancels it (or 30 s pass)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.server_saw_cancel = threading.Event()
        self.cancel_seen_at: float | None = None

    def __call__(self, _request: bytes, context: Any) -> bytes:
        def on_termination() -> None:
            if not self.server_saw_cancel.is_set():
                self.cancel_seen_at = time.monotonic()
                self.server_saw_cancel.set()

        context.add_callback(on_termination)
        self.started.set()
        self.server_saw_cancel.wait(30)
        return NO_TASK


def client_threads() -> list[str]:
    """Names of the live threads, leaving out the in-process test server's handler threads."""
    return [t.name for t in threading.enumerate() if not t.name.startswith(SERVER_THREADS)]


async def wait_for_event(event: threading.Event, within_sec: float) -> None:
    """Wait for a thread-side event from trio without blocking the loop."""
    assert await trio.to_thread.run_sync(event.wait, within_sec), "the event never came"


async def test_cancelling_a_long_poll_reaches_the_server_quickly(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    poll = LongPoll()
    server.on(METHOD_PATHS[Rpc.NEXT_TASK], poll)
    scheduler = Clients.over(channels).scheduler
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cancel_scope = trio.CancelScope()

            async def long_poll() -> None:
                with cancel_scope:
                    await scheduler.next_task(EM_ID, None, 60_000)
                    pytest.fail("the long poll answered although it was cancelled")

            nursery.start_soon(long_poll)
            await wait_for_event(poll.started, 20)
            cancelled_at = time.monotonic()
            cancel_scope.cancel()
        returned_at = time.monotonic()
        await wait_for_event(poll.server_saw_cancel, 20)
    assert cancel_scope.cancelled_caught
    assert returned_at - cancelled_at < CANCEL_LIMIT_SEC
    assert poll.cancel_seen_at is not None
    assert poll.cancel_seen_at - cancelled_at < CANCEL_LIMIT_SEC


async def test_the_deadline_is_sent_and_enforced(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    poll = LongPoll()
    server.on(METHOD_PATHS[Rpc.NEXT_TASK], poll)
    short = GrpcSchedulerClient(channels, rpc_timeout_sec=0.2)
    started = time.monotonic()
    with trio.fail_after(20), pytest.raises(TransportError) as raised:
        # deadline = wait_time_ms (100 ms) + rpc_timeout_sec (200 ms)
        await short.next_task(EM_ID, None, 100)
    elapsed = time.monotonic() - started
    assert raised.value.code is StatusCode.DEADLINE_EXCEEDED
    assert 0.3 <= elapsed < 0.3 + 1.0  # not before the deadline, and not long after it
    await wait_for_event(poll.server_saw_cancel, 20)


async def test_unary_call_rejects_a_missing_deadline(channels: ChannelPool) -> None:
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channels.next())
    with pytest.raises(ValueError, match="positive deadline"):
        await unary_call(stub.NextTask, scheduler_pb2.NextTaskRequest(), deadline_sec=0)


async def test_call_failed_carries_code_and_details(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channels.next())
    # NextTask is not scripted: the scripted server answers UNIMPLEMENTED.
    with trio.fail_after(20), pytest.raises(CallFailed) as raised:
        await unary_call(stub.NextTask, scheduler_pb2.NextTaskRequest(), deadline_sec=5)
    assert raised.value.code is StatusCode.UNIMPLEMENTED
    assert "not scripted" in raised.value.details


async def test_channels_are_used_round_robin_over_separate_connections(
    server: ScriptedServer,
) -> None:
    server.reply(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT], b"")
    pool = ChannelPool("127.0.0.1", server.port, 3, ChannelOptions())
    try:
        scheduler = Clients.over(pool).scheduler
        with trio.fail_after(20):
            for _ in range(6):
                await scheduler.heartbeat(EM_ID)
    finally:
        pool.close()
    peers = [call.peer for call in server.calls()]
    assert len(set(peers)) == 3, peers
    assert peers[:3] == peers[3:]


async def test_no_thread_per_call_and_no_leak(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    server.reply(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT], b"")
    poll = LongPoll()
    server.on(METHOD_PATHS[Rpc.NEXT_TASK], poll)
    scheduler = Clients.over(channels).scheduler

    async def calls(count: int) -> None:
        for _ in range(count):
            await scheduler.heartbeat(EM_ID)

    async def cancelled_polls(count: int) -> None:
        for _ in range(count):
            with trio.move_on_after(0.002):
                await scheduler.next_task(EM_ID, None, 60_000)

    with trio.fail_after(120):
        await calls(50)  # warm up: grpcio starts its own helper threads once
        baseline = client_threads()
        peak = baseline
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(calls, 250)
            nursery.start_soon(cancelled_polls, 300)
            while len(nursery.child_tasks) > 0:
                now = client_threads()
                peak = now if len(now) > len(peak) else peak
                await trio.sleep(0.01)
        after = client_threads()
    served = len(server.calls(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT]))
    assert served == 50 + 8 * 250
    # 2000+ calls and 300 cancelled ones; grpcio may add a completion thread per channel at most.
    channel_threads = len(channels.channels)
    assert len(peak) <= len(baseline) + channel_threads, (baseline, peak)
    assert len(after) <= len(baseline) + channel_threads, (baseline, after)


async def test_every_call_carries_its_deadline_on_the_wire(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    remaining: dict[str, float] = {}

    def remember(method: str, response: bytes) -> Any:
        def behaviour(_request: bytes, context: Any) -> bytes:
            remaining[method] = context.time_remaining()
            return response

        return behaviour

    server.on(METHOD_PATHS[Rpc.NEXT_TASK], remember("next_task", NO_TASK))
    server.on(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT], remember("heartbeat", b""))
    scheduler = GrpcSchedulerClient(channels, rpc_timeout_sec=10)
    with trio.fail_after(20):
        await scheduler.next_task(EM_ID, None, 5000)
        await scheduler.heartbeat(EM_ID)
    # NextTask: wait_time_ms (5 s) + rpc_timeout_sec (10 s); others: rpc_timeout_sec. The
    # grpc-timeout header is rounded up to its unit, hence the small margin above.
    assert 10 < remaining["next_task"] <= 15.5
    assert 5 < remaining["heartbeat"] <= 10.5
