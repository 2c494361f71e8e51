"""The status commands (``jobs``, ``status``, ``result``, ``cancel``, ``workers``) as subprocesses
against a real ``python -m worker cluster`` with a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import run_command, serve_cluster, stop_cluster, wait_for
from tests.cluster.test_commands import _job_file, _worker_config
from worker.cluster.processes import WorkerProcess, worker_environment

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TIMEOUT = 120.0


@contextmanager
def cluster_and_worker(tmp_path: Path) -> Iterator[tuple[int, WorkerProcess]]:
    server, storage_port, scheduler_port, _ = serve_cluster(tmp_path)
    worker = WorkerProcess("worker", _worker_config(storage_port, scheduler_port), tmp_path)
    try:
        yield storage_port, worker
    finally:
        worker.close()
        stop_cluster(server)


def admin(tmp_path: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_command([*args, "--port", str(port)], tmp_path)


def admin_json(tmp_path: Path, port: int, *args: str) -> Any:
    done = admin(tmp_path, port, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def submit(tmp_path: Path, port: int, job: Path) -> int:
    done = run_command(["submit", str(job), "--port", str(port)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.strip())


def sum_job(tmp_path: Path) -> Path:
    return _job_file(
        tmp_path / "sum.yaml",
        [
            {"name": "left", "module": "cluster_tasks", "function": "echo", "inputs": [20]},
            {"name": "right", "module": "cluster_tasks", "function": "echo", "inputs": [22]},
            {
                "name": "total",
                "module": "cluster_tasks",
                "function": "add",
                "inputs": [{"ref": "left"}, {"ref": "right"}],
            },
        ],
    )


def test_jobs_status_result_and_workers_follow_a_job_run_by_a_worker(tmp_path: Path) -> None:
    with cluster_and_worker(tmp_path) as (port, worker):
        job_id = submit(tmp_path, port, sum_job(tmp_path))
        watched = admin(tmp_path, port, "status", str(job_id), "--watch", "--json")
        assert watched.returncode == 0, watched.stdout + watched.stderr + worker.log_text()
        snapshots = [json.loads(line) for line in watched.stdout.splitlines()]
        final = snapshots[-1]
        assert final["job"]["state"] == "SUCCEEDED"
        assert final["job"]["tasks"]["succeeded"] == final["job"]["tasks"]["total"] == 3
        assert [t["name"] for t in final["tasks"]] == ["left", "right", "total"]
        assert [t["function"] for t in final["tasks"]] == [
            "cluster_tasks.echo",
            "cluster_tasks.echo",
            "cluster_tasks.add",
        ]
        assert all(t["state"] == "succeeded" and t["attempts"] == 1 for t in final["tasks"])
        assert all(t["last_error"] == "" for t in final["tasks"])

        (listed,) = [job for job in admin_json(tmp_path, port, "jobs") if job["job_id"] == job_id]
        assert listed["name"] == "sum"
        assert listed["state"] == "SUCCEEDED"
        assert listed["finished_at"] is not None
        assert admin_json(tmp_path, port, "result", str(job_id)) == {
            "job_id": job_id,
            "state": "SUCCEEDED",
            "outputs": [42],
        }
        human = admin(tmp_path, port, "result", str(job_id))
        assert (human.returncode, human.stdout) == (0, "42\n")

        (registered,) = admin_json(tmp_path, port, "workers")
        assert registered["state"] == "alive"
        assert registered["running"] == []
        assert registered["seconds_since_heartbeat"] < 5

        tables = {
            command: admin(tmp_path, port, *command.split())
            for command in ("jobs", f"status {job_id}", "workers")
        }
        for command, done in tables.items():
            assert done.returncode == 0, command + done.stderr
        assert "SUCCEEDED" in tables["jobs"].stdout
        assert "3/3 succeeded" in tables["jobs"].stdout
        for name in ("left", "right", "total", "cluster_tasks.add"):
            assert name in tables[f"status {job_id}"].stdout
        assert "alive" in tables["workers"].stdout


def test_failed_task_shows_attempts_and_last_error(tmp_path: Path) -> None:
    job = _job_file(
        tmp_path / "bad.yaml",
        [
            {
                "name": "doomed",
                "module": "cluster_tasks",
                "function": "always_fail",
                "outputs": 0,
                "retries": 1,
            }
        ],
    )
    with cluster_and_worker(tmp_path) as (port, worker):
        job_id = submit(tmp_path, port, job)
        watched = admin(tmp_path, port, "status", str(job_id), "--watch", "--json")
        assert watched.returncode == 1, watched.stdout + watched.stderr + worker.log_text()
        final = json.loads(watched.stdout.splitlines()[-1])
        assert final["job"]["state"] == "FAILED"
        assert "this task always fails" in final["job"]["error"]
        (task,) = final["tasks"]
        assert (task["name"], task["state"], task["attempts"], task["failures"]) == (
            "doomed",
            "failed",
            2,
            2,
        )
        assert "ValueError: this task always fails" in task["last_error"]
        result = admin(tmp_path, port, "result", str(job_id))
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith(f"result: job {job_id} FAILED: ")
        assert len(result.stderr.splitlines()) == 1


def test_cancel_runs_the_cleanup_task_and_workers_shows_the_running_task(tmp_path: Path) -> None:
    job = tmp_path / "cancel-me.yaml"
    job.write_text(
        json.dumps(
            {
                "name": "cancel-me",
                "package_dir": str(Path(__file__).resolve().parent / "tasks"),
                "tasks": [
                    {
                        "name": "nap",
                        "module": "cluster_tasks",
                        "function": "sleepy",
                        "inputs": [3, 1],
                    },
                    {
                        "name": "after",
                        "module": "cluster_tasks",
                        "function": "echo",
                        "inputs": [{"ref": "nap"}],
                    },
                ],
                "cleanup": {"module": "cluster_tasks", "function": "cleanup"},
            }
        )
    )
    with cluster_and_worker(tmp_path) as (port, worker):
        job_id = submit(tmp_path, port, job)

        def running() -> list[dict[str, Any]]:
            return [t for w in admin_json(tmp_path, port, "workers") for t in w["running"]]

        wait_for(lambda: bool(running()), TIMEOUT, "the worker to run the first task")
        (task,) = running()
        assert (task["job_id"], task["name"], task["key"]) == (job_id, "nap", "index:0")

        cancelled = admin(tmp_path, port, "cancel", str(job_id))
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        assert cancelled.stdout == f"job {job_id}: cancelled; its cleanup task is queued\n"
        watched = admin(tmp_path, port, "status", str(job_id), "--watch", "--json")
        assert watched.returncode == 1, watched.stdout + watched.stderr + worker.log_text()
        final = json.loads(watched.stdout.splitlines()[-1])
        assert final["job"]["state"] == "CANCELLED"
        states = {t["name"]: (t["state"], t["attempts"]) for t in final["tasks"]}
        assert states["after"] == ("cancelled", 0)
        assert states["cleanup"] == ("succeeded", 1)  # the cleanup task ran on the worker

        again = admin(tmp_path, port, "cancel", str(job_id), "--json")
        assert again.returncode == 1
        assert again.stdout == ""
        assert again.stderr == "cancel: job is CANCELLED\n"


def test_errors_are_one_line_on_stderr(tmp_path: Path) -> None:
    with cluster_and_worker(tmp_path) as (port, _worker):
        for command in ("status", "result", "cancel"):
            missing = admin(tmp_path, port, command, "999")
            assert (missing.returncode, missing.stdout) == (1, ""), command
            assert missing.stderr == f"{command}: job 999 not found\n"
    # The cluster is gone now.
    unreachable = admin(tmp_path, port, "jobs")
    assert unreachable.returncode == 3
    assert unreachable.stdout == ""
    assert unreachable.stderr.startswith(f"jobs: storage at 127.0.0.1:{port}: UNAVAILABLE")
    assert len(unreachable.stderr.splitlines()) == 1
    usage = run_command(["status", "not-a-number"], tmp_path)
    assert usage.returncode == 2
    assert usage.stdout == ""


def test_status_watch_rides_out_a_storage_restart(tmp_path: Path) -> None:
    job = _job_file(
        tmp_path / "slow.yaml",
        [{"name": "slow", "module": "cluster_tasks", "function": "sleepy", "inputs": [2, 5]}],
    )
    server, storage_port, scheduler_port, _ = serve_cluster(tmp_path)
    worker = WorkerProcess("worker", _worker_config(storage_port, scheduler_port), tmp_path)
    watch: subprocess.Popen[str] | None = None
    try:
        job_id = submit(tmp_path, storage_port, job)
        watch = subprocess.Popen(
            [
                *(sys.executable, "-m", "worker", "status", str(job_id), "--watch", "--json"),
                *("--port", str(storage_port), "--interval", "0.1"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_environment(),
            cwd=tmp_path,
        )
        stdout, stderr = watch.stdout, watch.stderr
        assert stdout is not None
        assert stderr is not None
        first = json.loads(stdout.readline())
        assert first["job"]["job_id"] == job_id
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(stderr), daemon=True)
        reader.start()
        # Storage goes away (and its session with it), then comes back on the same ports.
        assert stop_cluster(server) == 0
        wait_for(lambda: any("reconnecting" in line for line in errors), TIMEOUT, "a reconnect")
        server, _, _, session = serve_cluster(tmp_path, str(storage_port), str(scheduler_port))
        assert session == 2
        rest = stdout.read()  # until the watch exits (the test's own timeout bounds it)
        watch.wait(timeout=TIMEOUT)
        reader.join(timeout=10)
        assert watch.returncode == 0, rest + "".join(errors) + worker.log_text()
        assert json.loads(rest.splitlines()[-1])["job"]["state"] == "SUCCEEDED"
        assert errors[0].startswith(f"status: storage at 127.0.0.1:{storage_port} unreachable")
        assert any(line.endswith("is back\n") for line in errors)
        assert len(errors) == 2, errors
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait(10)
        worker.close()
        stop_cluster(server)
