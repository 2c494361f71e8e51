"""``python -m worker submit JOBFILE [--wait]``: submit a job to a running cluster over gRPC.

Prints the job id; ``--wait`` follows the job to a terminal state, prints its outputs or error,
and exits 0 only if it succeeded.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from worker.cluster.codec import FrameError, decode_output_values
from worker.cluster.jobs import JobError, load_job_file
from worker.cluster.remote import start_job
from worker.cluster.serve import DEFAULT_STORAGE_PORT
from worker.cluster.storage import JobState
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker submit",
        description="Submit a YAML job file to a running cluster and print the job id.",
        epilog="Exit codes: 0 = submitted (with --wait: succeeded); 1 = the job failed or was "
        "cancelled, or --timeout passed; 2 = bad job file; 3 = storage unreachable or refused.",
    )
    parser.add_argument("jobfile", type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="storage host (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_STORAGE_PORT, help="storage port")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end")
    parser.add_argument("--timeout", type=float, default=3600.0, help="--wait limit (seconds)")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m worker submit``."""
    args = _parser().parse_args(list(argv))
    try:
        job = load_job_file(args.jobfile)
    except JobError as error:
        print(f"submit: {error}")
        return EXIT_USAGE
    with grpc.insecure_channel(f"{args.host}:{args.port}") as channel:
        try:
            jobs, job_id = start_job(channel, job)
        except grpc.RpcError as error:
            return _rpc_failure(f"storage at {args.host}:{args.port}", error)
        print(job_id, flush=True)
        if not args.wait:
            return 0
        try:
            return _follow(jobs, job_id, args.timeout)
        except grpc.RpcError as error:
            return _rpc_failure(f"lost the storage at {args.host}:{args.port}", error)


def _rpc_failure(what: str, error: grpc.RpcError) -> int:
    """Print one line naming the failed call's status and details; the exit code for it."""
    print(f"submit: {what}: {error.code().name}: {error.details()}")
    return EXIT_UNREACHABLE


def _follow(jobs: storage_pb2_grpc.JobOrchestrationServiceStub, job_id: int, limit: float) -> int:
    deadline = time.monotonic() + limit
    request = storage_pb2.JobIdRequest(job_id=job_id)
    while True:
        state = JobState(jobs.GetJobState(request, timeout=10).state)
        if state.terminal:
            break
        if time.monotonic() >= deadline:
            print(f"job {job_id}: still {state.name} after {limit:g} s")
            return EXIT_FAILED
        time.sleep(0.2)
    print(f"job {job_id}: {state.name}")
    if state is JobState.SUCCEEDED:
        raw = jobs.GetJobOutputs(request, timeout=10).serialized_outputs
        try:
            values = decode_output_values(raw)
        except FrameError:
            values = ["<undecodable>"]
        print("outputs: " + ", ".join(repr(v) for v in values))
        return 0
    error_message = jobs.GetJobError(request, timeout=10).error_message
    if error_message:
        print(f"error: {error_message}")
    return EXIT_FAILED
