"""The cluster-side commands as a user runs them: a closed pipe ends quietly, the cluster's log
keeps its structured fields, and ``--log-level`` beats ``WORKER_LOG_LEVEL`` beats the default."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from tests.cluster.harness import serve_cluster, stop_cluster
from tests.cluster.test_commands import _job_file
from tests.test_cli import run_into_closed_pipe
from worker import cli
from worker.cluster.processes import worker_environment
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc

pytestmark = pytest.mark.cluster


def send_stale_ack(scheduler_port: int) -> None:
    """A NextTask carrying an ack from another scheduler (id 77): the cluster skips it."""
    with grpc.insecure_channel(f"127.0.0.1:{scheduler_port}") as channel:
        request = scheduler_pb2.NextTaskRequest(execution_manager_id=9999, wait_time_ms=0)
        request.prev_assignment.CopyFrom(
            scheduler_pb2.TaskAssignmentRecord(**{"id": 5, "from": 77})
        )
        scheduler_pb2_grpc.SchedulerServiceStub(channel).NextTask(request, timeout=10)


@pytest.mark.parametrize("table", [False, True])
def test_jobs_into_a_closed_pipe_ends_quietly(tmp_path: Path, table: bool) -> None:
    server, storage_port, _, _ = serve_cluster(tmp_path)
    try:
        args = ["jobs", "--port", str(storage_port), *([] if table else ["--json"])]
        done = run_into_closed_pipe(*args)
    finally:
        stop_cluster(server)
    assert done.stderr == ""
    assert done.returncode == cli.EXIT_BROKEN_PIPE


def log_after_a_stale_ack(tmp_path: Path, log_format: str) -> list[str]:
    """The lines a cluster logs (at warning) from a stale ack until it is stopped."""
    server, _, scheduler_port, _ = serve_cluster(tmp_path, options=("--log-format", log_format))
    try:
        send_stale_ack(scheduler_port)
    finally:
        assert stop_cluster(server) == 0
    assert server.stdout is not None
    return [line for line in server.stdout.read().splitlines() if "ack" in line]


def test_the_cluster_console_log_shows_a_skipped_ack_with_its_fields(tmp_path: Path) -> None:
    (line,) = log_after_a_stale_ack(tmp_path, "console")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} WARNING worker\.cluster\.scheduler: ack skipped em_id=9999"
        r' assignment_id=5 from=77 reason="stale scheduler"',
        line,
    ), line


def test_the_cluster_json_log_carries_the_fields(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in log_after_a_stale_ack(tmp_path, "json")]
    assert [(line["message"], line["reason"], line["em_id"]) for line in lines] == [
        ("ack skipped", "stale scheduler", 9999)
    ]


def cluster_log_levels(tmp_path: Path, *flag: str, variable: str | None) -> set[str]:
    """The levels of a cluster's log lines from start to stop, run with ``flag`` and the
    variable."""
    env = worker_environment()
    if variable is not None:
        env["WORKER_LOG_LEVEL"] = variable
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "cluster", *flag, "--log-format", "json"),
            *("--storage-port", "0", "--scheduler-port", "0", "--db", str(tmp_path / "c.db")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert banner.startswith("storage on "), banner + server.communicate(timeout=30)[1]
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait(10)
    assert server.returncode == 0, stderr
    return {json.loads(line)["level"] for line in stderr.splitlines()}


def test_cluster_log_level_flag_beats_the_variable_beats_info(tmp_path: Path) -> None:
    assert "info" in cluster_log_levels(tmp_path, variable=None)
    assert cluster_log_levels(tmp_path, variable="warning") == set()
    assert "info" in cluster_log_levels(tmp_path, "--log-level", "info", variable="error")


def test_cluster_rejects_a_bad_variable_before_serving(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "cluster", "--db", str(tmp_path / "c.db")],
        capture_output=True,
        text=True,
        env={**worker_environment(), "WORKER_LOG_LEVEL": "verbose"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "python -m worker cluster: WORKER_LOG_LEVEL: must be one of debug, info, warning,"
        " error, got 'verbose'\n"
    )
    assert not (tmp_path / "c.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "expected"), [(["--log-level", "warning"], "warning"), ([], "debug")]
)
def test_local_passes_its_level_to_the_workers_and_the_cluster_log(
    tmp_path: Path, flag: list[str], expected: str
) -> None:
    job = _job_file(
        tmp_path / "one.yaml",
        [{"name": "a", "module": "cluster_tasks", "function": "echo", "inputs": [1]}],
    )
    work = tmp_path / "work"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "worker", "local", str(job), *flag, "--workers", "1"),
            *("--workdir", str(work), "--no-progress", "--heartbeat-sec", "0.2"),
            *("--poll-wait-ms", "200"),
        ],
        capture_output=True,
        text=True,
        env={**worker_environment(), "WORKER_LOG_LEVEL": "debug"},
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((work / "worker-1.yaml").read_text(encoding="utf-8"))
    assert config["log"]["level"] == expected
    cluster_log = (work / "cluster.log").read_text().splitlines()
    cluster_levels = {line.split()[2] for line in cluster_log if line}
    assert ("INFO" in cluster_levels) == (expected == "debug")
    if expected == "debug":  # the file keeps each record's fields
        assert any(
            re.search(
                r" INFO worker\.cluster\.storage storage session started session_id=\d+ jobs=0$",
                line,
            )
            for line in cluster_log
        ), cluster_log
