"""The trio bridge over real loopback gRPC: cancellation on the wire, deadlines, no thread leak."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import grpc._channel as grpc_channel_module
import pytest
import trio

from tests.cluster.harness import wait_for
from tests.transport.clients import EM_ID, METHOD_PATHS, NO_TASK, SAMPLE_CALLS, Clients
from tests.transport.scripted import SERVER_THREADS, ScriptedServer
from worker.errors import Rpc, RpcError, StatusCode, TransportError
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport.bridge import CallFailed, unary_call
from worker.transport.channels import ChannelOptions, ChannelPool
from worker.transport.scheduler import GrpcSchedulerClient

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
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channels.channels[0])
    with pytest.raises(ValueError, match="positive deadline"):
        await unary_call(stub.NextTask, scheduler_pb2.NextTaskRequest(), deadline_sec=0)


async def test_call_failed_carries_code_and_details(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channels.channels[0])
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


async def test_closing_the_channels_ends_a_pending_call_as_cancelled(
    server: ScriptedServer,
) -> None:
    poll = LongPoll()
    server.on(METHOD_PATHS[Rpc.NEXT_TASK], poll)
    pool = ChannelPool("127.0.0.1", server.port, 1, ChannelOptions())
    scheduler = Clients.over(pool).scheduler
    outcome: list[BaseException] = []
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:

                async def long_poll() -> None:
                    try:
                        await scheduler.next_task(EM_ID, None, 60_000)
                    except RpcError as error:
                        outcome.append(error)

                nursery.start_soon(long_poll)
                await wait_for_event(poll.started, 20)
                pool.close()  # the bridge has no timer of its own: closing must end the wait
            await wait_for_event(poll.server_saw_cancel, 20)
    finally:
        pool.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], RpcError)
    assert outcome[0].code is StatusCode.CANCELLED


async def test_message_size_limits_apply_in_both_directions(server: ScriptedServer) -> None:
    big_answer = scheduler_pb2.NextTaskResponse(
        assignment=scheduler_pb2.SchedulerAssignment(job_id=2**63)
    ).SerializeToString()
    server.reply(METHOD_PATHS[Rpc.NEXT_TASK], big_answer + bytes.fromhex("3a 40") + bytes(64))
    server.reply(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT], b"")
    pool = ChannelPool("127.0.0.1", server.port, 1, ChannelOptions(16, 32))
    try:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(pool.channels[0])
        with trio.fail_after(20):
            with pytest.raises(CallFailed) as too_big_answer:
                await unary_call(stub.NextTask, scheduler_pb2.NextTaskRequest(), deadline_sec=5)
            big_request = scheduler_pb2.HeartbeatRequest(execution_manager_id=2**64 - 1)
            assert len(big_request.SerializeToString()) <= 16
            await unary_call(stub.Heartbeat, big_request, deadline_sec=5)  # within the limit
            with pytest.raises(CallFailed) as too_big_request:
                await unary_call(
                    stub.NextTask,
                    scheduler_pb2.NextTaskRequest(
                        execution_manager_id=2**64 - 1, wait_time_ms=2**64 - 1
                    ),
                    deadline_sec=5,
                )
    finally:
        pool.close()
    assert too_big_answer.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert too_big_request.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert len(server.calls(METHOD_PATHS[Rpc.NEXT_TASK])) == 1  # the big request never left


async def count_connection_attempts(options: ChannelOptions, within_sec: float) -> int:
    """TCP connections one channel opens within ``within_sec`` to a peer that drops each one."""
    listener = trio.socket.socket()
    attempts = 0
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]

        async def drop_every_connection() -> None:
            nonlocal attempts
            while True:
                connection, _ = await listener.accept()
                attempts += 1
                connection.close()

        pool = ChannelPool("127.0.0.1", port, 1, options)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drop_every_connection)
                # Waiting for readiness keeps the channel trying to connect for the whole span.
                assert not await pool.wait_ready(within_sec)
                nursery.cancel_scope.cancel()
        finally:
            pool.close()
    return attempts


async def test_reconnect_attempts_follow_the_configured_backoff() -> None:
    # grpcio's own default (1 s growing to 120 s) would allow about 3 attempts in 3 s and keep
    # a worker cut off long after a server came back; bounded by 0.2 s it keeps trying.
    with trio.fail_after(60):
        attempts = await count_connection_attempts(
            ChannelOptions(reconnect_initial_sec=0.05, reconnect_max_sec=0.2), within_sec=3
        )
    assert attempts >= 6, attempts


@pytest.mark.parametrize("rpc", list(Rpc))
async def test_every_rpc_of_every_client_has_a_deadline(
    rpc: Rpc, server: ScriptedServer, channels: ChannelPool
) -> None:
    remaining: list[float | None] = []

    def remember(_request: bytes, context: Any) -> bytes:
        remaining.append(context.time_remaining())
        context.abort(grpc.StatusCode.UNAVAILABLE, "scripted")
        raise AssertionError("context.abort() returns only by raising")

    server.on(METHOD_PATHS[rpc], remember)
    with trio.fail_after(20), pytest.raises(RpcError):
        await SAMPLE_CALLS[rpc](Clients.over(channels, rpc_timeout_sec=7))
    (left,) = remaining
    # rpc_timeout_sec (7 s); the sample NextTask waits 0 ms. The header rounds up slightly.
    assert left is not None
    assert 2 < left <= 7.5


async def test_sequential_calls_start_no_thread_and_the_parked_call_stays_off_the_wire(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.reply(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT], b"")
    pool = ChannelPool("127.0.0.1", server.port, 2, ChannelOptions())
    states = [channel._call_state for channel in pool.channels]
    try:
        assert all(parked is not None for parked in pool.parked)
        scheduler = Clients.over(pool).scheduler
        with trio.fail_after(30):
            for _ in range(4):  # warm up: connect both channels
                await scheduler.heartbeat(EM_ID)
            # grpcio starts a channel's completion thread through this function whenever a call
            # finds the channel without a call in flight.
            spin_starts: list[object] = []
            original = grpc_channel_module._run_channel_spin_thread

            def counting(state: Any) -> None:
                if any(state is ours for ours in states):
                    spin_starts.append(state)
                original(state)

            monkeypatch.setattr(grpc_channel_module, "_run_channel_spin_thread", counting)
            for _ in range(100):  # one at a time: each finds its channel otherwise idle
                await scheduler.heartbeat(EM_ID)
            monkeypatch.undo()
        assert spin_starts == []
        # The parked call alone stays (grpcio counts a call out just after its answer is out).
        wait_for(lambda: all(s.managed_calls == 1 for s in states), 10, "one call left per channel")
        # Only the real calls reached the server: the parked ones open no stream.
        assert {call.method for call in server.calls()} == {METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT]}
    finally:
        pool.close()
    assert all(parked is not None and parked.done for parked in pool.parked)
    # Closing the channels ends the parked calls and with them the completion threads, which
    # return once their channel has no call left.
    wait_for(lambda: all(s.managed_calls == 0 for s in states), 10, "no call left per channel")
