"""The status commands against a running cluster: ``jobs``, ``status``, ``result``, ``cancel``,
``workers``.

Each talks to the cluster's admin service (``admin.proto``, served on the storage port) and
prints a table (rich) or, with ``--json``, one JSON document for scripts (``status --watch
--json``: one JSON line per change). Errors are one line on stderr. ``status --watch`` follows a
job until it ends and rides out a storage restart, reconnecting with backoff.

Exit codes: 0 done (``result``: the job succeeded; ``status --watch``: it ended SUCCEEDED);
1 the job failed, was cancelled, has no result yet, cannot be cancelled, or is unknown;
2 bad command line; 3 storage unreachable.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from worker.cluster.remote import STORAGE_RESTARTING_CODES
from worker.cluster.serve import DEFAULT_STORAGE_PORT
from worker.cluster.storage import JOB_OUTPUTS_MAX_BYTES
from worker.command_line import command_parser, invoked_prog, log_when_asked
from worker.taskio import GraphOutputsDecodeError, decode_graph_output_values
from worker.transport._generated.admin import admin_pb2, admin_pb2_grpc

__all__ = ["cancel_main", "jobs_main", "result_main", "status_main", "workers_main"]

EXIT_OK: Final = 0
EXIT_JOB: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
_RPC_TIMEOUT_SEC: Final = 10.0
_TERMINAL: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_Reply = TypeVar("_Reply")


class _Failed(Exception):
    """A one-line error and the exit code it means."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- command lines ---------------------------------------------------------------------------


def _parser(
    command: str, description: str, example: str, exit_one: str | None = None
) -> argparse.ArgumentParser:
    one = f" 1 {exit_one};" if exit_one else ""
    parser = command_parser(
        f"{invoked_prog()} {command}",
        description,
        examples=[example],
        exit_codes=f"0 done;{one} 2 bad command line; 3 storage unreachable",
    )
    parser.add_argument("--host", default="127.0.0.1", help="storage host (127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_STORAGE_PORT,
        help=f"storage port ({DEFAULT_STORAGE_PORT})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _job_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=int, metavar="JOB", help="the job id `submit` printed")


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args = parser.parse_args(list(argv))
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    log_when_asked(parser, args.log_level)
    return args


# --- talking to the admin service ------------------------------------------------------------


class _Admin:
    """One channel to the admin service; every call is bounded by a deadline."""

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self._channel = grpc.insecure_channel(self.target)
        self.stub = admin_pb2_grpc.ClusterAdminServiceStub(self._channel)

    def call(self, method: Callable[..., _Reply], request: Any) -> _Reply:
        return method(request, timeout=_RPC_TIMEOUT_SEC)

    def close(self) -> None:
        self._channel.close()


def _failure(admin: _Admin, error: grpc.RpcError, job_id: int | None = None) -> _Failed:
    code, details = error.code(), error.details() or ""
    if code is grpc.StatusCode.NOT_FOUND and job_id is not None:
        return _Failed(f"job {job_id} not found", EXIT_JOB)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return _Failed(details, EXIT_JOB)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return _Failed(
            f"storage at {admin.target} has no admin service (is it this project's cluster?)",
            EXIT_UNREACHABLE,
        )
    return _Failed(f"storage at {admin.target}: {code.name}: {details}", EXIT_UNREACHABLE)


def _run(
    command: str, args: argparse.Namespace, body: Callable[[_Admin], int], job_id: int | None = None
) -> int:
    admin = _Admin(args.host, args.port)
    try:
        return body(admin)
    except grpc.RpcError as error:
        failed = _failure(admin, error, job_id)
        print(f"{command}: {failed}", file=sys.stderr)
        return failed.code
    except _Failed as failed:
        print(f"{command}: {failed}", file=sys.stderr)
        return failed.code
    except KeyboardInterrupt:
        return 130
    finally:
        admin.close()


# --- rendering -------------------------------------------------------------------------------


def _timestamp(seconds: float) -> str | None:
    if not seconds:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _job_dict(job: admin_pb2.JobSummary) -> dict[str, Any]:
    counts = job.tasks
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state,
        "tasks": {
            name: getattr(counts, name)
            for name in (
                "total",
                "pending",
                "ready",
                "running",
                "succeeded",
                "failed",
                "cancelled",
            )
        },
        "created_at": _timestamp(job.created_at),
        "finished_at": _timestamp(job.finished_at),
        "error": job.error,
    }


def _task_dict(task: admin_pb2.TaskStatus) -> dict[str, Any]:
    return {
        "key": task.key,
        "name": task.name,
        "function": task.function,
        "state": task.state,
        "attempts": task.attempts,
        "failures": task.failures,
        "retries_left": task.retries_left,
        "last_error": task.last_error,
    }


def _status_dict(status: admin_pb2.JobStatus) -> dict[str, Any]:
    return {"job": _job_dict(status.job), "tasks": [_task_dict(task) for task in status.tasks]}


def _jsonable(value: Any) -> Any:
    """A task output as JSON: bytes become ``{"bytes_base64": ...}``, map keys strings."""
    if isinstance(value, bytes):
        return {"bytes_base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def _print_json(document: Any) -> None:
    print(json.dumps(document, sort_keys=False), flush=True)


def _progress(job: admin_pb2.JobSummary) -> str:
    counts = job.tasks
    text = f"{counts.succeeded}/{counts.total} succeeded"
    if counts.running:
        text += f", {counts.running} running"
    if counts.failed:
        text += f", {counts.failed} failed"
    if counts.cancelled:
        text += f", {counts.cancelled} cancelled"
    return text


def _short_time(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _jobs_table(jobs: Sequence[admin_pb2.JobSummary]) -> Table:
    table = Table(title="Jobs", title_justify="left")
    for column in ("Job", "Name", "State", "Progress", "Created", "Finished"):
        table.add_column(column, justify="right" if column == "Job" else "left")
    for job in jobs:
        table.add_row(
            str(job.job_id),
            job.name,
            job.state,
            _progress(job),
            _short_time(job.created_at),
            _short_time(job.finished_at),
        )
    return table


def _status_table(status: admin_pb2.JobStatus) -> Table:
    job = status.job
    table = Table(
        title=f"Job {job.job_id} ({job.name}): {job.state}, {_progress(job)}",
        title_justify="left",
        caption=f"error: {job.error}" if job.error else None,
        caption_justify="left",
    )
    for column in ("Task", "Function", "State", "Attempts", "Retries left", "Last error"):
        table.add_column(
            column, justify="right" if column in {"Attempts", "Retries left"} else "left"
        )
    for task in status.tasks:
        table.add_row(
            task.name,
            task.function,
            task.state,
            str(task.attempts),
            str(task.retries_left),
            task.last_error or "-",
        )
    return table


def _workers_table(workers: Sequence[admin_pb2.WorkerStatus], now: float) -> Table:
    table = Table(title="Workers", title_justify="left")
    for column in ("Worker", "Address", "State", "Last heartbeat", "Running"):
        table.add_column(column, justify="right" if column == "Worker" else "left")
    for worker in workers:
        running = ", ".join(f"job {task.job_id} {task.name}" for task in worker.running)
        table.add_row(
            str(worker.worker_id),
            worker.ip_address,
            worker.state,
            f"{max(0.0, now - worker.last_heartbeat_at):.1f} s ago",
            running or "-",
        )
    return table


# --- the commands ----------------------------------------------------------------------------


def jobs_main(argv: Sequence[str]) -> int:
    """``python -m worker jobs``: every job with its state and progress, newest first."""
    parser = _parser(
        "jobs",
        "List the cluster's jobs, newest first, with state and progress.",
        "--port 50052 --limit 20",
    )
    parser.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    args = _parse(parser, argv)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")

    def body(admin: _Admin) -> int:
        reply = admin.call(admin.stub.ListJobs, admin_pb2.ListJobsRequest(limit=args.limit))
        if args.json:
            _print_json([_job_dict(job) for job in reply.jobs])
        elif not reply.jobs:
            print("no jobs")
        else:
            Console().print(_jobs_table(reply.jobs))
        return EXIT_OK

    return _run("jobs", args, body)


def status_main(argv: Sequence[str]) -> int:
    """``python -m worker status JOB [--watch]``: each task's state, attempts and last error."""
    parser = _parser(
        "status",
        "Show a job's tasks: name, state, attempts and last error. With --watch, follow the job"
        " until it ends, across storage restarts.",
        "7 --watch",
        "unknown job, or (--watch) the job did not succeed or --timeout passed",
    )
    _job_argument(parser)
    parser.add_argument("--watch", action="store_true", help="follow the job until it ends")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="--watch: seconds between looks (0.5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=0.0, help="--watch: give up after this long (0: never)"
    )
    args = _parse(parser, argv)
    if not args.interval > 0 or args.timeout < 0:
        parser.error("--interval must be > 0 and --timeout >= 0")

    def body(admin: _Admin) -> int:
        request = admin_pb2.JobRequest(job_id=args.job_id)
        if not args.watch:
            status = admin.call(admin.stub.GetJobStatus, request)
            if args.json:
                _print_json(_status_dict(status))
            else:
                Console().print(_status_table(status))
            return EXIT_OK
        return _watch(admin, request, args)

    return _run("status", args, body, args.job_id)


def _watch(admin: _Admin, request: admin_pb2.JobRequest, args: argparse.Namespace) -> int:
    """Show the job at each change until it ends: JSON lines, a table redrawn in place on a
    terminal, else a table per change. Exit 0 if it succeeded."""
    final: admin_pb2.JobStatus | None = None
    console = Console()
    if args.json or not console.is_terminal:
        for final in _follow(admin, request, args):
            if args.json:
                _print_json(_status_dict(final))
            else:
                console.print(_status_table(final))
    else:
        with Live(console=console, auto_refresh=False) as live:
            for final in _follow(admin, request, args):
                live.update(_status_table(final), refresh=True)
    assert final is not None  # _follow yields at least the terminal status
    return EXIT_OK if final.job.state == "SUCCEEDED" else EXIT_JOB


def _follow(
    admin: _Admin, request: admin_pb2.JobRequest, args: argparse.Namespace
) -> Iterator[admin_pb2.JobStatus]:
    """Each new status of the job, up to its terminal one; a lost storage is retried with
    backoff (said once on stderr, and again when it is back)."""
    deadline = time.monotonic() + args.timeout if args.timeout else None
    backoff = _Backoff()
    last: admin_pb2.JobStatus | None = None
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            raise _Failed(
                f"job {args.job_id} still not finished after {args.timeout:g} s", EXIT_JOB
            )
        try:
            status = admin.call(admin.stub.GetJobStatus, request)
        except grpc.RpcError as error:
            if error.code() not in STORAGE_RESTARTING_CODES:
                raise
            delay = backoff.next()
            if backoff.attempts == 1:
                print(
                    f"status: storage at {admin.target} unreachable ({error.code().name});"
                    " reconnecting",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(delay)
            continue
        if backoff.attempts:
            print(f"status: storage at {admin.target} is back", file=sys.stderr, flush=True)
            backoff.reset()
        if status != last:
            yield status
            last = status
        if status.job.state in _TERMINAL:
            return
        time.sleep(args.interval)


class _Backoff:
    """Exponential reconnection delays: 0.2 s doubling to 2 s."""

    def __init__(self, initial: float = 0.2, maximum: float = 2.0) -> None:
        self._initial, self._maximum = initial, maximum
        self.attempts = 0

    def next(self) -> float:
        delay = min(self._maximum, self._initial * 2.0**self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


def result_main(argv: Sequence[str]) -> int:
    """``python -m worker result JOB``: the job's outputs (exit 1 unless it succeeded)."""
    parser = _parser(
        "result",
        "Print a job's outputs, one per line (--json: a JSON document).",
        "7 --json",
        "unknown job, or it failed, was cancelled or has not finished",
    )
    _job_argument(parser)
    args = _parse(parser, argv)

    def body(admin: _Admin) -> int:
        reply = admin.call(admin.stub.GetJobResult, admin_pb2.JobRequest(job_id=args.job_id))
        job = reply.job
        if job.state != "SUCCEEDED":
            why = f": {job.error}" if job.error else ""
            if job.state in _TERMINAL:
                raise _Failed(f"job {job.job_id} {job.state}{why}", EXIT_JOB)
            raise _Failed(f"job {job.job_id} is {job.state}: no result yet", EXIT_JOB)
        try:
            values = decode_graph_output_values(
                reply.serialized_outputs, max_bytes=JOB_OUTPUTS_MAX_BYTES
            )
        except GraphOutputsDecodeError as error:
            raise _Failed(f"job {job.job_id}: undecodable outputs: {error}", EXIT_JOB) from error
        if args.json:
            _print_json({"job_id": job.job_id, "state": job.state, "outputs": _jsonable(values)})
        else:
            for value in values:
                print(repr(value))
        return EXIT_OK

    return _run("result", args, body, args.job_id)


def cancel_main(argv: Sequence[str]) -> int:
    """``python -m worker cancel JOB``: cancel the job (its cleanup task runs if it has one)."""
    parser = _parser(
        "cancel",
        "Cancel a job: its unfinished tasks are cancelled and its cleanup task, if any, runs.",
        "7",
        "unknown job, or it already ended or is being cleaned up",
    )
    _job_argument(parser)
    args = _parse(parser, argv)

    def body(admin: _Admin) -> int:
        job = admin.call(admin.stub.CancelJob, admin_pb2.JobRequest(job_id=args.job_id))
        if args.json:
            _print_json(_job_dict(job))
        elif job.state == "CLEANUP_READY":
            print(f"job {job.job_id}: cancelled; its cleanup task is queued")
        else:
            print(f"job {job.job_id}: {job.state}")
        return EXIT_OK

    return _run("cancel", args, body, args.job_id)


def workers_main(argv: Sequence[str]) -> int:
    """``python -m worker workers``: registered workers, last heartbeat and running tasks."""
    parser = _parser(
        "workers",
        "List the workers registered with storage: state, last heartbeat, running tasks.",
        "--json",
    )
    args = _parse(parser, argv)

    def body(admin: _Admin) -> int:
        reply = admin.call(admin.stub.ListWorkers, admin_pb2.ListWorkersRequest())
        now = time.time()
        if args.json:
            _print_json(
                [
                    {
                        "worker_id": worker.worker_id,
                        "ip_address": worker.ip_address,
                        "state": worker.state,
                        "last_heartbeat_at": _timestamp(worker.last_heartbeat_at),
                        "seconds_since_heartbeat": round(
                            max(0.0, now - worker.last_heartbeat_at), 3
                        ),
                        "running": [
                            {
                                "job_id": task.job_id,
                                "key": task.key,
                                "name": task.name,
                                "task_instance_id": task.task_instance_id,
                            }
                            for task in worker.running
                        ],
                    }
                    for worker in reply.workers
                ]
            )
        elif not reply.workers:
            print("no workers registered")
        else:
            Console().print(_workers_table(reply.workers, now))
        return EXIT_OK

    return _run("workers", args, body)
