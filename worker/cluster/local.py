"""``python -m worker local [JOBFILE] [--workers N]``: the embedded default.

Starts the reference cluster in this process on loopback (database in a temporary directory or
``--db``), N worker processes (``python -m worker -c <generated config>``), runs the job (the
bundled Fibonacci fan-out when no JOBFILE is given) with a live progress bar, prints a summary and
exits with one of :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.cluster.attempts import Attempt
from worker.cluster.embedded import ClusterSettings, ClusterStartError, EmbeddedCluster
from worker.cluster.failures import TaskFailure, failure_lines, task_failures, task_name
from worker.cluster.jobs import Job, JobError, load_job_file
from worker.cluster.preflight import PreflightError, check_or_raise
from worker.cluster.processes import WorkerProcess, logged_metrics_port
from worker.cluster.report import ReportData, write_report
from worker.cluster.scheduler import SchedulerSettings
from worker.cluster.storage import JOB_OUTPUTS_MAX_BYTES, JobState, StorageSettings
from worker.cluster.task_logs import TaskLogFollower
from worker.command_line import command_parser, invoked_prog, log_level
from worker.examples import EXAMPLES_DIR, FIBONACCI_JOB
from worker.logging_setup import FieldsFormatter
from worker.security import make_non_dumpable
from worker.taskio import GraphOutputsDecodeError, decode_graph_output_values

__all__ = ["EXIT_CODES", "LocalRun", "main", "run_job", "run_local"]

EXIT_SUCCEEDED: Final = 0
EXIT_JOB_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_NO_WORKERS: Final = 4
EXIT_START_FAILED: Final = 5
EXIT_INTERRUPTED: Final = 130
logger = logging.getLogger("worker.cluster.local")

#: Where ``--metrics`` workers serve (each on a free port of its own).
METRICS_HOST: Final = "127.0.0.1"
#: How long worker processes get to start and register before the job is submitted anyway.
BOOT_TIMEOUT_SEC: Final = 60.0

#: ``python -m worker local`` exit codes (documented in docs/local-cluster.md).
EXIT_CODES: Final = {
    EXIT_SUCCEEDED: "the job succeeded",
    EXIT_JOB_FAILED: "the job failed or was cancelled",
    EXIT_USAGE: "bad command line or job file",
    EXIT_TIMEOUT: "the job did not finish within --timeout",
    EXIT_NO_WORKERS: "every worker exited before the job finished",
    EXIT_START_FAILED: "the cluster could not start (database unusable or locked)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


@attrs.frozen(slots=True)
class LocalRun:
    """What a local run produced (returned by :func:`run_local`, printed by :func:`main`)."""

    exit_code: int
    job_id: int
    state: JobState
    state_counts: dict[str, int]
    sink_outputs: list[Any]
    error: str
    wall_sec: float
    tasks_done: int
    worker_exit_codes: dict[str, int | None]
    #: The tasks that failed for good, with their traceback tails (from the worker logs).
    failures: list[TaskFailure] = attrs.field(factory=list)
    #: Who ran which task when (for the run report).
    attempts: list[Attempt] = attrs.field(factory=list)
    #: Each task's final state by its name in the job.
    task_states: dict[str, str] = attrs.field(factory=dict)
    #: Each worker's metrics port on 127.0.0.1 (``metrics``; empty without).
    metrics_ports: dict[str, int] = attrs.field(factory=dict)


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        f"{invoked_prog()} local",
        "Run a job on an embedded local cluster with N worker processes. --log-level sets the"
        " workers' level and the cluster log's (both kept in --workdir).",
        examples=["", "job.yaml --workers 4 --workdir run1"],
        exit_codes="; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument(
        "jobfile", nargs="?", type=Path, help="YAML job file (default: the bundled example)"
    )
    parser.add_argument("--workers", "-n", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--slots", type=int, default=1, help="tasks each worker runs at once (1)")
    parser.add_argument("--db", type=Path, help="SQLite database (default: a temporary file)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    parser.add_argument(
        "--workdir", type=Path, help="keep worker configs and logs here (default: temporary)"
    )
    parser.add_argument("--poll-wait-ms", type=int, default=1000, help="workers' long poll (1000)")
    parser.add_argument(
        "--heartbeat-sec", type=float, default=1.0, help="workers' heartbeat interval (1.0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="each worker serves /metrics, /healthz, /readyz on its own free 127.0.0.1 port"
        " (printed when it registered)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this environment variable to the task executors (repeatable)",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="do not echo the tasks' output lines"
    )
    parser.add_argument(
        "--report", type=Path, metavar="HTML", help="write a self-contained HTML run report"
    )
    return parser


def _sink_outputs(cluster: EmbeddedCluster, job_id: int) -> list[Any]:
    raw = cluster.storage.job_outputs(job_id)
    if not raw:
        return []
    try:
        return decode_graph_output_values(raw, max_bytes=JOB_OUTPUTS_MAX_BYTES)
    except GraphOutputsDecodeError:
        return ["<undecodable>"]


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        # Absolute: workers run with the work directory as their current directory.
        given = given.resolve()
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    yield Path(tempfile.mkdtemp(prefix="worker-local-"))


def run_local(
    job: Job,
    *,
    workers: int,
    timeout_sec: float,
    workdir: Path,
    slots: int = 1,
    database: Path | None = None,
    poll_wait_ms: int = 1000,
    heartbeat_sec: float = 1.0,
    console: Console | None = None,
    progress: bool = True,
    inherited_env: Sequence[str] = (),
    echo: Callable[[str, str], None] | None = None,
    log_level: str = "info",
    metrics: bool = False,
) -> LocalRun:
    """Run ``job`` on an embedded cluster with ``workers`` worker processes of ``slots`` slots.

    ``inherited_env`` names the variables the task executors get; ``echo(task, line)`` receives
    each line the tasks print (None: not echoed). Raises :class:`ClusterStartError` when the
    cluster cannot start (nothing else started). With ``metrics`` each worker serves its
    metrics endpoint on a free loopback port, printed on ``console`` once it registered.
    """
    console = console or Console(stderr=True)
    settings = ClusterSettings(
        database=database or workdir / "cluster.db",
        storage=StorageSettings(
            execution_manager_stale_cutoff_sec=max(10.0, 5 * heartbeat_sec), gc_interval_sec=1.0
        ),
        scheduler=SchedulerSettings(dead_em_cutoff_sec=max(10.0, 5 * heartbeat_sec)),
    )
    package_dir = job.package_dir or EXAMPLES_DIR
    started = finished = time.monotonic()
    processes: list[WorkerProcess] = []
    metrics_ports: dict[str, int] = {}
    follower = TaskLogFollower(job, echo)
    with EmbeddedCluster(settings) as cluster:
        try:
            config = cluster.worker_config(
                package_dir.resolve(),
                poll_wait_ms=poll_wait_ms,
                heartbeat_sec=heartbeat_sec,
                log_level=log_level,
                extra={
                    "slots": slots,
                    "task_executor": {"inherited_env": list(inherited_env)},
                    **({"metrics": {"host": METRICS_HOST, "port": 0}} if metrics else {}),
                },
            )
            known = {row.id for row in cluster.storage.db.ems()}  # a reused --db has old rows
            for number in range(workers):
                processes.append(WorkerProcess(f"worker-{number + 1}", config, workdir))
            follower.follow(p.log_path for p in processes)
            _wait_registered(
                cluster, processes, known, timeout_sec=min(timeout_sec, BOOT_TIMEOUT_SEC)
            )
            if metrics:
                metrics_ports = _metrics_ports(processes)
                for name, port in metrics_ports.items():
                    line = f"{name} metrics: http://{METRICS_HOST}:{port}/metrics"
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
                    logger.info(
                        "worker metrics endpoint",
                        extra={"fields": {"worker": name, "metrics_port": port}},
                    )
            started = time.monotonic()
            job_id = cluster.submit(job)
            follower.watch_job(job_id)
            state, exit_code = _follow(
                cluster, job, job_id, processes, timeout_sec, console, progress
            )
            finished = time.monotonic()
        finally:
            try:
                worker_codes = {p.name: p.stop(timeout_sec=30) for p in processes}
            finally:
                # A second Ctrl-C during the drain lands here: kill whatever is still running.
                for process in processes:
                    process.close()
                follower.stop()
        wall = finished - started
        counts = cluster.storage.task_state_counts(job_id)
        return LocalRun(
            exit_code=exit_code,
            job_id=job_id,
            state=state,
            state_counts=counts,
            sink_outputs=_sink_outputs(cluster, job_id),
            error=cluster.storage.job_error(job_id),
            wall_sec=wall,
            tasks_done=counts.get("succeeded", 0),
            worker_exit_codes=worker_codes,
            failures=task_failures(job, cluster.storage.task_rows(job_id), follower.tracebacks()),
            attempts=cluster.storage.attempts(job_id),
            task_states={
                task_name(job, row.task): row.state for row in cluster.storage.task_rows(job_id)
            },
            metrics_ports=metrics_ports,
        )


def _metrics_ports(processes: list[WorkerProcess]) -> dict[str, int]:
    """Each worker's bound metrics port, from the INFO line it logs before registering."""
    ports = {process.name: logged_metrics_port(process.log_text()) for process in processes}
    return {name: port for name, port in ports.items() if port is not None}


def _wait_registered(
    cluster: EmbeddedCluster, processes: list[WorkerProcess], known: set[int], timeout_sec: float
) -> None:
    """Wait until every worker registered (or exited), so the clock measures the job only and
    no worker is stopped half-booted; ``known`` are worker ids that existed before."""
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        running = sum(1 for p in processes if p.poll() is None)
        registered = {row.id for row in cluster.storage.db.ems()} - known
        if running == 0 or len(registered) >= len(processes):
            return
        time.sleep(0.02)


def _follow(
    cluster: EmbeddedCluster,
    job: Job,
    job_id: int,
    processes: list[WorkerProcess],
    timeout_sec: float,
    console: Console,
    progress_enabled: bool,
) -> tuple[JobState, int]:
    total = len(job.tasks) + (1 if job.commit is not None else 0)
    deadline = time.monotonic() + timeout_sec
    started = time.monotonic()
    live = progress_enabled and console.is_terminal
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} done"),
        TextColumn("{task.fields[failed]} failed, {task.fields[running]} running"),
        TextColumn("{task.fields[rate]:.1f} tasks/s"),
        TimeElapsedColumn(),
    )
    last_line = 0.0
    with Progress(*columns, console=console, disable=not live) as bar:
        handle = bar.add_task(job.name, total=total, failed=0, running=0, rate=0.0)
        while True:
            state = cluster.storage.job_state(job_id)
            counts = cluster.storage.task_state_counts(job_id)
            done = counts.get("succeeded", 0)
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(
                handle,
                completed=done,
                failed=counts.get("failed", 0),
                running=counts.get("running", 0),
                rate=done / elapsed,
            )
            if not live and progress_enabled and time.monotonic() - last_line >= 2.0:
                last_line = time.monotonic()
                console.print(f"{job.name}: {done}/{total} done, state {state.name}")
            if state.terminal:
                return state, EXIT_SUCCEEDED if state is JobState.SUCCEEDED else EXIT_JOB_FAILED
            if all(p.poll() is not None for p in processes):
                return state, EXIT_NO_WORKERS
            if time.monotonic() >= deadline:
                return state, EXIT_TIMEOUT
            time.sleep(0.1)


def _summary(run: LocalRun, console: Console, job: Job, workdir: Path | None) -> None:
    table = Table(title=f"job {run.job_id} ({job.name}): {run.state.name}")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for state in ("succeeded", "failed", "running", "ready", "pending", "cancelled"):
        if run.state_counts.get(state):
            table.add_row(f"tasks {state}", str(run.state_counts[state]))
    table.add_row("sink outputs", ", ".join(repr(value) for value in run.sink_outputs) or "-")
    if run.error:
        table.add_row("error", run.error)
    table.add_row("wall time", f"{run.wall_sec:.2f} s")
    table.add_row("throughput", f"{run.tasks_done / max(run.wall_sec, 1e-6):.1f} tasks/s")
    table.add_row(
        "worker exit codes",
        ", ".join(f"{name}={code}" for name, code in run.worker_exit_codes.items()),
    )
    if workdir is not None:
        table.add_row("worker logs", str(workdir))
    table.add_row("exit code", f"{run.exit_code} ({EXIT_CODES[run.exit_code]})")
    console.print(table)


@contextlib.contextmanager
def _cluster_log(path: Path, level: str) -> Iterator[None]:
    """Send the cluster's own log records to ``path`` (the console shows progress only)."""
    cluster_logger = logging.getLogger("worker.cluster")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    cluster_logger.addHandler(handler)
    cluster_logger.setLevel(level.upper())
    cluster_logger.propagate = False
    try:
        yield
    finally:
        cluster_logger.removeHandler(handler)
        cluster_logger.propagate = True
        handler.close()


def run_job(
    job: Job,
    *,
    workers: int = 2,
    slots: int = 1,
    timeout_sec: float = 600.0,
    workdir: Path | None = None,
    database: Path | None = None,
    poll_wait_ms: int = 1000,
    heartbeat_sec: float = 1.0,
    inherited_env: Sequence[str] = (),
    quiet: bool = False,
    progress: bool = True,
    console: Console | None = None,
    report: Path | None = None,
    preflight: bool = True,
    log_level: str = "info",
    metrics: bool = False,
) -> LocalRun:
    """What ``local`` does with a loaded job: preflight, run, summary (also ``worker.api``).

    Raises :class:`PreflightError` before anything starts if the job cannot run (unless
    ``preflight`` is false: the caller checked already). Task output is
    echoed to stderr prefixed with the task's name unless ``quiet``. The work directory (worker
    configs and logs) is a temporary one unless given; it is removed after a success and kept,
    and named in the summary, otherwise. ``report`` is where to write the HTML run report.
    ``log_level`` is the workers' and the cluster log's. ``metrics``: each worker serves its
    metrics endpoint on its own free loopback port (printed on stderr).
    """
    console = console or Console()
    if preflight:
        check_or_raise(job, job.package_dir or EXAMPLES_DIR, inherited_env)
    stderr = Console(stderr=True)

    def echo(task: str, line: str) -> None:
        stderr.print(f"[{task}] {line}", markup=False, highlight=False, soft_wrap=True)

    with _workdir(workdir) as directory, _cluster_log(directory / "cluster.log", log_level):
        try:
            run = run_local(
                job,
                workers=workers,
                timeout_sec=timeout_sec,
                workdir=directory,
                database=database,
                poll_wait_ms=poll_wait_ms,
                heartbeat_sec=heartbeat_sec,
                console=stderr,
                progress=progress,
                inherited_env=inherited_env,
                echo=None if quiet else echo,
                slots=slots,
                log_level=log_level,
                metrics=metrics,
            )
        except ClusterStartError:
            if workdir is None:
                shutil.rmtree(directory, ignore_errors=True)
            raise
    keep = workdir is not None or run.exit_code != EXIT_SUCCEEDED
    _summary(run, console, job, directory if keep else None)
    for line in failure_lines(run.failures):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if report is not None:
        outputs = ", ".join(repr(value) for value in run.sink_outputs)
        write_report(
            report,
            ReportData(
                job,
                run.job_id,
                run.state.name,
                run.wall_sec,
                run.task_states,
                run.attempts,
                run.failures,
                run.error,
                outputs,
                slots_per_worker=slots,
            ),
        )
        console.print(f"report: {report.resolve()}", markup=False, highlight=False, soft_wrap=True)
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    return run


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m worker local``."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    console = Console()
    problems = [
        message
        for bad, message in (
            (args.workers < 1, "--workers must be at least 1"),
            (args.slots < 1, "--slots must be at least 1"),
            (args.timeout <= 0, "--timeout must be > 0"),
            (args.poll_wait_ms < 0, "--poll-wait-ms must be >= 0"),
            (args.heartbeat_sec <= 0, "--heartbeat-sec must be > 0"),
        )
        if bad
    ]
    if problems:
        print(f"local: {problems[0]}", file=sys.stderr)
        return EXIT_USAGE
    try:
        job = load_job_file(args.jobfile or FIBONACCI_JOB)
    except JobError as error:
        print(f"local: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_or_raise(job, job.package_dir or EXAMPLES_DIR, args.env)
    except PreflightError as error:
        for problem in error.problems:
            print(f"local: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.workdir is not None:
        try:
            args.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(
                f"local: cannot create --workdir {args.workdir}: {error.strerror}", file=sys.stderr
            )
            return EXIT_USAGE
    level = log_level(parser, args.log_level)
    make_non_dumpable()
    # SIGTERM behaves like Ctrl-C, so the finally blocks stop every worker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run = run_job(
            job,
            workers=args.workers,
            slots=args.slots,
            timeout_sec=args.timeout,
            workdir=args.workdir,
            database=args.db,
            poll_wait_ms=args.poll_wait_ms,
            heartbeat_sec=args.heartbeat_sec,
            inherited_env=args.env,
            quiet=args.quiet,
            progress=not args.no_progress,
            console=console,
            report=args.report,
            preflight=False,
            log_level=level,
            metrics=args.metrics,
        )
    except ClusterStartError as error:
        print(f"local: cannot start the cluster: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    except KeyboardInterrupt:
        print("local: interrupted; workers stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run.exit_code
