"""Model <-> protobuf conversion properties, and the runtime's exact success-request size."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from worker.core.encoding import success_request_size
from worker.errors import Rpc
from worker.model import (
    UINT64_MAX,
    AssignmentId,
    ExecutionManagerId,
    JobId,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    SuccessReport,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
)
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2
from worker.transport.convert import (
    assignment_from_proto,
    next_task_request,
    record_from_proto,
    record_to_proto,
    shutdown_request,
    success_report_to_proto,
    task_id_from_proto,
    task_id_to_proto,
)

uint64 = st.integers(min_value=0, max_value=UINT64_MAX)
task_ids = st.one_of(
    st.builds(TaskId.of_index, uint64), st.just(TaskId.commit()), st.just(TaskId.cleanup())
)
records = st.builds(TaskAssignmentRecord, uint64.map(AssignmentId), uint64.map(SchedulerId))
reports = st.builds(
    SuccessReport,
    job_id=uint64.map(JobId),
    task_id=task_ids,
    task_instance_id=uint64.map(TaskInstanceId),
    execution_manager_id=uint64.map(ExecutionManagerId),
    session_id=uint64.map(SessionId),
    serialized_outputs=st.binary(max_size=300),
)


@given(task_ids)
def test_task_id_round_trip(task_id: TaskId) -> None:
    wire = task_id_to_proto(task_id).SerializeToString()
    decoded = task_id_from_proto(common_pb2.TaskId.FromString(wire), Rpc.NEXT_TASK)
    assert decoded == task_id


@given(records)
def test_record_round_trip_keeps_from(record: TaskAssignmentRecord) -> None:
    message = record_to_proto(record)
    assert getattr(message, "from") == record.from_scheduler_id
    assert (
        record_from_proto(
            scheduler_pb2.TaskAssignmentRecord.FromString(message.SerializeToString())
        )
        == record
    )


@given(st.one_of(st.none(), records), uint64, uint64)
def test_prev_assignment_presence_follows_the_ack(
    ack: TaskAssignmentRecord | None, em_id: int, wait: int
) -> None:
    request = next_task_request(ExecutionManagerId(em_id), ack, wait)
    decoded = scheduler_pb2.NextTaskRequest.FromString(request.SerializeToString())
    assert decoded.HasField("prev_assignment") is (ack is not None)
    if ack is not None:
        assert record_from_proto(decoded.prev_assignment) == ack


@given(st.lists(records, max_size=8), uint64)
def test_shutdown_keeps_record_order(batch: list[TaskAssignmentRecord], em_id: int) -> None:
    request = shutdown_request(ExecutionManagerId(em_id), batch)
    decoded = scheduler_pb2.ShutdownRequest.FromString(request.SerializeToString())
    assert [record_from_proto(r) for r in decoded.prev_assignments] == batch


@given(uint64, uint64, uint64, task_ids, uint64, uint64)
def test_assignment_round_trip(
    assignment_id: int, group: int, job: int, task_id: TaskId, scheduler: int, session: int
) -> None:
    response = scheduler_pb2.NextTaskResponse(
        assignment=scheduler_pb2.SchedulerAssignment(
            id=assignment_id,
            resource_group_id=group,
            job_id=job,
            task_id=task_id_to_proto(task_id),
            scheduler_id=scheduler,
            session_id=session,
        )
    )
    decoded = assignment_from_proto(
        scheduler_pb2.NextTaskResponse.FromString(response.SerializeToString())
    )
    assert decoded == SchedulerAssignment(
        TaskAssignment(
            AssignmentId(assignment_id),
            ResourceGroupId(group),
            JobId(job),
            task_id,
            SessionId(session),
        ),
        SchedulerId(scheduler),
    )


@given(reports)
def test_success_request_size_matches_protobuf(report: SuccessReport) -> None:
    message = success_report_to_proto(report)
    assert success_request_size(report) == message.ByteSize()
    assert len(message.SerializeToString()) == message.ByteSize()
