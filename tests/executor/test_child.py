"""The executor entry point on its own: light imports, graceful exit, and the context accessor."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgpack
import pytest

from worker import task
from worker.executor.channel import HEADER, decode_message, encode_message, read_frame_blocking
from worker.executor.processes import build_environment, executor_command
from worker.executor.settings import PoolSettings
from worker.executor.wire import decode_values

#: The default ``max_frame_bytes`` the executors started here run with.
FRAME_LIMIT = 8 * 1024 * 1024


def start_child(package_dir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start the built-in executor directly; returns it and the parent's channel fds."""
    request_read, request_write = os.pipe()
    response_read, response_write = os.pipe()
    settings = PoolSettings(package_dir=package_dir)
    env, _missing = build_environment(settings)
    command = executor_command(settings, in_fd=request_read, out_fd=response_write, nonce="00ff")
    child = subprocess.Popen(
        command,
        pass_fds=(request_read, response_write),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(request_read)
    os.close(response_write)
    return child, request_write, response_read


def read_message(fd: int) -> dict[str, object]:
    """One message from the executor (blocking)."""
    body = read_frame_blocking(fd, FRAME_LIMIT)
    assert body is not None, "the executor closed its channel"
    return decode_message(body)


@pytest.mark.parametrize(
    ("to_send", "expected_code"),
    [
        (encode_message({"t": "shutdown"}), 0),
        (b"", 0),  # EOF
        (HEADER.pack(3) + b"\xc1\xc1\xc1", 2),  # undecodable
        (HEADER.pack(2**31), 2),  # oversized header
        (encode_message({"t": "what"}), 2),
    ],
)
def test_graceful_exit_and_bad_frames(
    package_dir: Path, to_send: bytes, expected_code: int
) -> None:
    child, request_write, response_read = start_child(package_dir)
    try:
        ready = read_message(response_read)
        assert ready["t"] == "ready"
        assert ready["v"] == 1
        assert ready["pid"] == child.pid
        if to_send:
            os.write(request_write, to_send)
        os.close(request_write)
        request_write = -1
        assert child.wait(timeout=30) == expected_code
    finally:
        if request_write >= 0:
            os.close(request_write)
        os.close(response_read)
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_executor_imports_stay_light(package_dir: Path) -> None:
    # the footprint of the executor as the pool starts it, after it has run an index task
    child, request_write, response_read = start_child(package_dir)
    try:
        read_message(response_read)
        os.write(
            request_write,
            encode_message(
                {
                    "t": "exec",
                    "id": 0,
                    "job": 1,
                    "kind": "index",
                    "index": 0,
                    "inst": 1,
                    "rg": 1,
                    "pkg": "worker_testtasks",
                    "func": "loaded_modules",
                    "io": b"\x00\x00\x00\x00",
                    "hard_ms": 1000,
                }
            ),
        )
        result = read_message(response_read)
        assert result["ok"] is True, result
        out = result["out"]
        assert isinstance(out, bytes)
    finally:
        os.close(request_write)
        os.close(response_read)
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
    [loaded] = decode_values(out)
    for heavy in ("trio", "attrs", "cattrs", "grpc", "worker.model", "zstandard", "transitions"):
        assert heavy not in loaded, heavy
    assert "msgpack" in loaded
    assert "worker.executor.child" in loaded


def test_accessor_raises_outside_a_task() -> None:
    with pytest.raises(task.NoTaskContextError, match="no task is running"):
        task.current()


def test_graph_outputs_outside_commit_name_the_commit_task() -> None:
    context = task.TaskContext(
        job_id=1,
        task_id=task.TaskRef("index", 0),
        task_instance_id=2,
        resource_group_id=3,
        package="p",
        task_func="f",
    )
    with pytest.raises(task.NotACommitTaskError, match="commit task"):
        context.graph_outputs()
    commit = task.TaskContext(
        job_id=1,
        task_id=task.TaskRef("commit"),
        task_instance_id=2,
        resource_group_id=3,
        package="p",
        task_func="f",
        serialized_graph_outputs=b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x07",
    )
    assert commit.graph_outputs() == [7]
    assert commit.raw_graph_outputs() == [msgpack.packb(7)]
