"""Exact protobuf sizes of the requests the worker must bound before sending.

``ReportTaskSuccessRequest`` (protocol.md section 2.3) is six fields, all with one-byte tags:
uint64 ``job_id`` (1), message ``task_id`` (2), uint64 ``task_instance_id`` (3),
``execution_manager_id`` (4), ``session_id`` (5) and bytes ``serialized_outputs`` (6). proto3
omits a scalar equal to its default; the ``task_id`` message is always present, and its oneof
member is always encoded (``index`` 0 included).
"""

from __future__ import annotations

from worker.model import SuccessReport, TaskId, TaskKind

__all__ = ["success_request_size", "task_id_size", "varint_size"]

_TAG_SIZE = 1  # every field number used here is below 16


def varint_size(value: int) -> int:
    """Bytes of the base-128 varint encoding of a non-negative ``value``."""
    if value < 0:
        raise ValueError("varint_size() takes non-negative integers")
    return max(1, (value.bit_length() + 6) // 7)


def _scalar_field_size(value: int) -> int:
    return 0 if value == 0 else _TAG_SIZE + varint_size(value)


def _length_delimited_size(length: int) -> int:
    return _TAG_SIZE + varint_size(length) + length


def task_id_size(task_id: TaskId) -> int:
    """Bytes of an encoded ``common.TaskId`` body (its oneof member is always present)."""
    if task_id.kind is TaskKind.INDEX:
        assert task_id.index is not None
        return _TAG_SIZE + varint_size(task_id.index)
    return _length_delimited_size(0)  # commit/cleanup: an empty common.Void


def success_request_size(report: SuccessReport) -> int:
    """The exact ``ByteSize()`` of the ``ReportTaskSuccessRequest`` built from ``report``."""
    outputs = len(report.serialized_outputs)
    return (
        _scalar_field_size(report.job_id)
        + _length_delimited_size(task_id_size(report.task_id))
        + _scalar_field_size(report.task_instance_id)
        + _scalar_field_size(report.execution_manager_id)
        + _scalar_field_size(report.session_id)
        + (0 if outputs == 0 else _length_delimited_size(outputs))
    )
