"""``python -m worker submit JOBFILE [--wait]``: submit a job to a running cluster over gRPC.

Prints the job id; ``--wait`` follows the job to a terminal state, prints its outputs or error,
and exits 0 only if it succeeded. While following it rides out a storage restart (reconnecting
with backoff and saying when the job restarted in a new session) and says when no worker has
asked the scheduler for work for ``--idle-hint-sec``. Notices and errors go to stderr, one line
each; stdout has only the job id, its end state and its outputs or error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from worker.cluster.jobs import JobError, load_job_file
from worker.cluster.remote import STORAGE_RESTARTING_CODES, start_job
from worker.cluster.serve import DEFAULT_STORAGE_PORT
from worker.cluster.status import fetch_status
from worker.cluster.storage import JOB_OUTPUTS_MAX_BYTES, JobState
from worker.command_line import command_parser, invoked_prog, log_when_asked
from worker.taskio import GraphOutputsDecodeError, decode_graph_output_values
from worker.transport._generated.common import common_pb2
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        f"{invoked_prog()} submit",
        "Submit a YAML job file to a running cluster and print the job id (stdout).",
        examples=["job.yaml", "job.yaml --wait --port 50052 --timeout 600"],
        exit_codes="0 submitted (with --wait: succeeded); 1 the job failed or was cancelled,"
        " or --timeout passed; 2 bad job file or option; 3 storage unreachable or refused"
        " (with --wait: unreachable until --timeout)",
    )
    parser.add_argument("jobfile", type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="storage host (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_STORAGE_PORT, help="storage port")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end")
    parser.add_argument("--timeout", type=float, default=3600.0, help="--wait limit (seconds)")
    parser.add_argument(
        "--idle-hint-sec",
        type=float,
        default=10.0,
        help="with --wait: say so when no worker asked for work this long (10)",
    )
    return parser


#: The follower's reconnect backoff (seconds): doubled per failed try, reset on success.
BACKOFF_INITIAL_SEC = 0.1
BACKOFF_MAX_SEC = 2.0
#: How often ``--wait`` looks at the job.
POLL_SEC = 0.2
#: The channel redials a restarted storage within the backoff cap, not grpc's default 2 min.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_INITIAL_SEC * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(BACKOFF_INITIAL_SEC * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX_SEC * 1000)),
]


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m worker submit``."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    log_when_asked(parser, args.log_level)
    if not args.timeout > 0 or not args.idle_hint_sec > 0:
        print("submit: --timeout and --idle-hint-sec must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        job = load_job_file(args.jobfile)
    except JobError as error:
        print(f"submit: {error}", file=sys.stderr)
        return EXIT_USAGE
    address = f"{args.host}:{args.port}"
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        sessions = storage_pb2_grpc.SessionManagementServiceStub(channel)
        try:
            session = sessions.GetSession(common_pb2.Void(), timeout=10).session_id
            job_id = start_job(channel, job)
        except grpc.RpcError as error:
            return _rpc_failure(f"storage at {address}", error)
        print(job_id, flush=True)
        if not args.wait:
            return 0
        follower = _Follower(channel, address, job_id, session, args.idle_hint_sec)
        try:
            return follower.follow(time.monotonic() + args.timeout, args.timeout)
        except grpc.RpcError as error:
            return _rpc_failure(f"storage at {address}", error)


def _rpc_failure(what: str, error: grpc.RpcError) -> int:
    """Print one line naming the failed call's status and details; the exit code for it."""
    print(f"submit: {what}: {error.code().name}: {error.details()}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _note(message: str) -> None:
    """A progress notice: stderr, so stdout keeps only the job id, its end state and outputs."""
    print(f"submit: {message}", file=sys.stderr, flush=True)


class _StorageGone(Exception):
    """The storage stayed unreachable until the deadline."""


_Reply = TypeVar("_Reply")


class _Follower:
    """Follows one job to its end across storage restarts (``submit --wait``)."""

    def __init__(
        self, channel: grpc.Channel, address: str, job_id: int, session: int, idle_hint_sec: float
    ) -> None:
        self._channel = channel
        self._jobs = storage_pb2_grpc.JobOrchestrationServiceStub(channel)
        self._sessions = storage_pb2_grpc.SessionManagementServiceStub(channel)
        self._address = address
        self._job_id = job_id
        self._session = session
        self._idle_hint_sec = idle_hint_sec
        self._hinted = False
        self._deadline = 0.0

    def _call(self, rpc: Callable[[], _Reply]) -> _Reply:
        """``rpc()``, retried with backoff while the storage is unreachable (until the deadline).

        Any other error is raised: it is an answer, not an outage.
        """
        delay = BACKOFF_INITIAL_SEC
        lost_at: float | None = None
        while True:
            try:
                reply = rpc()
            except grpc.RpcError as error:
                if error.code() not in STORAGE_RESTARTING_CODES:
                    raise
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    _note(
                        f"lost the storage at {self._address} ({error.code().name}); reconnecting"
                    )
                if now + delay >= self._deadline:
                    raise _StorageGone from None
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SEC)
                continue
            if lost_at is not None:
                _note(
                    f"storage at {self._address} is back after {time.monotonic() - lost_at:.1f} s"
                )
            return reply

    def follow(self, deadline: float, limit: float) -> int:
        """Wait for the job's end; print it; the exit code."""
        self._deadline = deadline
        request = storage_pb2.JobIdRequest(job_id=self._job_id)
        try:
            while True:
                state = JobState(
                    self._call(lambda: self._jobs.GetJobState(request, timeout=10)).state
                )
                self._check_session()
                if state.terminal:
                    break
                self._hint_if_nobody_polls()
                if time.monotonic() >= deadline:
                    print(f"job {self._job_id}: still {state.name} after {limit:g} s")
                    return EXIT_FAILED
                time.sleep(POLL_SEC)
            print(f"job {self._job_id}: {state.name}")
            if state is JobState.SUCCEEDED:
                raw = self._call(lambda: self._jobs.GetJobOutputs(request, timeout=10))
                try:
                    values = decode_graph_output_values(
                        raw.serialized_outputs, max_bytes=JOB_OUTPUTS_MAX_BYTES
                    )
                except GraphOutputsDecodeError:
                    values = ["<undecodable>"]
                print("outputs: " + ", ".join(repr(v) for v in values))
                return 0
            error_message = self._call(lambda: self._jobs.GetJobError(request, timeout=10))
            if error_message.error_message:
                print(f"error: {error_message.error_message}")
            return EXIT_FAILED
        except _StorageGone:
            _note(f"storage at {self._address} still unreachable after --timeout {limit:g} s")
            return EXIT_UNREACHABLE

    def _check_session(self) -> None:
        session = self._call(lambda: self._sessions.GetSession(common_pb2.Void(), timeout=10))
        if session.session_id != self._session:
            _note(
                f"storage restarted (session {self._session} -> {session.session_id}): "
                f"job {self._job_id}'s unfinished tasks run again from its submission"
            )
            self._session = session.session_id

    def _hint_if_nobody_polls(self) -> None:
        try:
            status = fetch_status(self._channel, timeout_sec=10)
        except grpc.RpcError:
            return  # the hint is a courtesy; the state calls judge reachability
        if status is None:
            return
        idle = status.idle_poll_sec >= self._idle_hint_sec and status.outstanding == 0
        if idle and not self._hinted:
            _note(
                f"no worker has asked the scheduler for work for {status.idle_poll_sec:.0f} s: "
                "is a worker running against this cluster (python -m worker --config FILE)?"
            )
        self._hinted = idle
