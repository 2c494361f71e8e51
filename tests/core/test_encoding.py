"""The exact size of a ReportTaskSuccessRequest, cross-checked against protobuf's ByteSize().

The messages are built from a descriptor declared here from protocol.md section 2 (so this test
does not depend on the transport's generated stubs).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given
from hypothesis import strategies as st

from worker.core.encoding import success_request_size, varint_size
from worker.model import (
    UINT64_MAX,
    ExecutionManagerId,
    JobId,
    SessionId,
    SuccessReport,
    TaskId,
    TaskInstanceId,
)

_F = descriptor_pb2.FieldDescriptorProto


def _message_classes() -> tuple[Any, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="worker_test_encoding.proto", package="wtest", syntax="proto3"
    )
    file.message_type.add(name="Void")
    task_id = file.message_type.add(name="TaskId")
    task_id.oneof_decl.add(name="kind")
    task_id.field.add(
        name="index", number=1, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL, oneof_index=0
    )
    for number, name in ((2, "commit"), (3, "cleanup")):
        task_id.field.add(
            name=name, number=number, type=_F.TYPE_MESSAGE, type_name=".wtest.Void",
            label=_F.LABEL_OPTIONAL, oneof_index=0,
        )  # fmt: skip
    request = file.message_type.add(name="ReportTaskSuccessRequest")
    request.field.add(name="job_id", number=1, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL)
    request.field.add(
        name="task_id", number=2, type=_F.TYPE_MESSAGE, type_name=".wtest.TaskId",
        label=_F.LABEL_OPTIONAL,
    )  # fmt: skip
    for number, name in ((3, "task_instance_id"), (4, "execution_manager_id"), (5, "session_id")):
        request.field.add(name=name, number=number, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL)
    request.field.add(
        name="serialized_outputs", number=6, type=_F.TYPE_BYTES, label=_F.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("wtest.ReportTaskSuccessRequest")
        ),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("wtest.TaskId")),
    )


_REQUEST, _TASK_ID = _message_classes()

_ids = st.one_of(
    st.sampled_from([0, 1, 127, 128, 2**14, 2**63, UINT64_MAX]), st.integers(0, UINT64_MAX)
)
_task_ids = st.one_of(
    st.builds(TaskId.of_index, _ids), st.just(TaskId.commit()), st.just(TaskId.cleanup())
)


def _protobuf_size(report: SuccessReport) -> int:
    message = _REQUEST(
        job_id=report.job_id,
        task_instance_id=report.task_instance_id,
        execution_manager_id=report.execution_manager_id,
        session_id=report.session_id,
        serialized_outputs=report.serialized_outputs,
    )
    if report.task_id.index is not None:
        message.task_id.index = report.task_id.index
    elif report.task_id == TaskId.commit():
        message.task_id.commit.SetInParent()
    else:
        message.task_id.cleanup.SetInParent()
    return int(message.ByteSize())


@given(
    _ids,
    _task_ids,
    _ids,
    _ids,
    _ids,
    st.binary(max_size=300) | st.integers(0, 20_000).map(lambda n: b"z" * n),
)
def test_size_matches_protobuf(
    job: int, task: TaskId, instance: int, em: int, session: int, outputs: bytes
) -> None:
    report = SuccessReport(
        JobId(job),
        task,
        TaskInstanceId(instance),
        ExecutionManagerId(em),
        SessionId(session),
        outputs,
    )
    assert success_request_size(report) == _protobuf_size(report)


def test_varint_sizes() -> None:
    assert [varint_size(v) for v in (0, 1, 127, 128, 16383, 16384, UINT64_MAX)] == [
        1,
        1,
        1,
        2,
        2,
        3,
        10,
    ]


def test_index_zero_is_encoded() -> None:
    report = SuccessReport(
        JobId(0), TaskId.of_index(0), TaskInstanceId(0), ExecutionManagerId(0), SessionId(0), b""
    )
    assert success_request_size(report) == 4  # 12 02 08 00
