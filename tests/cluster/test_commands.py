"""The commands as subprocesses: ``cluster`` + ``submit --wait`` with a real worker, and ``local``'s
exit codes for a failing job and a bad job file."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import (
    E2E,
    TASKS_DIR,
    run_command,
    serve_cluster,
    stop_cluster,
    wait_for,
)
from worker.cluster.processes import (
    WorkerProcess,
    command_line,
    descendants,
    is_running,
    worker_environment,
)
from worker.cluster.storage import JobState

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _job_file(path: Path, tasks: list[dict[str, object]]) -> Path:
    path.write_text(
        yaml.safe_dump({"name": path.stem, "package_dir": str(TASKS_DIR), "tasks": tasks}),
        encoding="utf-8",
    )
    return path


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
    server, storage_port, scheduler_port, _ = serve_cluster(tmp_path)
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
        done = run_command(
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
        code = stop_cluster(server)
    assert code == 0


def test_a_restarted_cluster_recovers_the_unfinished_job_in_a_new_session(tmp_path: Path) -> None:
    job = _job_file(
        tmp_path / "one.yaml",
        [{"name": "a", "module": "cluster_tasks", "function": "echo", "inputs": [7]}],
    )
    server, storage_port, scheduler_port, first_session = serve_cluster(tmp_path)
    try:
        submitted = run_command(["submit", str(job), "--port", str(storage_port)], tmp_path)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = submitted.stdout.strip()
    finally:
        assert stop_cluster(server) == 0
    # Nobody ran it; the next storage process finds it RUNNING in the database and re-enqueues it.
    server, storage_port, scheduler_port, second_session = serve_cluster(
        tmp_path, str(storage_port), str(scheduler_port)
    )
    worker = WorkerProcess("worker", _worker_config(storage_port, scheduler_port), tmp_path)
    try:
        assert second_session == first_session + 1
        followed = run_command(
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
        stop_cluster(server)


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
    failed = run_command(["local", str(failing), "--workers", "1", "--no-progress"], tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "in-task failure: ValueError: this task always fails" in failed.stdout
    bad = _job_file(
        tmp_path / "bad.yaml",
        [{"name": "x", "module": "cluster_tasks", "function": "echo", "inputs": [{"ref": "y"}]}],
    )
    rejected = run_command(["local", str(bad)], tmp_path)
    assert rejected.returncode == 2
    assert rejected.stderr == "local: task 'x': inputs[0]: unknown task 'y'\n"


def _running_tasks(database: Path) -> int:
    """How many task rows the local run's storage has marked running (read-only, WAL)."""
    if not database.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            return int(
                conn.execute("SELECT count(*) FROM tasks WHERE state='running'").fetchone()[0]
            )
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def _job_state_in(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT state FROM jobs").fetchone()[0])


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_to_local_mid_task_stops_workers_and_cluster_and_exits_130(
    tmp_path: Path, interrupts: int
) -> None:
    # One interrupt drains: the 3 s task finishes and is reported. A second one kills at once,
    # so a 120 s task must not hold the command up.
    seconds = 3 if interrupts == 1 else 120
    job = _job_file(
        tmp_path / "slow.yaml",
        [{"name": "s", "module": "cluster_tasks", "function": "sleepy", "inputs": [seconds, 5]}],
    )
    database = tmp_path / "local.db"
    output = (tmp_path / "local.out").open("w")
    local = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "local", str(job), "--workers", "2"),
            *("--db", str(database), "--workdir", str(tmp_path / "work"), "--no-progress"),
            *("--heartbeat-sec", "0.2", "--poll-wait-ms", "200"),
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
        env=worker_environment(),
        cwd=tmp_path,
        start_new_session=True,
    )
    family: dict[int, bytes] = {}
    try:
        wait_for(lambda: _running_tasks(database) == 1 or local.poll() is not None, 120, "task")
        assert local.poll() is None, (tmp_path / "local.out").read_text()
        # The two workers and their executors, remembered with their command lines.
        family = {pid: command_line(pid) for pid in descendants(local.pid)}
        assert sum(b"-c" in cmd and b"worker" in cmd for cmd in family.values()) >= 2
        local.send_signal(signal.SIGINT)
        if interrupts == 2:
            # Two signals sent back to back could be coalesced into one: wait until the first
            # one is handled (the workers are being drained), then interrupt that drain.
            first_log = tmp_path / "work" / "worker-1.log"
            wait_for(lambda: "stop requested: draining" in first_log.read_text(), 60, "a drain")
            local.send_signal(signal.SIGINT)
        code = local.wait(timeout=90)
    finally:
        if local.poll() is None:
            os.killpg(local.pid, signal.SIGKILL)
            local.wait(10)
        output.close()
    text = (tmp_path / "local.out").read_text()
    assert code == 130, text
    assert "local: interrupted; workers stopped" in text
    leftovers = [
        pid for pid, cmd in family.items() if cmd and command_line(pid) == cmd and is_running(pid)
    ]
    for pid in leftovers:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert leftovers == [], text
    if interrupts == 1:
        # The drained worker finished the running task and reported it before the cluster stopped.
        assert _job_state_in(database) == JobState.SUCCEEDED


def test_submit_names_the_problem_for_a_bad_file_and_an_unreachable_storage(
    tmp_path: Path,
) -> None:
    bad = _job_file(
        tmp_path / "bad.yaml",
        [{"name": "x", "module": "cluster_tasks", "function": "echo", "retries": -1}],
    )
    rejected = run_command(["submit", str(bad), "--port", "1"], tmp_path, timeout=60)
    assert rejected.returncode == 2, rejected.stdout + rejected.stderr
    assert rejected.stderr == "submit: task 'x': retries: must be an integer >= 0, got -1\n"
    good = _job_file(
        tmp_path / "good.yaml", [{"name": "x", "module": "cluster_tasks", "function": "echo"}]
    )
    # Port 1 on loopback: nothing listens there.
    unreachable = run_command(["submit", str(good), "--port", "1"], tmp_path, timeout=60)
    assert unreachable.returncode == 3, unreachable.stdout + unreachable.stderr
    assert unreachable.stdout == "", unreachable.stdout
    assert unreachable.stderr.startswith("submit: storage at 127.0.0.1:1: UNAVAILABLE: ")
    assert unreachable.stderr.count("\n") == 1, unreachable.stderr


def test_local_writes_the_slots_into_every_worker_config(tmp_path: Path) -> None:
    job = _job_file(
        tmp_path / "two.yaml",
        [
            {"name": "a", "module": "cluster_tasks", "function": "echo", "inputs": [1]},
            {"name": "b", "module": "cluster_tasks", "function": "echo", "inputs": [2]},
        ],
    )
    work = tmp_path / "work"
    done = run_command(
        [
            "local",
            str(job),
            "--workers",
            "2",
            "--slots",
            "3",
            "--workdir",
            str(work),
            "--no-progress",
            "--heartbeat-sec",
            "0.2",
            "--poll-wait-ms",
            "200",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    configs = sorted(work.glob("worker-*.yaml"))
    assert [path.name for path in configs] == ["worker-1.yaml", "worker-2.yaml"]
    for path in configs:
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["slots"] == 3


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--workers", "0"], "local: --workers must be at least 1"),
        (["--slots", "0"], "local: --slots must be at least 1"),
        (["--timeout", "0"], "local: --timeout must be > 0"),
        (["--poll-wait-ms", "-1"], "local: --poll-wait-ms must be >= 0"),
        (["--heartbeat-sec", "0"], "local: --heartbeat-sec must be > 0"),
    ],
)
def test_local_rejects_bad_options_before_starting_anything(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cluster import local

    assert local.main(option) == local.EXIT_USAGE
    assert capsys.readouterr().err == message + "\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--gc-interval-sec", "0"], "cluster: --gc-interval-sec must be > 0, got 0"),
        (["--liveness-interval-ms", "0"], "cluster: --liveness-interval-ms must be > 0, got 0"),
        (["--stale-cutoff-sec", "-1"], "cluster: --stale-cutoff-sec must be > 0, got -1"),
        (["--storage-port", "70000"], "cluster: --storage-port must be in 0..65535, got 70000"),
    ],
)
def test_cluster_rejects_bad_options_before_serving(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cluster import serve

    assert serve.main(option) == serve.EXIT_USAGE
    assert capsys.readouterr().err == message + "\n"


def test_cluster_names_a_database_it_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cluster import serve

    database = tmp_path / "missing" / "c.db"
    ports = ["--storage-port", "0", "--scheduler-port", "0"]
    assert serve.main([*ports, "--db", str(database)]) == serve.EXIT_FAILED
    assert capsys.readouterr().err == (
        f"cluster: cannot start: cannot open database {database}: No such file or directory"
        f" (creating {database}.lock)\n"
    )


def _start_submit(
    tmp_path: Path, job: Path, port: int, *options: str
) -> tuple[subprocess.Popen[str], Path, Path]:
    """``submit JOB --wait`` in the background; its stdout and stderr go to files."""
    out, err = tmp_path / "submit.out", tmp_path / "submit.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "submit",
                str(job),
                "--port",
                str(port),
                "--wait",
                *options,
            ],
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=worker_environment(),
            cwd=tmp_path,
        )
    return process, out, err


def _finished(process: subprocess.Popen[str], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _notices(err: Path) -> list[str]:
    lines = err.read_text().splitlines()
    assert all(line.startswith("submit: ") for line in lines), lines
    return lines


def test_submit_wait_rides_out_a_storage_restart_and_follows_the_job(
    e2e: E2E, tmp_path: Path
) -> None:
    e2e.start_worker()
    job = _job_file(
        tmp_path / "slow.yaml",
        [
            {"name": f"t{i}", "module": "cluster_tasks", "function": "sleepy", "inputs": [0.3, i]}
            for i in range(8)
        ],
    )
    port = e2e.cluster.storage_port
    submit, out, err = _start_submit(
        tmp_path, job, port, "--timeout", "120", "--idle-hint-sec", "3"
    )
    try:
        wait_for(lambda: out.read_text().strip().isdigit(), 60, "the job id")
        job_id = int(out.read_text())
        wait_for(lambda: sum(e2e.successes(job_id).values()) >= 2, 60, "some progress")
        old_session = e2e.cluster.storage.session_id
        e2e.cluster.storage_outage(1.5, restart=True)
        code = _finished(submit, 120)
    finally:
        _finished(submit, 0)
    assert code == 0, out.read_text() + err.read_text() + e2e.logs()
    assert out.read_text().splitlines() == [
        str(job_id),
        f"job {job_id}: SUCCEEDED",
        "outputs: " + ", ".join(str(i) for i in range(8)),
    ]
    notices = _notices(err)
    assert f"submit: lost the storage at 127.0.0.1:{port} (UNAVAILABLE); reconnecting" in notices
    assert any(
        line.startswith(f"submit: storage at 127.0.0.1:{port} is back after ") for line in notices
    )
    assert (
        f"submit: storage restarted (session {old_session} -> {old_session + 1}): "
        f"job {job_id}'s unfinished tasks run again from its submission"
    ) in notices
    assert not any("no worker has asked" in line for line in notices), notices


def test_submit_wait_says_when_no_worker_asks_for_work(e2e: E2E, tmp_path: Path) -> None:
    job = _job_file(
        tmp_path / "one.yaml", [{"name": "a", "module": "cluster_tasks", "function": "echo"}]
    )
    port = e2e.cluster.storage_port
    submit, out, err = _start_submit(tmp_path, job, port, "--timeout", "4", "--idle-hint-sec", "1")
    code = _finished(submit, 60)
    assert code == 1, out.read_text() + err.read_text()
    job_id = out.read_text().splitlines()[0]
    assert out.read_text().splitlines()[1] == f"job {job_id}: still RUNNING after 4 s"
    hints = [line for line in _notices(err) if "no worker has asked the scheduler" in line]
    assert len(hints) == 1, err.read_text()
    assert hints[0].endswith(
        "is a worker running against this cluster (python -m worker --config FILE)?"
    )
