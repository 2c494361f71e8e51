"""The public helpers of ``worker.taskio``, with the examples docs/tasks.md shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.executor.conftest import TEST_BOUND_SEC, CollectingSink
from worker import taskio
from worker.executor.pool import open_pool
from worker.executor.settings import PoolSettings
from worker.model import (
    ExecutionRequest,
    JobId,
    ResourceGroupId,
    Success,
    TaskId,
    TaskInstanceId,
)


def test_documented_examples() -> None:
    assert taskio.encode_inputs(10) == b"\x01\x00\x00\x00\x01\x00\x00\x00\x0a"
    assert taskio.decode_outputs(b"\x01\x00\x00\x00\x01\x00\x00\x00\x37") == [55]
    assert taskio.decode_outputs(taskio.encode_outputs((10, "hi"))) == [10, "hi"]
    assert taskio.encode_outputs(None) == taskio.EMPTY_FRAME
    assert taskio.encode_outputs([1, 2]) == bytes.fromhex("01 00 00 00 03 00 00 00 92 01 02")
    buffer = taskio.encode_graph_output_values([3, -1, -2])
    assert taskio.decode_graph_output_values(buffer) == [3, -1, -2]
    compressed = taskio.encode_graph_output_values([3, -1, -2], compress=True)
    assert compressed[0] == 1
    assert taskio.decode_graph_output_values(compressed) == [3, -1, -2]


def test_decode_errors_are_the_documented_types() -> None:
    with pytest.raises(taskio.FrameDecodeError):
        taskio.decode_inputs(b"")
    with pytest.raises(taskio.GraphOutputsDecodeError):
        taskio.decode_graph_output_values(b"\x00" + taskio.encode_frame([b"\xc1"]))
    with pytest.raises(taskio.OutputEncodeError):
        taskio.encode_outputs({1, 2})


async def test_documented_pool_example(tmp_path: Path) -> None:
    (tmp_path / "my_tasks.py").write_text("def add(a, b):\n    return a + b\n")
    request = ExecutionRequest(
        job_id=JobId(1),
        task_id=TaskId.of_index(0),
        task_instance_id=TaskInstanceId(1),
        resource_group_id=ResourceGroupId(1),
        package="my_tasks",
        task_func="add",
        serialized_task_io=taskio.encode_inputs(2, 3),
        hard_timeout_ms=5000,
    )
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(PoolSettings(package_dir=tmp_path), log_sink=CollectingSink()) as pool:
            outcome = await pool.execute(request)
    assert isinstance(outcome, Success)
    assert taskio.decode_outputs(outcome.outputs) == [5]
