"""End-to-end harness: an embedded cluster with fast timings plus real worker subprocesses.

Everything runs on the real clock; every wait has a deadline; :meth:`E2E.close` kills every
worker (and the executors it started) so no process outlives a test.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.cluster.embedded import ClusterSettings, EmbeddedCluster
from worker.cluster.jobs import Job, JobBuilder
from worker.cluster.processes import WorkerProcess, descendants, worker_environment
from worker.cluster.scheduler import SchedulerSettings
from worker.cluster.storage import JobState, StorageSettings

TASKS_DIR = Path(__file__).resolve().parent / "tasks"

#: Generous bounds: two cores are shared with other test suites.
BOOT_TIMEOUT = 60.0
JOB_TIMEOUT = 120.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def sleepy_job(count: int, seconds: float, name: str = "sleepy") -> JobBuilder:
    """``count`` independent tasks ``t0..`` that each sleep ``seconds`` and return their index."""
    builder = JobBuilder(name, package_dir=TASKS_DIR)
    for index in range(count):
        builder.task(f"t{index}", "cluster_tasks", "sleepy", [seconds, index])
    return builder


class E2E:
    """A running cluster with fast timings and the workers a test started."""

    def __init__(self, workdir: Path, *, stale_cutoff_sec: float = 2.0) -> None:
        """Start the cluster on free loopback ports with a database in ``workdir``."""
        self.workdir = workdir
        self.cluster = EmbeddedCluster(
            ClusterSettings(
                database=workdir / "cluster.db",
                storage=StorageSettings(
                    execution_manager_stale_cutoff_sec=stale_cutoff_sec, gc_interval_sec=0.1
                ),
                scheduler=SchedulerSettings(
                    dead_em_cutoff_sec=stale_cutoff_sec, liveness_tracking_interval_ms=50
                ),
            )
        )
        self.cluster.start()
        self.workers: list[WorkerProcess] = []
        self.em_ids: dict[str, int] = {}

    def config(self, **extra: Any) -> dict[str, Any]:
        """A worker config for this cluster (heartbeats 0.1 s, long poll 200 ms)."""
        return self.cluster.worker_config(
            TASKS_DIR, poll_wait_ms=200, heartbeat_sec=0.1, log_level="debug", extra=extra
        )

    def start_worker(self, **extra: Any) -> tuple[WorkerProcess, int]:
        """Start one worker and wait until storage registered it; returns it and its id."""
        before = {row.id for row in self.cluster.storage.db.ems()}
        process = WorkerProcess(
            f"worker-{len(self.workers) + 1}", self.config(**extra), self.workdir
        )
        self.workers.append(process)

        def registered() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{process.name} exited {process.poll()} during boot:\n{process.log_text()}"
                )
            return bool({row.id for row in self.cluster.storage.db.ems()} - before)

        wait_for(registered, BOOT_TIMEOUT, f"{process.name} to register")
        (em_id,) = {row.id for row in self.cluster.storage.db.ems()} - before
        self.em_ids[process.name] = em_id
        return process, em_id

    def submit(self, job: Job) -> int:
        """Register and start a job."""
        return self.cluster.submit(job)

    def wait_job(self, job_id: int, timeout: float = JOB_TIMEOUT) -> JobState:
        """Wait for a terminal state; fail with the worker logs if it does not come."""
        deadline = time.monotonic() + timeout
        state = self.cluster.storage.job_state(job_id)
        while not state.terminal and time.monotonic() < deadline:
            if self.workers and all(w.poll() is not None for w in self.workers):
                raise AssertionError(
                    f"every worker exited; job {job_id} is {state.name}\n{self.logs()}"
                )
            time.sleep(0.05)
            state = self.cluster.storage.job_state(job_id)
        if not state.terminal:
            logs = "\n".join(f"--- {w.name}\n{w.log_text()[-3000:]}" for w in self.workers)
            raise AssertionError(f"job {job_id} still {state.name} after {timeout} s\n{logs}")
        return state

    def successes(self, job_id: int) -> dict[str, int]:
        """``{task: success count}`` from storage's task table."""
        return {row.task: row.successes for row in self.cluster.storage.task_rows(job_id)}

    def instances_of(self, em_id: int) -> list[int]:
        """Live task instances owned by ``em_id``."""
        return [
            i
            for i, (owner, _, _) in self.cluster.storage.live_instances().items()
            if owner == em_id
        ]

    def logs(self) -> str:
        """Every worker's log, for failure messages."""
        return "\n".join(f"--- {w.name}\n{w.log_text()[-4000:]}" for w in self.workers)

    def close(self) -> None:
        """Kill every worker and its executors, then stop the cluster."""
        for process in self.workers:
            process.close()
        self.cluster.stop()


def start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in ticks), or None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] in {"Z", "X"}:
        return None
    return fields[19]


class ProcessCensus:
    """Every process any worker started, as (pid, start time), sampled every 20 ms."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, str]] = set()
        self._roots: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="census", daemon=True)

    def watch(self, pid: int) -> None:
        with self._lock:
            self._roots.append(pid)
        self.sample()

    def sample(self) -> None:
        with self._lock:
            roots = list(self._roots)
        for root in roots:
            for pid in descendants(root):
                started = start_time(pid)
                if started is not None:
                    self.seen.add((pid, started))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def __enter__(self) -> ProcessCensus:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def alive(self) -> list[int]:
        """The pids seen that still run the same process (pids get reused)."""
        return [pid for pid, started in self.seen if start_time(pid) == started]


def run_command(
    args: list[str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m worker ARGS`` to its end and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_environment(),
        cwd=cwd,
        check=False,
    )


def serve_cluster(
    tmp_path: Path, *ports: str, database: Path | None = None, options: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], int, int, int]:
    """Start ``python -m worker cluster`` (with extra ``options``); returns it, its storage and
    scheduler ports, session."""
    storage_port, scheduler_port = ports if ports else ("0", "0")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "cluster"),
            *("--storage-port", storage_port, "--scheduler-port", scheduler_port),
            *("--db", str(database or tmp_path / "c.db"), "--log-level", "warning"),
            *options,
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


def stop_cluster(server: subprocess.Popen[str]) -> int:
    """SIGTERM a served cluster and return its exit code (killed if it does not stop)."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=30)
    finally:
        server.kill()
        server.wait(10)
