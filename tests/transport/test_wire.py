"""Golden bytes: requests hand-computed from the protobuf encoding rules, captured on the wire.

Each expected byte string is written from the field numbers and wire types of protocol.md
section 2 (tag = field_number << 3 | wire_type; 0 = varint, 2 = length-delimited), so a
field-number slip in the .proto files or in the conversion cannot pass.
"""

from __future__ import annotations

import pytest
import trio

from tests.transport.clients import EM_ID, METHOD_PATHS, NO_TASK, Clients
from tests.transport.scripted import ScriptedServer
from worker.errors import MalformedContextError, ProtocolError, Rpc
from worker.model import (
    AssignmentId,
    ExecutionContext,
    ExecutionManagerId,
    FailureReport,
    JobId,
    Registration,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    SuccessReport,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
    TdlContext,
    TimeoutPolicy,
)
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2
from worker.transport.channels import ChannelPool
from worker.transport.convert import next_task_request, task_id_to_proto

VOID = b""


def record(assignment_id: int, scheduler_id: int) -> TaskAssignmentRecord:
    return TaskAssignmentRecord(AssignmentId(assignment_id), SchedulerId(scheduler_id))


# --- Pure encoding (no server) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_id", "golden"),
    [
        (TaskId.of_index(0), "08 00"),  # index 0 is set: kind "index", value 0 still encoded
        (TaskId.of_index(300), "08 ac 02"),
        (TaskId.commit(), "12 00"),
        (TaskId.cleanup(), "1a 00"),
    ],
)
def test_task_id_bytes(task_id: TaskId, golden: str) -> None:
    assert task_id_to_proto(task_id).SerializeToString() == bytes.fromhex(golden)


@pytest.mark.parametrize(
    ("prev_assignment", "golden"),
    [
        (None, "08 01 18 e8 07"),  # protocol.md 2.5: nothing to ack -> field 2 absent
        (record(0, 7), "08 01 12 02 10 07 18 e8 07"),  # protocol.md 2.5: id 0 omitted inside
        (record(0, 3), "08 01 12 02 10 03 18 e8 07"),
        (record(5, 3), "08 01 12 04 08 05 10 03 18 e8 07"),
    ],
)
def test_next_task_request_bytes(prev_assignment: TaskAssignmentRecord | None, golden: str) -> None:
    request = next_task_request(ExecutionManagerId(1), prev_assignment, 1000)
    assert request.SerializeToString() == bytes.fromhex(golden)
    assert request.HasField("prev_assignment") is (prev_assignment is not None)


def test_an_empty_record_is_a_set_field() -> None:
    # The pitfall the client avoids: constructing an empty record *sets* the field.
    request = scheduler_pb2.NextTaskRequest(
        execution_manager_id=1,
        wait_time_ms=1000,
        prev_assignment=scheduler_pb2.TaskAssignmentRecord(),
    )
    assert request.SerializeToString() == bytes.fromhex("08 01 12 00 18 e8 07")


# --- Requests as the server receives them -----------------------------------------------------


async def test_next_task_without_ack_leaves_prev_assignment_unset(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    server.reply(METHOD_PATHS[Rpc.NEXT_TASK], NO_TASK)
    with trio.fail_after(20):
        answer = await Clients.over(channels).scheduler.next_task(EM_ID, None, 1000)
    assert answer is None
    (call,) = server.calls()
    assert call.request == bytes.fromhex("08 01 18 e8 07")
    received = scheduler_pb2.NextTaskRequest.FromString(call.request)
    assert not received.HasField("prev_assignment")


async def test_next_task_carries_the_ack_with_its_from_field(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    server.reply(METHOD_PATHS[Rpc.NEXT_TASK], NO_TASK)
    with trio.fail_after(20):
        await Clients.over(channels).scheduler.next_task(EM_ID, record(0, 3), 1000)
    (call,) = server.calls()
    assert call.request == bytes.fromhex("08 01 12 02 10 03 18 e8 07")
    received = scheduler_pb2.NextTaskRequest.FromString(call.request)
    assert received.HasField("prev_assignment")
    assert received.prev_assignment.id == 0
    assert getattr(received.prev_assignment, "from") == 3


async def test_zero_wait_is_not_encoded(server: ScriptedServer, channels: ChannelPool) -> None:
    server.reply(METHOD_PATHS[Rpc.NEXT_TASK], NO_TASK)
    with trio.fail_after(20):
        await Clients.over(channels).scheduler.next_task(ExecutionManagerId(2), None, 0)
    assert server.calls()[0].request == bytes.fromhex("08 02")


async def test_shutdown_carries_every_record_in_order(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    server.reply(METHOD_PATHS[Rpc.SHUTDOWN], VOID)
    with trio.fail_after(20):
        await Clients.over(channels).scheduler.shutdown(EM_ID, [record(0, 3), record(4, 3)])
    # {em 1, prev_assignments: [{id 0, from 3}, {id 4, from 3}]}
    assert server.calls()[0].request == bytes.fromhex("08 01 12 02 10 03 12 04 08 04 10 03")


async def test_shutdown_without_records(server: ScriptedServer, channels: ChannelPool) -> None:
    server.reply(METHOD_PATHS[Rpc.SHUTDOWN], VOID)
    with trio.fail_after(20):
        await Clients.over(channels).scheduler.shutdown(EM_ID, [])
    assert server.calls()[0].request == bytes.fromhex("08 01")


async def test_heartbeats_and_registration_bytes(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    clients = Clients.over(channels)
    server.reply(METHOD_PATHS[Rpc.SCHEDULER_HEARTBEAT], VOID)
    # UpdateExecutionManagerHeartbeatResponse{session_id: 5}
    server.reply(METHOD_PATHS[Rpc.STORAGE_HEARTBEAT], bytes.fromhex("08 05"))
    # RegisterExecutionManagerResponse{registration: {execution_manager_id: 300, session_id: 2}}
    server.reply(
        METHOD_PATHS[Rpc.REGISTER_EXECUTION_MANAGER], bytes.fromhex("0a 05 08 ac 02 10 02")
    )
    with trio.fail_after(20):
        await clients.scheduler.heartbeat(ExecutionManagerId(300))
        session = await clients.liveness.heartbeat(ExecutionManagerId(300))
        registration = await clients.liveness.register("0.0.0.0")
    assert session == 5
    assert registration == Registration(ExecutionManagerId(300), SessionId(2))
    requests = [call.request for call in server.calls()]
    assert requests == [
        bytes.fromhex("08 ac 02"),
        bytes.fromhex("08 ac 02"),
        bytes.fromhex("0a 07") + b"0.0.0.0",
    ]


async def test_register_task_instance_bytes_and_context(
    server: ScriptedServer, channels: ChannelPool
) -> None:
    # RegisterTaskInstanceResponse{execution_context: {task_instance_id: 9,
    #   tdl_context: {package: "m", task_func: "f"}, timeout_policy: {soft: 100, hard: 200},
    #   serialized_task_io: 00 00 00 00}}
    context = bytes.fromhex("08 09 12 06 0a 01 6d 12 01 66 1a 05 08 64 10 c8 01 22 04 00 00 00 00")
    server.reply(METHOD_PATHS[Rpc.REGISTER_TASK_INSTANCE], bytes([0x0A, len(context)]) + context)
    with trio.fail_after(20):
        answer = await Clients.over(channels).storage.register_task_instance(
            JobId(2), TaskId.of_index(0), EM_ID, SessionId(3)
        )
    assert answer == ExecutionContext(
        TaskInstanceId(9), TdlContext("m", "f"), TimeoutPolicy(100, 200), b"\0\0\0\0"
    )
    # {job 2, task_id {index 0}, em 1, session 3}
    assert server.calls()[0].request == bytes.fromhex("08 02 12 02 08 00 18 01 20 03")


async def test_report_bytes(server: ScriptedServer, channels: ChannelPool) -> None:
    server.reply(METHOD_PATHS[Rpc.REPORT_TASK_SUCCESS], VOID)
    server.reply(METHOD_PATHS[Rpc.REPORT_TASK_FAILURE], VOID)
    storage = Clients.over(channels).storage
    success = SuccessReport(
        JobId(2), TaskId.commit(), TaskInstanceId(9), EM_ID, SessionId(3), b"\0\0\0\0"
    )
    failure = FailureReport(JobId(1), TaskId.cleanup(), TaskInstanceId(1), EM_ID, SessionId(1), "x")
    with trio.fail_after(20):
        await storage.report_task_success(success)
        await storage.report_task_failure(failure)
    success_bytes, failure_bytes = (call.request for call in server.calls())
    assert success_bytes == bytes.fromhex("08 02 12 02 12 00 18 09 20 01 28 03 32 04 00 00 00 00")
    assert failure_bytes == bytes.fromhex("08 01 12 02 1a 00 18 01 20 01 28 01 32 01 78")


# --- Answers decoded from hand-written bytes --------------------------------------------------


async def test_assignment_decoding(server: ScriptedServer, channels: ChannelPool) -> None:
    # SchedulerAssignment{id 0, rg 1, job 2, task_id {index 0}, scheduler 3, session 4}
    assignment = bytes.fromhex("10 01 18 02 22 02 08 00 28 03 30 04")
    server.reply(METHOD_PATHS[Rpc.NEXT_TASK], bytes([0x0A, len(assignment)]) + assignment)
    with trio.fail_after(20):
        answer = await Clients.over(channels).scheduler.next_task(EM_ID, None, 10)
    assert answer == SchedulerAssignment(
        TaskAssignment(
            AssignmentId(0), ResourceGroupId(1), JobId(2), TaskId.of_index(0), SessionId(4)
        ),
        SchedulerId(3),
    )


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ("", "no result"),  # empty body: result unset
        ("0a 00", "no task id"),  # assignment without task_id
        ("0a 04 10 01 22 00", "no kind"),  # task_id present, kind unset
    ],
)
async def test_malformed_next_task_answers(
    server: ScriptedServer, channels: ChannelPool, response: str, problem: str
) -> None:
    server.reply(METHOD_PATHS[Rpc.NEXT_TASK], bytes.fromhex(response))
    with trio.fail_after(20), pytest.raises(ProtocolError, match=problem) as raised:
        await Clients.over(channels).scheduler.next_task(EM_ID, None, 10)
    assert raised.value.rpc is Rpc.NEXT_TASK


@pytest.mark.parametrize(
    ("response", "missing"),
    [
        ("", "execution_context is missing"),
        ("0a 04 1a 02 10 01", "tdl_context"),  # timeout_policy only
        ("0a 05 12 03 0a 01 6d", "timeout_policy"),  # tdl_context only
    ],
)
async def test_incomplete_execution_context(
    server: ScriptedServer, channels: ChannelPool, response: str, missing: str
) -> None:
    server.reply(METHOD_PATHS[Rpc.REGISTER_TASK_INSTANCE], bytes.fromhex(response))
    with trio.fail_after(20), pytest.raises(MalformedContextError, match=missing):
        await Clients.over(channels).storage.register_task_instance(
            JobId(2), TaskId.cleanup(), EM_ID, SessionId(3)
        )


async def test_registration_missing(server: ScriptedServer, channels: ChannelPool) -> None:
    server.reply(METHOD_PATHS[Rpc.REGISTER_EXECUTION_MANAGER], VOID)
    with trio.fail_after(20), pytest.raises(ProtocolError, match="registration") as raised:
        await Clients.over(channels).liveness.register("0.0.0.0")
    assert not isinstance(raised.value, MalformedContextError)


def test_void_is_empty() -> None:
    assert common_pb2.Void().SerializeToString() == b""
