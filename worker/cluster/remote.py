"""Submitting a job model to a running cluster over gRPC and waiting for it (``worker.api.submit``).

``python -m worker submit`` does the same from a job file; this is its Python form, for a job
built in Python. It uses the single built-in resource group of the reference cluster.
"""

from __future__ import annotations

import time
from typing import Any, Final

import grpc

from worker.api import JobFailedError
from worker.cluster.jobs import Job, encode_job
from worker.cluster.storage import DEFAULT_RESOURCE_GROUP, JOB_OUTPUTS_MAX_BYTES, JobState
from worker.taskio import GraphOutputsDecodeError, decode_graph_output_values
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc

__all__ = ["STORAGE_RESTARTING_CODES", "run_remote", "start_job"]

#: What a client following a job hears from a storage that is restarting or briefly unreachable,
#: and retries: a storage stopping with no grace ends in-flight calls with CANCELLED (the client
#: itself never cancels them), an unanswered call times out, and a restarted one may be full.
STORAGE_RESTARTING_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)
_CALL_TIMEOUT_SEC: Final = 30.0
_POLL_SEC: Final = 0.2


def start_job(channel: grpc.Channel, job: Job) -> int:
    """Register ``job`` in the default resource group and start it; returns its id.

    Raises ``grpc.RpcError`` if the storage cannot be reached or refuses the job.
    """
    graph, inputs = encode_job(job)
    jobs = storage_pb2_grpc.JobOrchestrationServiceStub(channel)
    groups = storage_pb2_grpc.ResourceGroupManagementServiceStub(channel)
    group = groups.AddResourceGroup(
        storage_pb2.AddResourceGroupRequest(external_resource_group_id=DEFAULT_RESOURCE_GROUP),
        timeout=_CALL_TIMEOUT_SEC,
    ).resource_group_id
    job_id = jobs.RegisterJob(
        storage_pb2.RegisterJobRequest(
            resource_group_id=group,
            compressed_serialized_task_graph=graph,
            compressed_serialized_inputs=inputs,
        ),
        timeout=_CALL_TIMEOUT_SEC,
    ).job_id
    jobs.StartJob(storage_pb2.JobIdRequest(job_id=job_id), timeout=_CALL_TIMEOUT_SEC)
    return int(job_id)


def run_remote(job: Job, address: str, *, timeout_sec: float) -> list[Any]:
    """Register and start ``job`` at the storage ``address`` (``host:port``), wait, and return
    its outputs; raises ``worker.api.JobFailedError`` unless it succeeded, and ``grpc.RpcError``
    if the storage cannot be reached or refuses the job."""
    with grpc.insecure_channel(address) as channel:
        job_id = start_job(channel, job)
        jobs = storage_pb2_grpc.JobOrchestrationServiceStub(channel)
        request = storage_pb2.JobIdRequest(job_id=job_id)
        deadline = time.monotonic() + timeout_sec
        while True:
            state = JobState(jobs.GetJobState(request, timeout=_CALL_TIMEOUT_SEC).state)
            if state.terminal:
                break
            if time.monotonic() >= deadline:
                raise JobFailedError(
                    f"job {job_id}: still {state.name} after {timeout_sec:g} s", state=state.name
                )
            time.sleep(_POLL_SEC)
        if state is not JobState.SUCCEEDED:
            error = jobs.GetJobError(request, timeout=_CALL_TIMEOUT_SEC).error_message
            raise JobFailedError(f"job {job_id} {state.name}: {error}", state=state.name)
        raw = jobs.GetJobOutputs(request, timeout=_CALL_TIMEOUT_SEC).serialized_outputs
    try:
        return decode_graph_output_values(raw, max_bytes=JOB_OUTPUTS_MAX_BYTES)
    except GraphOutputsDecodeError as error:
        raise JobFailedError(
            f"job {job_id}: outputs not decodable: {error}", state=state.name
        ) from error
