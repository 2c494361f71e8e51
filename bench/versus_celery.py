"""Side by side with Celery: the same backlog of no-op tasks, interleaved rounds, one run.

``python -m bench versus_celery [--tasks N] [--rounds R]`` runs, in rounds A, B, A, B, ...:

* Celery prefork ``--concurrency=1`` and ``--concurrency=2`` with Redis as broker and result
  backend (Debian's ``redis-server``, started here on a free loopback port, stopped after), on a
  backlog of N no-op tasks enqueued before the worker starts;
* ours: the reference cluster in this process with one worker at ``slots`` 1 and 2, and two
  workers at ``slots`` 1, on a job of N no-op tasks submitted before the workers start.

For each it measures throughput in steady state (first to last completion) and from start (worker
spawn to last completion), and CPU per task of each process: for Celery the worker's main process,
its pool processes, Redis and the enqueuer; for ours the worker process, its executors and the
cluster (scheduler and storage, in this process, submission included). Completion is when the
result is recorded: Celery's ``date_done`` in the result backend, our storage receiving the
success report. It prints each figure's median, min and max, and the ratios ours/Celery.

Needs the ``bench`` extra (``pip install -e '.[bench]'``) and ``redis-server``
(``apt-get install -y redis-server``); without them it says so and prints no ratio.
Figures only, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from worker.cluster.embedded import ClusterSettings, EmbeddedCluster
from worker.cluster.jobs import JobBuilder
from worker.cluster.processes import WorkerProcess, descendants, worker_environment
from worker.cluster.storage import JobState

__all__ = ["main"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: The task both sides run: takes its index, returns it.
_NOOP_MODULE = "def noop(index):\n    return index\n"

#: Celery's application module, written next to the no-op module for its worker to import.
_CELERY_APP = """\
import os

from celery import Celery

app = Celery("bench_celery", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="noop")
def noop(index):
    return index
"""


@attrs.frozen
class Sample:
    """One run of one configuration."""

    tasks: int
    steady_per_sec: float
    from_start_per_sec: float
    #: CPU seconds by process role, measured at the last completion.
    cpu_sec: dict[str, float]
    #: Context switches (voluntary and not) of each role's threads, counted the same way.
    switches: dict[str, int]

    def cpu_ms_per_task(self, role: str) -> float:
        return self.cpu_sec.get(role, 0.0) * 1000 / self.tasks

    def switches_per_task(self, role: str) -> float:
        return self.switches.get(role, 0) / self.tasks

    @property
    def total_cpu_ms_per_task(self) -> float:
        return sum(self.cpu_sec.values()) * 1000 / self.tasks


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` itself so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def _switches(pid: int) -> int:
    """Context switches of every live thread of ``pid`` so far (0 once it is gone).

    Each is a thread handing the CPU over and being woken again; on a virtual machine a wake-up
    costs tens of microseconds, so their count per task shows what thread hand-offs cost.
    """
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split(":", 1)[1])
    return total


def _rates(tasks: int, spawned: float, completions: list[float]) -> tuple[float, float]:
    """(steady, from start) tasks per second from wall-clock completion times."""
    first, last = min(completions), max(completions)
    steady = (len(completions) - 1) / (last - first) if last > first else float("nan")
    return steady, tasks / (last - spawned)


def _wait_until(
    condition: Callable[[], bool], timeout_sec: float, what: str, poll_sec: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout_sec
    while not condition():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout_sec:g} s waiting for {what}")
        time.sleep(poll_sec)


# --- Celery + Redis ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _redis_server(workdir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A private redis-server on a free loopback port, no persistence; stopped on exit."""
    import redis

    port = _free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        _wait_until(answers, 10, "redis-server to answer")
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


def _completion_times(backend: Any) -> list[float]:
    """Every stored result's ``date_done`` as epoch seconds."""
    keys = backend.keys("celery-task-meta-*")
    times = []
    for raw in backend.mget(keys):
        done = datetime.datetime.fromisoformat(json.loads(raw)["date_done"])
        if done.tzinfo is None:
            done = done.replace(tzinfo=datetime.UTC)
        times.append(done.timestamp())
    return times


def _run_celery(concurrency: int, tasks: int, workdir: Path, *, redis_port: int) -> Sample:
    import redis
    from celery import Celery

    redis_pid = _redis_pid(redis_port)
    broker, backend_url = (f"redis://127.0.0.1:{redis_port}/{db}" for db in (0, 1))
    for url in (broker, backend_url):
        redis.Redis.from_url(url).flushdb()
    backend = redis.Redis.from_url(backend_url)
    app = Celery("bench_enqueuer", broker=broker, backend=backend_url)
    app.conf.update(broker_connection_retry_on_startup=True)
    redis_before = _cpu_seconds(redis_pid)
    redis_switches_before = _switches(redis_pid)
    enqueue_started, enqueue_switches_before = time.process_time(), _switches(os.getpid())
    for index in range(tasks):
        app.send_task("noop", args=[index])
    enqueue_cpu = time.process_time() - enqueue_started
    enqueue_switches = _switches(os.getpid()) - enqueue_switches_before
    env = {
        **worker_environment(),
        "BENCH_BROKER": broker,
        "BENCH_BACKEND": backend_url,
        "PYTHONPATH": f"{workdir}{os.pathsep}{worker_environment().get('PYTHONPATH', '')}",
    }
    spawned = time.time()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench_celery_app",
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until(lambda: backend.dbsize() >= tasks, 600, f"{tasks} Celery results", 0.05)
        pool = descendants(process.pid)
        cpu = {
            "worker": _cpu_seconds(process.pid),
            "pool processes": sum(_cpu_seconds(pid) for pid in pool),
            "redis": _cpu_seconds(redis_pid) - redis_before,
            "enqueuer": enqueue_cpu,
        }
        switches = {
            "worker": _switches(process.pid),
            "pool processes": sum(_switches(pid) for pid in pool),
            "redis": _switches(redis_pid) - redis_switches_before,
            "enqueuer": enqueue_switches,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    steady, from_start = _rates(tasks, spawned, _completion_times(backend))
    return Sample(tasks, steady, from_start, cpu, switches)


def _redis_pid(port: int) -> int:
    import redis

    info: dict[str, Any] = redis.Redis(port=port).info("server")
    return int(info["process_id"])


# --- ours -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _our_cluster(tasks: int, workdir: Path, name: str) -> Iterator[_OurRun]:
    """An embedded cluster holding a job of ``tasks`` no-op tasks, observed as reports land."""
    database = workdir / f"{name}-{time.monotonic_ns()}.db"
    with EmbeddedCluster(ClusterSettings(database=database)) as cluster:
        run = _OurRun(tasks, cluster)
        cluster.storage_server.hooks.observer = run.observe
        builder = JobBuilder("bench", package_dir=workdir)
        for index in range(tasks):
            builder.task(f"t{index}", "bench_noop", "noop", [index])
        run.cluster_cpu, run.cluster_switches = time.process_time(), _switches(os.getpid())
        run.job_id = cluster.submit(builder.build())
        run.spawned = time.time()
        yield run


class _OurRun:
    """One run on our cluster: completion times from the storage observer, the CPU baseline."""

    def __init__(self, tasks: int, cluster: EmbeddedCluster) -> None:
        self.tasks = tasks
        self.cluster = cluster
        self.completions: list[float] = []
        self.all_reported = threading.Event()
        self.job_id = 0
        self.spawned = 0.0
        self.cluster_cpu = 0.0
        self.cluster_switches = 0
        self._lock = threading.Lock()

    def observe(self, rpc: str, request: Any, response: Any, started: float, done: float) -> None:
        if rpc == "ReportTaskSuccess":
            now = time.time()
            with self._lock:
                self.completions.append(now)
                if len(self.completions) == self.tasks:
                    self.all_reported.set()

    def wait(self) -> None:
        """Until the last report landed (the observer says so: no polling loop runs in the
        cluster's process, whose CPU is measured)."""
        if not self.all_reported.wait(600):
            raise RuntimeError(f"{len(self.completions)} of {self.tasks} reports in 600 s")

    def cluster_use(self) -> tuple[float, int]:
        """The cluster process's CPU seconds and context switches since the job's submission."""
        return (
            time.process_time() - self.cluster_cpu,
            _switches(os.getpid()) - self.cluster_switches,
        )

    def check_succeeded(self) -> None:
        state = self.cluster.wait_job(self.job_id, timeout_sec=60, poll_sec=0.05)
        if state is not JobState.SUCCEEDED:
            raise RuntimeError(f"our bench job ended {state.name}")

    def sample(self, cpu: dict[str, float], switches: dict[str, int]) -> Sample:
        steady, from_start = _rates(self.tasks, self.spawned, self.completions)
        return Sample(self.tasks, steady, from_start, cpu, switches)


def _run_ours(workers: int, slots: int, tasks: int, workdir: Path) -> Sample:
    with _our_cluster(tasks, workdir, f"ours-{workers}x{slots}") as run:
        config = run.cluster.worker_config(
            workdir, poll_wait_ms=1000, heartbeat_sec=1.0, log_level="warning"
        )
        config["slots"] = slots
        processes = [
            WorkerProcess(f"ours-{workers}x{slots}-{i}", config, workdir) for i in range(workers)
        ]
        try:
            run.wait()
            executors = [pid for p in processes for pid in descendants(p.pid)]
            cluster_cpu, cluster_switches = run.cluster_use()
            cpu = {
                "worker": sum(_cpu_seconds(p.pid) for p in processes),
                "executors": sum(_cpu_seconds(pid) for pid in executors),
                "cluster": cluster_cpu,
            }
            switches = {
                "worker": sum(_switches(p.pid) for p in processes),
                "executors": sum(_switches(pid) for pid in executors),
                "cluster": cluster_switches,
            }
            run.check_succeeded()
        finally:
            for process in processes:
                process.stop(timeout_sec=30)
                process.close()
    return run.sample(cpu, switches)


def _run_floor(overlap: bool, tasks: int, workdir: Path) -> Sample:
    """The protocol's calls alone (``bench._floor_client``) against the same cluster; with
    ``overlap`` the reports leave the chain (a second thread sends them)."""
    with _our_cluster(tasks, workdir, "floor") as run:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench._floor_client",
                str(run.cluster.storage_port),
                str(run.cluster.scheduler_port),
                str(tasks),
                *(["overlap"] if overlap else []),
            ],
            cwd=_BENCH_ROOT,  # where ``bench`` is importable, whatever the caller's folder
            env=worker_environment(),
            stdout=subprocess.PIPE,
        )
        try:
            run.wait()
            cluster_cpu, cluster_switches = run.cluster_use()
            # The client reports its own use at its end, threads that ended included.
            output, _ = client.communicate(timeout=60)
            if client.returncode != 0:
                raise RuntimeError(f"the floor client exited {client.returncode}")
            used = json.loads(output.decode().strip().splitlines()[-1])
            cpu = {"client": float(used["cpu_sec"]), "cluster": cluster_cpu}
            switches = {"client": int(used["switches"]), "cluster": cluster_switches}
            run.check_succeeded()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
    return run.sample(cpu, switches)


#: The folder holding the ``bench`` package.
_BENCH_ROOT = Path(__file__).resolve().parent.parent
#: The configuration that runs the protocol's calls alone.
FLOOR = "floor: the protocol's calls alone (one blocking grpcio client, no executor)"
FLOOR_OVERLAPPED = "floor, the reports sent by a second thread (the chain of one slot)"


# --- the run ----------------------------------------------------------------------------------


@attrs.frozen
class Config:
    name: str
    run: Callable[[int, Path], Sample]


def _spread(values: list[float], digits: int = 0) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def _missing_celery() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed: `apt-get install -y redis-server`"
    for module in ("celery", "redis"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: `pip install -e '.[bench]'`"
    return None


def main(argv: Sequence[str]) -> int:
    """Run the interleaved rounds and print markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m bench versus_celery")
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks per run (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each runs all (3)")
    args = parser.parse_args(list(argv))
    logging.getLogger("worker.cluster").setLevel(logging.ERROR)
    missing = _missing_celery()
    if missing is not None:
        print(f"Celery side skipped, so no ratio is printed: {missing}\n")
    samples: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-versus-celery-") as name:
        workdir = Path(name)
        (workdir / "bench_noop.py").write_text(_NOOP_MODULE, encoding="utf-8")
        (workdir / "bench_celery_app.py").write_text(_CELERY_APP, encoding="utf-8")
        with contextlib.ExitStack() as stack:
            ours = [
                Config("ours, 1 worker, slots 1", functools.partial(_run_ours, 1, 1)),
                Config("ours, 1 worker, slots 2", functools.partial(_run_ours, 1, 2)),
                Config("ours, 2 workers, slots 1", functools.partial(_run_ours, 2, 1)),
                Config(FLOOR, functools.partial(_run_floor, False)),
                Config(FLOOR_OVERLAPPED, functools.partial(_run_floor, True)),
            ]
            celery: list[Config] = []
            if missing is None:
                port, _ = stack.enter_context(_redis_server(workdir))
                celery = [
                    Config(
                        f"Celery prefork --concurrency={c}",
                        functools.partial(_run_celery, c, redis_port=port),
                    )
                    for c in (1, 2)
                ]
            # Interleaved: Celery and ours alternate, so drifting machine load hits both.
            order = [c for pair in zip(celery, ours[: len(celery)], strict=False) for c in pair]
            order += ours[len(celery) :]
            for round_index in range(args.rounds):
                for config in order:
                    sample = config.run(args.tasks, workdir)
                    samples.setdefault(config.name, []).append(sample)
                    print(
                        f"round {round_index + 1}: {config.name}: "
                        f"{sample.steady_per_sec:.0f} tasks/s steady",
                        file=sys.stderr,
                        flush=True,
                    )
    _print_tables(samples, args.tasks, args.rounds)
    return 0


def _print_tables(samples: dict[str, list[Sample]], tasks: int, rounds: int) -> None:
    print(f"### Throughput ({tasks} no-op tasks; median (min-max) of {rounds} rounds)\n")
    print("| configuration | steady tasks/s | from start tasks/s | total CPU ms/task |")
    print("|---|---|---|---|")
    for name, runs in samples.items():
        print(
            f"| {name} | {_spread([s.steady_per_sec for s in runs])} "
            f"| {_spread([s.from_start_per_sec for s in runs])} "
            f"| {_spread([s.total_cpu_ms_per_task for s in runs], 2)} |"
        )
    print("\n### CPU and context switches per task by process (medians)\n")
    print("| configuration | process | CPU ms/task | context switches/task |")
    print("|---|---|---|---|")
    for name, runs in samples.items():
        for role in runs[0].cpu_sec:
            cpu = statistics.median(s.cpu_ms_per_task(role) for s in runs)
            switches = statistics.median(s.switches_per_task(role) for s in runs)
            print(f"| {name} | {role} | {cpu:.3f} | {switches:.1f} |")
    pairs = [
        ("ours, 1 worker, slots 1", "Celery prefork --concurrency=1", 0.8),
        ("ours, 1 worker, slots 2", "Celery prefork --concurrency=1", 1.2),
        ("ours, 1 worker, slots 2", "Celery prefork --concurrency=2", 1.0),
        ("ours, 2 workers, slots 1", "Celery prefork --concurrency=2", None),
        (FLOOR, "Celery prefork --concurrency=1", None),
        (FLOOR_OVERLAPPED, "Celery prefork --concurrency=1", None),
    ]
    if not any(celery in samples for _, celery, _ in pairs):
        return
    print("\n### Ratios ours / Celery (medians, steady state; target in brackets)\n")
    print("| ours | Celery | steady | from start | CPU per task |")
    print("|---|---|---|---|---|")
    for ours, celery, target in pairs:
        a, b = samples[ours], samples[celery]

        def median(runs: list[Sample], value: Callable[[Sample], float]) -> float:
            return statistics.median(value(s) for s in runs)

        steady = median(a, lambda s: s.steady_per_sec) / median(b, lambda s: s.steady_per_sec)
        start = median(a, lambda s: s.from_start_per_sec) / median(
            b, lambda s: s.from_start_per_sec
        )
        cpu = median(a, lambda s: s.total_cpu_ms_per_task) / median(
            b, lambda s: s.total_cpu_ms_per_task
        )
        goal = f" [≥ {target}]" if target is not None else ""
        print(f"| {ours} | {celery} | {steady:.2f}{goal} | {start:.2f} | {cpu:.2f} [≤ 1] |")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
