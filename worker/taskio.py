"""Encode task inputs and decode task outputs exactly as the worker and Spider do.

For task authors and tests::

    from worker import taskio

    assert taskio.encode_inputs(10) == b"\\x01\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x0a"
    assert taskio.decode_outputs(b"\\x01\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x37") == [55]
    frame = taskio.encode_outputs((10, "hi"))  # what a task returning (10, "hi") reports
    assert taskio.decode_outputs(frame) == [10, "hi"]
    outputs = taskio.encode_graph_output_values([3, -1, -2])  # a commit task's input
    assert taskio.decode_graph_output_values(outputs) == [3, -1, -2]

Payloads are msgpack (str as str, bytes as bin; decoding accepts integer map keys and gives
lists for arrays). See docs/tasks.md for the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.executor.wire import (
    EMPTY_FRAME,
    FrameDecodeError,
    GraphOutputsDecodeError,
    OutputEncodeError,
    decode_frame,
    decode_graph_outputs,
    decode_graph_payloads,
    decode_values,
    encode_frame,
    encode_graph_outputs,
    encode_payload,
    encode_return,
    encode_values,
)

__all__ = [
    "EMPTY_FRAME",
    "FrameDecodeError",
    "GraphOutputsDecodeError",
    "OutputEncodeError",
    "decode_frame",
    "decode_graph_outputs",
    "encode_frame",
    "decode_graph_output_values",
    "decode_inputs",
    "decode_outputs",
    "encode_graph_outputs",
    "encode_graph_output_values",
    "encode_inputs",
    "encode_outputs",
]


def encode_inputs(*args: Any) -> bytes:
    """The ``serialized_task_io`` frame that calls a task as ``func(*args)``."""
    return encode_values(args)


def decode_inputs(frame: bytes) -> list[Any]:
    """The positional arguments a task receives for ``frame``."""
    return decode_values(frame)


def encode_outputs(value: Any) -> bytes:
    """The output frame of a task that returned ``value`` (None: 0, tuple: n, else: 1 payload)."""
    return encode_return(value)


def decode_outputs(frame: bytes) -> list[Any]:
    """The output values in a reported frame, one per payload."""
    return decode_values(frame)


def encode_graph_output_values(values: Sequence[Any], *, compress: bool | None = None) -> bytes:
    """``SerializedTaskOutputs`` for job outputs ``values`` (zstd above 1024 payload bytes)."""
    return encode_graph_outputs([encode_payload(v) for v in values], compress=compress)


def decode_graph_output_values(data: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> list[Any]:
    """The job outputs in a ``SerializedTaskOutputs`` buffer, decoded."""
    return decode_graph_payloads(decode_graph_outputs(data, max_bytes=max_bytes))
