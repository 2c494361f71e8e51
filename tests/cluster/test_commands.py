"""The commands as subprocesses: ``cluster`` + ``submit --wait`` with a real worker, and ``local``'s
exit codes for a failing job and a bad job file."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import TASKS_DIR
from worker.cluster.processes import WorkerProcess, worker_environment

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _run(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_environment(),
        cwd=cwd,
        check=False,
    )


def _job_file(path: Path, tasks: list[dict[str, object]]) -> Path:
    path.write_text(
        yaml.safe_dump({"name": path.stem, "package_dir": str(TASKS_DIR), "tasks": tasks}),
        encoding="utf-8",
    )
    return path


def _serve(tmp_path: Path, *ports: str) -> tuple[subprocess.Popen[str], int, int, int]:
    """Start ``python -m worker cluster``; returns it, its storage and scheduler ports, session."""
    storage_port, scheduler_port = ports if ports else ("0", "0")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "cluster"),
            *("--storage-port", storage_port, "--scheduler-port", scheduler_port),
            *("--db", str(tmp_path / "c.db"), "--log-level", "warning"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=worker_environment(),
        cwd=tmp_path,
    )
    assert server.stdout is not None
    banner = server.stdout.readline()
    pattern = r"storage on [\d.]+:(\d+), scheduler on [\d.]+:(\d+), session (\d+)"
    match = re.search(pattern, banner)
    if not match:
        server.kill()
        server.wait(10)
        raise AssertionError(banner + server.stdout.read())
    return server, int(match[1]), int(match[2]), int(match[3])


def _stop(server: subprocess.Popen[str]) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=30)
    finally:
        server.kill()
        server.wait(10)


def _worker_config(storage_port: int, scheduler_port: int) -> dict[str, object]:
    return {
        "storage": {"host": "127.0.0.1", "port": storage_port},
        "scheduler": {"host": "127.0.0.1", "port": scheduler_port},
        "connection_pool_size": 1,
        "scheduler_poll_wait_ms": 200,
        "liveness": {
            "storage_heartbeat_interval_sec": 0.2,
            "scheduler_heartbeat_interval_sec": 0.2,
        },
        "task_executor": {"package_dir": str(TASKS_DIR)},
    }


def test_cluster_serves_submit_wait_and_a_worker_runs_the_job(tmp_path: Path) -> None:
    server, storage_port, scheduler_port, _ = _serve(tmp_path)
    worker: WorkerProcess | None = None
    try:
        config = _worker_config(storage_port, scheduler_port)
        worker = WorkerProcess("worker", config, tmp_path)
        job = _job_file(
            tmp_path / "sum.yaml",
            [
                {"name": "a", "module": "cluster_tasks", "function": "echo", "inputs": [20]},
                {"name": "b", "module": "cluster_tasks", "function": "echo", "inputs": [22]},
                {
                    "name": "s",
                    "module": "cluster_tasks",
                    "function": "add",
                    "inputs": [{"ref": "a"}, {"ref": "b"}],
                },
            ],
        )
        done = _run(
            ["submit", str(job), "--port", str(storage_port), "--wait", "--timeout", "120"],
            tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr + worker.log_text()
        lines = done.stdout.splitlines()
        assert lines[0].isdigit()
        assert f"job {lines[0]}: SUCCEEDED" in done.stdout
        assert "outputs: 42" in done.stdout
        assert worker.stop(timeout_sec=60) == 0
    finally:
        if worker is not None:
            worker.close()
        code = _stop(server)
    assert code == 0


def test_a_restarted_cluster_recovers_the_unfinished_job_in_a_new_session(tmp_path: Path) -> None:
    job = _job_file(
        tmp_path / "one.yaml",
        [{"name": "a", "module": "cluster_tasks", "function": "echo", "inputs": [7]}],
    )
    server, storage_port, scheduler_port, first_session = _serve(tmp_path)
    try:
        submitted = _run(["submit", str(job), "--port", str(storage_port)], tmp_path)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = submitted.stdout.strip()
    finally:
        assert _stop(server) == 0
    # Nobody ran it; the next storage process finds it RUNNING in the database and re-enqueues it.
    server, storage_port, scheduler_port, second_session = _serve(
        tmp_path, str(storage_port), str(scheduler_port)
    )
    worker = WorkerProcess("worker", _worker_config(storage_port, scheduler_port), tmp_path)
    try:
        assert second_session == first_session + 1
        followed = _run(
            ["submit", str(job), "--port", str(storage_port), "--wait", "--timeout", "120"],
            tmp_path,
        )
        assert followed.returncode == 0, followed.stdout + worker.log_text()
        channel_state = subprocess.run(
            [sys.executable, "-c", _JOB_STATE, str(storage_port), job_id],
            capture_output=True,
            text=True,
            timeout=60,
            env=worker_environment(),
            check=False,
        )
        assert channel_state.stdout.strip() == "SUCCEEDED", channel_state.stderr
    finally:
        worker.close()
        _stop(server)


_JOB_STATE = """
import sys, time, grpc
from worker.cluster.storage import JobState
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    stub = storage_pb2_grpc.JobOrchestrationServiceStub(channel)
    deadline = time.monotonic() + 60
    while True:
        reply = stub.GetJobState(storage_pb2.JobIdRequest(job_id=int(sys.argv[2])), timeout=10)
        if JobState(reply.state).terminal or time.monotonic() > deadline:
            break
        time.sleep(0.05)
print(JobState(reply.state).name)
"""


def test_local_exits_1_for_a_failed_job_and_2_for_a_bad_job_file(tmp_path: Path) -> None:
    failing = _job_file(
        tmp_path / "fail.yaml",
        [{"name": "bad", "module": "cluster_tasks", "function": "always_fail", "outputs": 0}],
    )
    failed = _run(["local", str(failing), "--workers", "1", "--no-progress"], tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "in-task failure: ValueError: this task always fails" in failed.stdout
    bad = _job_file(
        tmp_path / "bad.yaml",
        [{"name": "x", "module": "cluster_tasks", "function": "echo", "inputs": [{"ref": "y"}]}],
    )
    rejected = _run(["local", str(bad)], tmp_path)
    assert rejected.returncode == 2
    assert "task 'x': inputs[0]: unknown task 'y'" in rejected.stdout
