"""``local --workers 2 --slots 4``: a 400-task job, one of the two workers SIGKILLed mid-job.

Every task must be accepted as a success exactly once, read from the database ``local`` leaves
behind (the durable per-task success counter), and nothing the workers started may outlive them.
"""

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

from tests.cluster.harness import TASKS_DIR, ProcessCensus, wait_for
from worker.cluster.processes import command_line, descendants, worker_environment

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TASKS = 400
KILL_AFTER = 100
WORKER_COMMAND = b"-m\x00worker\x00-c\x00"


def _succeeded(database: Path) -> int:
    """Tasks succeeded so far, read without disturbing the cluster (0 before the job exists)."""
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1.0) as connection:
            row = connection.execute(
                "SELECT COUNT(*) FROM tasks WHERE state = 'succeeded'"
            ).fetchone()
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet, or a write holds the file for a moment
    return int(row[0])


def test_two_workers_of_four_slots_lose_and_repeat_nothing_when_one_is_killed(
    tmp_path: Path,
) -> None:
    job_file = tmp_path / "many.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "name": "many",
                "package_dir": str(TASKS_DIR),
                "tasks": [
                    {
                        "name": f"t{index}",
                        "module": "cluster_tasks",
                        "function": "sleepy",
                        "inputs": [0.02, index],
                    }
                    for index in range(TASKS)
                ],
            }
        ),
        encoding="utf-8",
    )
    database = tmp_path / "cluster.db"
    local = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "local",
            str(job_file),
            "--workers",
            "2",
            "--slots",
            "4",
            "--db",
            str(database),
            "--workdir",
            str(tmp_path / "work"),
            "--poll-wait-ms",
            "200",
            "--heartbeat-sec",
            "0.2",
            "--timeout",
            "120",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=worker_environment(),
        cwd=tmp_path,
    )
    census = ProcessCensus()
    try:
        with census:
            census.watch(local.pid)  # the workers and every executor they start, as they come
            wait_for(lambda: _succeeded(database) >= KILL_AFTER, 90.0, f"{KILL_AFTER} successes")
            workers = [p for p in descendants(local.pid) if WORKER_COMMAND in command_line(p)]
            assert len(workers) == 2, workers
            assert _succeeded(database) < TASKS, "the job ended before the kill: make it longer"
            census.sample()
            os.kill(workers[0], signal.SIGKILL)  # the worker alone: its executors must follow
            output, _ = local.communicate(timeout=150)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait(10)
        for pid in census.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    text = output.decode("utf-8", errors="replace")
    assert local.returncode == 0, text
    assert "SUCCEEDED" in text, text
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        counts = dict(connection.execute("SELECT task, successes FROM tasks").fetchall())
    assert len(counts) == TASKS
    assert set(counts.values()) == {1}, {t: c for t, c in counts.items() if c != 1}
    assert len(census.seen) >= 2 + 2 * 4, "the census missed the workers and their executors"
    assert not census.alive(), f"still running after local exited: {census.alive()}"
