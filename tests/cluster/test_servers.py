"""The cluster's gRPC services over loopback with raw stubs: codes, presence, hooks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import msgpack
import pytest
import trio

from tests.cluster.harness import wait_for
from worker.cluster.embedded import ClusterSettings, EmbeddedCluster
from worker.cluster.jobs import JobBuilder, encode_job
from worker.cluster.scheduler import SchedulerSettings
from worker.cluster.servers import Delay, Fail, FaultHooks, Malformed
from worker.cluster.status import fetch_status
from worker.cluster.storage import JobState
from worker.errors import StatusCode
from worker.executor.wire import decode_graph_outputs
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc

pytestmark = pytest.mark.cluster
TIMEOUT = 10.0


class Stubs:
    """Raw stubs for every service of a running cluster."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self.storage_channel = grpc.insecure_channel(f"127.0.0.1:{cluster.storage_port}")
        self.scheduler_channel = grpc.insecure_channel(f"127.0.0.1:{cluster.scheduler_port}")
        self.liveness = storage_pb2_grpc.ExecutionManagerLivenessServiceStub(self.storage_channel)
        self.instances = storage_pb2_grpc.TaskInstanceManagementServiceStub(self.storage_channel)
        self.jobs = storage_pb2_grpc.JobOrchestrationServiceStub(self.storage_channel)
        self.inbound = storage_pb2_grpc.InboundQueueServiceStub(self.storage_channel)
        self.registration = storage_pb2_grpc.SchedulerRegistrationServiceStub(self.storage_channel)
        self.sessions = storage_pb2_grpc.SessionManagementServiceStub(self.storage_channel)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.scheduler_channel)

    def close(self) -> None:
        self.storage_channel.close()
        self.scheduler_channel.close()

    def register(self) -> tuple[int, int]:
        reply = self.liveness.RegisterExecutionManager(
            storage_pb2.RegisterExecutionManagerRequest(ip_address="0.0.0.0"), timeout=TIMEOUT
        )
        return reply.registration.execution_manager_id, reply.registration.session_id

    def next_task(
        self, em_id: int, wait_ms: int, ack: tuple[int, int] | None = None
    ) -> scheduler_pb2.NextTaskResponse:
        request = scheduler_pb2.NextTaskRequest(execution_manager_id=em_id, wait_time_ms=wait_ms)
        if ack is not None:
            request.prev_assignment.CopyFrom(
                scheduler_pb2.TaskAssignmentRecord(**{"id": ack[0], "from": ack[1]})
            )
        reply: scheduler_pb2.NextTaskResponse = self.scheduler.NextTask(
            request, timeout=TIMEOUT + wait_ms / 1000
        )
        return reply


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(ClusterSettings(scheduler=SchedulerSettings(dead_em_cutoff_sec=5))) as c:
        yield c


@pytest.fixture
def stubs(cluster: EmbeddedCluster) -> Iterator[Stubs]:
    s = Stubs(cluster)
    yield s
    s.close()


def _code(call: object) -> grpc.StatusCode:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


def _register_task(
    stubs: Stubs, job_id: int, task_id: common_pb2.TaskId | None, em_id: int, session: int
) -> storage_pb2.RegisterTaskInstanceResponse:
    request = storage_pb2.RegisterTaskInstanceRequest(
        job_id=job_id, execution_manager_id=em_id, session_id=session
    )
    if task_id is not None:
        request.task_id.CopyFrom(task_id)
    reply: storage_pb2.RegisterTaskInstanceResponse = stubs.instances.RegisterTaskInstance(
        request, timeout=TIMEOUT
    )
    return reply


def test_full_cycle_over_grpc_with_index_zero_and_commit(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    job = JobBuilder("g").task("a", "m", "f", [5]).with_commit("m", "c").build()
    graph, inputs = encode_job(job)
    job_id = stubs.jobs.RegisterJob(
        storage_pb2.RegisterJobRequest(
            resource_group_id=cluster.storage.default_group_id,
            compressed_serialized_task_graph=graph,
            compressed_serialized_inputs=inputs,
        ),
        timeout=TIMEOUT,
    ).job_id
    state = stubs.jobs.StartJob(storage_pb2.JobIdRequest(job_id=job_id), timeout=TIMEOUT).state
    assert state == JobState.RUNNING
    em_id, session = stubs.register()
    reply = stubs.next_task(em_id, 5000)
    assert reply.WhichOneof("result") == "assignment"
    assignment = reply.assignment
    assert assignment.task_id.WhichOneof("kind") == "index"
    assert assignment.task_id.index == 0
    assert assignment.scheduler_id == cluster.scheduler.scheduler_id
    assert assignment.session_id == session
    context = _register_task(stubs, job_id, assignment.task_id, em_id, session).execution_context
    assert context.tdl_context.package == "m"
    assert context.timeout_policy.hard_timeout_ms == 300_000
    stubs.instances.ReportTaskSuccess(
        storage_pb2.ReportTaskSuccessRequest(
            job_id=job_id,
            task_id=assignment.task_id,
            task_instance_id=context.task_instance_id,
            execution_manager_id=em_id,
            session_id=session,
            serialized_outputs=b"\x01\x00\x00\x00\x01\x00\x00\x00\x07",
        ),
        timeout=TIMEOUT,
    )
    commit = stubs.next_task(em_id, 5000, ack=(assignment.id, assignment.scheduler_id))
    assert commit.assignment.task_id.WhichOneof("kind") == "commit"
    assert cluster.scheduler.acks_completed[-1].assignment_id == assignment.id
    commit_context = _register_task(
        stubs, job_id, commit.assignment.task_id, em_id, session
    ).execution_context
    assert decode_graph_outputs(commit_context.serialized_task_io) == [msgpack.packb(7)]
    stubs.instances.ReportTaskSuccess(
        storage_pb2.ReportTaskSuccessRequest(
            job_id=job_id,
            task_id=commit.assignment.task_id,
            task_instance_id=commit_context.task_instance_id,
            session_id=session,
        ),
        timeout=TIMEOUT,
    )
    final = stubs.jobs.GetJobState(storage_pb2.JobIdRequest(job_id=job_id), timeout=TIMEOUT)
    assert final.state == JobState.SUCCEEDED
    outputs = stubs.jobs.GetJobOutputs(storage_pb2.JobIdRequest(job_id=job_id), timeout=TIMEOUT)
    assert outputs.serialized_outputs == b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x07"
    stubs.scheduler.Shutdown(
        scheduler_pb2.ShutdownRequest(
            execution_manager_id=em_id,
            prev_assignments=[
                scheduler_pb2.TaskAssignmentRecord(
                    **{"id": commit.assignment.id, "from": commit.assignment.scheduler_id}
                )
            ],
        ),
        timeout=TIMEOUT,
    )
    assert cluster.scheduler.outstanding() == {}


def test_bad_requests_get_codes_and_the_service_keeps_serving(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    job_id = cluster.submit(JobBuilder("b").task("a", "m", "f", [1]).build())
    em_id, session = stubs.register()
    index0 = common_pb2.TaskId(index=0)
    assert _code(lambda: _register_task(stubs, job_id, None, em_id, session)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _code(lambda: _register_task(stubs, job_id, common_pb2.TaskId(), em_id, session)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _code(lambda: _register_task(stubs, job_id, index0, em_id, session + 1)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert _code(lambda: _register_task(stubs, job_id, index0, 12345, session)) == (
        grpc.StatusCode.INTERNAL
    )
    beyond = common_pb2.TaskId(index=3)
    assert _code(lambda: _register_task(stubs, job_id, beyond, em_id, session)) == (
        grpc.StatusCode.INTERNAL
    )
    assert _code(
        lambda: stubs.liveness.UpdateExecutionManagerHeartbeat(
            storage_pb2.ExecutionManagerIdRequest(execution_manager_id=999), timeout=TIMEOUT
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT)
    assert _code(
        lambda: stubs.liveness.RegisterExecutionManager(
            storage_pb2.RegisterExecutionManagerRequest(ip_address="x"), timeout=TIMEOUT
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError) as unknown:
        stubs.scheduler.Shutdown(
            scheduler_pb2.ShutdownRequest(execution_manager_id=4242), timeout=TIMEOUT
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.value.details() == "execution manager not found"
    assert _code(lambda: stubs.registration.GetSchedulers(common_pb2.Void(), timeout=TIMEOUT)) == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    assert _code(
        lambda: stubs.jobs.GetJobState(storage_pb2.JobIdRequest(job_id=999), timeout=TIMEOUT)
    ) == (grpc.StatusCode.NOT_FOUND)
    assert _code(
        lambda: stubs.jobs.RegisterJob(
            storage_pb2.RegisterJobRequest(resource_group_id=77), timeout=TIMEOUT
        )
    ) == (grpc.StatusCode.UNAUTHENTICATED)
    # Still serving: the task registers fine afterwards.
    assert _register_task(stubs, job_id, index0, em_id, session).HasField("execution_context")


def test_long_poll_honours_wait_time_and_an_ack_of_id_zero(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    em_id, _ = stubs.register()
    started = time.monotonic()
    assert stubs.next_task(em_id, 300).WhichOneof("result") == "no_task"
    assert time.monotonic() - started >= 0.29
    assert stubs.next_task(em_id, 0).WhichOneof("result") == "no_task"
    cluster.submit(JobBuilder("z").task("a", "m", "f", [1]).build())
    first = stubs.next_task(em_id, 5000)
    assert first.assignment.id == 0
    stubs.next_task(em_id, 0, ack=(0, first.assignment.scheduler_id))
    assert [a.assignment_id for a in cluster.scheduler.acks_completed] == [0]


def test_client_cancellation_frees_the_long_poll(cluster: EmbeddedCluster, stubs: Stubs) -> None:
    em_id, _ = stubs.register()
    answered: list[str] = []
    cluster.scheduler_server.hooks.observer = lambda rpc, req, resp, t0, t1: answered.append(
        str(resp.WhichOneof("result"))
    )
    future = stubs.scheduler.NextTask.future(
        scheduler_pb2.NextTaskRequest(execution_manager_id=em_id, wait_time_ms=60_000),
        timeout=70,
    )
    wait_for(lambda: cluster.scheduler_server.hooks.calls["NextTask"] > 0, 30, "the poll")
    future.cancel()
    # The server notices the cancellation and ends the poll long before its 60 s budget.
    wait_for(lambda: bool(answered), 20, "the cancelled poll to end")
    assert answered == ["no_task"]
    cluster.submit(JobBuilder("c").task("a", "m", "f", [1]).build())
    # The cancelled poll did not take the work: a new poll gets it at once.
    assert stubs.next_task(em_id, 5000).WhichOneof("result") == "assignment"
    assert len(cluster.scheduler.dispatch_log) == 1


def test_hooks_keep_a_bounded_history_of_arrivals() -> None:
    hooks = FaultHooks(history=3)
    hooks.script("Heartbeat", *[Fail(StatusCode.UNAVAILABLE)] * 5)
    for _ in range(10):
        hooks.take("Heartbeat")
    assert hooks.calls["Heartbeat"] == 10
    assert len(hooks.call_times["Heartbeat"]) == 3
    assert len(hooks.failed_call_times["Heartbeat"]) == 3
    assert list(hooks.call_times["Heartbeat"]) == sorted(hooks.call_times["Heartbeat"])


def test_hooks_script_statuses_delays_and_malformed_responses(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    storage_hooks = cluster.storage_server.hooks
    scheduler_hooks = cluster.scheduler_server.hooks
    storage_hooks.script(
        "RegisterExecutionManager",
        Fail(StatusCode.UNAVAILABLE),
        Malformed("registration"),
    )
    assert _code(stubs.register) == grpc.StatusCode.UNAVAILABLE
    reply = stubs.liveness.RegisterExecutionManager(
        storage_pb2.RegisterExecutionManagerRequest(ip_address="0.0.0.0"), timeout=TIMEOUT
    )
    assert not reply.HasField("registration")
    em_id, session = stubs.register()
    scheduler_hooks.script("NextTask", Malformed("result"))
    assert stubs.next_task(em_id, 0).WhichOneof("result") is None
    scheduler_hooks.script("NextTask", Fail(StatusCode.INTERNAL, "scheduler is shutting down"))
    assert _code(lambda: stubs.next_task(em_id, 0)) == grpc.StatusCode.INTERNAL
    job_id = cluster.submit(JobBuilder("h").task("a", "m", "f", [1]).build())
    storage_hooks.script("RegisterTaskInstance", Malformed("timeout_policy"))
    index0 = common_pb2.TaskId(index=0)
    context = _register_task(stubs, job_id, index0, em_id, session)
    assert context.HasField("execution_context")
    assert not context.execution_context.HasField("timeout_policy")
    storage_hooks.script("UpdateExecutionManagerHeartbeat", Delay(0.3))
    started = time.monotonic()
    stubs.liveness.UpdateExecutionManagerHeartbeat(
        storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id), timeout=TIMEOUT
    )
    assert time.monotonic() - started >= 0.29
    storage_hooks.script("UpdateExecutionManagerHeartbeat", Fail(StatusCode.OK, delay_sec=2.0))
    assert _code(
        lambda: stubs.liveness.UpdateExecutionManagerHeartbeat(
            storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id), timeout=0.3
        )
    ) == (grpc.StatusCode.DEADLINE_EXCEEDED)


def test_server_receive_limit_is_four_mib(cluster: EmbeddedCluster, stubs: Stubs) -> None:
    _, session = stubs.register()
    request = storage_pb2.ReportTaskFailureRequest(
        job_id=1,
        task_id=common_pb2.TaskId(index=0),
        session_id=session,
        error_message="x" * (4 * 1024 * 1024 + 10),
    )
    assert _code(lambda: stubs.instances.ReportTaskFailure(request, timeout=TIMEOUT)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_inbound_and_session_services(cluster: EmbeddedCluster, stubs: Stubs) -> None:
    registration = stubs.registration.RegisterScheduler(
        storage_pb2.RegisterSchedulerRequest(host="127.0.0.1", port=1), timeout=TIMEOUT
    ).registration
    assert registration.scheduler_id > cluster.scheduler.scheduler_id
    session = stubs.sessions.GetSession(common_pb2.Void(), timeout=TIMEOUT).session_id
    assert session == registration.session_id == cluster.storage.session_id
    reply = stubs.inbound.PollReadyCommitTasks(
        storage_pb2.PollReadyTasksRequest(max_items=10, wait_ms=0), timeout=TIMEOUT
    )
    assert reply.HasField("tasks")
    assert reply.tasks.session_id == session
    assert list(reply.tasks.tasks) == []


def test_restart_hooks_bump_the_session_and_the_scheduler_id(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    em_id, session = stubs.register()
    old_scheduler = cluster.scheduler.scheduler_id
    new_session = cluster.restart_storage()
    assert new_session > session
    heartbeat = stubs.liveness.UpdateExecutionManagerHeartbeat(
        storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id), timeout=TIMEOUT
    )
    assert heartbeat.session_id == new_session
    assert cluster.restart_scheduler() > old_scheduler
    cluster.submit(JobBuilder("r").task("a", "m", "f", [1]).build())
    reply = stubs.next_task(em_id, 5000)
    assert reply.assignment.id == 0
    assert reply.assignment.scheduler_id == cluster.scheduler.scheduler_id
    assert reply.assignment.session_id == new_session
    cluster.storage.mark_dead(em_id)
    assert _code(
        lambda: stubs.liveness.UpdateExecutionManagerHeartbeat(
            storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id), timeout=TIMEOUT
        )
    ) == (grpc.StatusCode.FAILED_PRECONDITION)


def test_an_engine_bug_is_internal_and_the_service_keeps_serving(
    cluster: EmbeddedCluster, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    em_id, session = stubs.register()

    def broken(*args: object) -> int:
        raise RuntimeError("bug")

    request = storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id)
    with monkeypatch.context() as patch:
        patch.setattr(cluster.storage, "heartbeat", broken)
        with pytest.raises(grpc.RpcError) as caught:
            stubs.liveness.UpdateExecutionManagerHeartbeat(request, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "internal error"
    reply = stubs.liveness.UpdateExecutionManagerHeartbeat(request, timeout=TIMEOUT)
    assert reply.session_id == session
    # protocol.md §8.3: every INTERNAL of the task-instance service reads the same, bugs included.
    with monkeypatch.context() as patch:
        patch.setattr(cluster.storage, "register_task_instance", broken)
        with pytest.raises(grpc.RpcError) as caught:
            _register_task(stubs, 1, common_pb2.TaskId(index=0), em_id, session)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "storage service internal error"


def _long_polls(stubs: Stubs, em_ids: list[int], per_worker: int) -> list[grpc.Future]:
    """``per_worker`` concurrent 30 s ``NextTask`` long polls from each worker."""
    return [
        stubs.scheduler.NextTask.future(
            scheduler_pb2.NextTaskRequest(execution_manager_id=em_id, wait_time_ms=30_000),
            timeout=60,
        )
        for em_id in em_ids
        for _ in range(per_worker)
    ]


def _heartbeats(stubs: Stubs, em_id: int) -> None:
    """Both heartbeats of a worker, each with a 5 s deadline (long polls last 30 s)."""
    stubs.scheduler.Heartbeat(scheduler_pb2.HeartbeatRequest(execution_manager_id=em_id), timeout=5)
    stubs.liveness.UpdateExecutionManagerHeartbeat(
        storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id), timeout=5
    )


async def test_80_concurrent_long_polls_leave_heartbeats_prompt_and_all_get_work(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    workers, slots = 20, 4
    em_ids = [stubs.register()[0] for _ in range(workers)]
    session = cluster.storage.session_id
    polls = _long_polls(stubs, em_ids, slots)
    try:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(
                wait_for,
                lambda: cluster.scheduler.waiting_polls == workers * slots,
                60,
                "every long poll to wait",
            )
            # Every long poll holds a server thread; heartbeats and a job call still answer.
            for em_id in em_ids:
                await trio.to_thread.run_sync(_heartbeats, stubs, em_id)
            job = JobBuilder("wide")
            for index in range(workers * slots):
                job.task(f"t{index}", "m", "f", [index])
            job_id = cluster.submit(job.build())
            replies = [await trio.to_thread.run_sync(poll.result) for poll in polls]
    finally:
        for poll in polls:
            poll.cancel()
    assert all(reply.WhichOneof("result") == "assignment" for reply in replies)
    # Each worker got one assignment per concurrent poll and runs all of them at once.
    outstanding = cluster.scheduler.outstanding()
    assert {em_id: len(outstanding[em_id]) for em_id in em_ids} == dict.fromkeys(em_ids, slots)
    for em_id, reply in zip([e for e in em_ids for _ in range(slots)], replies, strict=True):
        _register_task(stubs, job_id, reply.assignment.task_id, em_id, session)
    owners = [owner for owner, _, _ in cluster.storage.live_instances().values()]
    assert sorted(owners) == sorted(em_id for em_id in em_ids for _ in range(slots))


async def test_long_polls_beyond_the_limit_are_refused_at_once_and_heartbeats_still_answer() -> (
    None
):
    settings = ClusterSettings(scheduler=SchedulerSettings(max_long_polls=4))
    with EmbeddedCluster(settings) as cluster:
        stubs = Stubs(cluster)
        try:
            em_id, _ = stubs.register()
            polls = _long_polls(stubs, [em_id], 4)
            try:
                with trio.fail_after(60):
                    await trio.to_thread.run_sync(
                        wait_for, lambda: cluster.scheduler.waiting_polls == 4, 60, "4 long polls"
                    )
                    started = time.monotonic()
                    refused = await trio.to_thread.run_sync(
                        _code, lambda: stubs.next_task(em_id, 30_000)
                    )
                    assert refused is grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() - started < 10  # refused, not queued for 30 s
                    await trio.to_thread.run_sync(_heartbeats, stubs, em_id)
                    assert cluster.scheduler.waiting_polls == 4
            finally:
                for poll in polls:
                    poll.cancel()
        finally:
            stubs.close()


def test_the_status_call_answers_on_storage_and_is_unimplemented_elsewhere(
    cluster: EmbeddedCluster, stubs: Stubs
) -> None:
    status = fetch_status(stubs.storage_channel, timeout_sec=TIMEOUT)
    assert status is not None
    assert status.session_id == cluster.storage.session_id
    assert status.outstanding == 0
    assert status.idle_poll_sec >= 0
    em_id, _ = stubs.register()
    cluster.submit(JobBuilder("s").task("a", "m", "f", [1]).build())
    assert stubs.next_task(em_id, 5000).WhichOneof("result") == "assignment"
    status = fetch_status(stubs.storage_channel, timeout_sec=TIMEOUT)
    assert status is not None
    assert status.outstanding == 1
    assert status.idle_poll_sec < 5
    # A server without the method (here: the scheduler's port) means "no status", not an error.
    assert fetch_status(stubs.scheduler_channel, timeout_sec=TIMEOUT) is None
