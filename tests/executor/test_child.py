"""The executor entry point on its own: light imports, graceful exit, and the context accessor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from worker import task
from worker.executor.channel import HEADER, decode_message, encode_message
from worker.executor.pool import _BOOTSTRAP, _WORKER_ROOT, build_environment, executor_command
from worker.executor.settings import PoolSettings


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
    header = os.read(fd, HEADER.size)
    (size,) = HEADER.unpack(header)
    body = b""
    while len(body) < size:
        body += os.read(fd, size - len(body))
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
                    "pkg": "sys",
                    "func": "getrecursionlimit",
                    "io": b"\x00\x00\x00\x00",
                    "hard_ms": 1000,
                }
            ),
        )
        result = read_message(response_read)
        assert result["ok"] is True
    finally:
        os.close(request_write)
        os.close(response_read)
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
    probe = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            f"import sys; sys.path.insert(0, {_WORKER_ROOT!r}); import worker.executor.child; "
            "import worker.task; print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={},
    )
    loaded = set(probe.stdout.split())
    for heavy in ("trio", "attrs", "cattrs", "grpc", "worker.model", "zstandard", "transitions"):
        assert heavy not in loaded, heavy
    assert "msgpack" in loaded
    assert _BOOTSTRAP.startswith("import sys")


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
