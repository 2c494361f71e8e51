"""The reference cluster's admin service (ours, not Spider's): jobs, tasks, results, workers.

Served by the storage server next to Spider's storage services, it reads the storage engine's
durable rows and live instances through its read accessors and translates them into
``admin.proto`` messages. Cancelling goes through the engine's ``cancel_job``, exactly as
Spider's ``CancelJob`` does (so the job's cleanup task runs). Task names come from the job's
submission, decoded once per job and cached (a submission never changes).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable
from typing import Final, TypeVar

import grpc

from worker.cluster.db import JobRow, TaskRow
from worker.cluster.jobs import Job, JobError, decode_job
from worker.cluster.storage import JobState, StorageEngine, StorageFault, task_key
from worker.transport._generated.admin import admin_pb2, admin_pb2_grpc

__all__ = ["ClusterAdmin", "add_admin_service"]

log = logging.getLogger("worker.cluster.admin")

_Response = TypeVar("_Response")
_SPEC_CACHE_SIZE: Final = 256
_TASK_STATES: Final = ("pending", "ready", "running", "succeeded", "failed", "cancelled")


def _name_and_function(spec: Job | None, key: str) -> tuple[str, str]:
    """The task's name in the job file and its ``module.function`` ("" when unknown)."""
    if spec is None:
        return key, ""
    if key.startswith("index:"):
        index = int(key.split(":", 1)[1])
        if index < len(spec.tasks):
            task = spec.tasks[index]
            return task.name, f"{task.module}.{task.function}"
        return key, ""
    aux = spec.commit if key == "commit" else spec.cleanup
    return key, "" if aux is None else f"{aux.module}.{aux.function}"


class ClusterAdmin(admin_pb2_grpc.ClusterAdminServiceServicer):
    """The admin servicer over a storage engine."""

    def __init__(self, engine: StorageEngine) -> None:
        self.engine = engine

    # --- reading ---

    @functools.lru_cache(maxsize=_SPEC_CACHE_SIZE)  # noqa: B019 (one servicer per server)
    def _spec(self, job_id: int) -> Job | None:
        row = self.engine.job_record(job_id)
        try:
            return decode_job(row.graph, row.inputs)
        except JobError:
            return None

    def _summary(self, row: JobRow) -> admin_pb2.JobSummary:
        # Progress is over the graph's regular tasks; commit and cleanup are listed by status.
        counts = collections.Counter(
            task.state for task in self.engine.task_rows(row.id) if task.task.startswith("index:")
        )
        tasks = admin_pb2.TaskCounts(total=sum(counts.values()))
        for state in _TASK_STATES:
            setattr(tasks, state, counts[state])
        return admin_pb2.JobSummary(
            job_id=row.id,
            name=row.name,
            state=JobState(row.state).name,
            tasks=tasks,
            created_at=row.created_at,
            finished_at=row.finished_at or 0.0,
            error=row.error,
        )

    def _task_status(self, spec: Job | None, row: TaskRow) -> admin_pb2.TaskStatus:
        name, function = _name_and_function(spec, row.task)
        return admin_pb2.TaskStatus(
            key=row.task,
            name=name,
            function=function,
            state=row.state,
            attempts=row.attempts,
            failures=row.failures,
            retries_left=row.retries_left,
            last_error=row.error,
        )

    # --- RPCs ---

    def ListJobs(
        self, request: admin_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListJobsResponse:
        """Every job, newest first, with state and progress."""

        def handle() -> admin_pb2.ListJobsResponse:
            rows = self.engine.recent_jobs(request.limit or None)
            return admin_pb2.ListJobsResponse(jobs=[self._summary(row) for row in rows])

        return _serve("ListJobs", context, handle)

    def GetJobStatus(
        self, request: admin_pb2.JobRequest, context: grpc.ServicerContext
    ) -> admin_pb2.JobStatus:
        """One job and each of its tasks."""

        def handle() -> admin_pb2.JobStatus:
            row = self.engine.job_record(request.job_id)
            spec = self._spec(row.id)
            return admin_pb2.JobStatus(
                job=self._summary(row),
                tasks=[self._task_status(spec, task) for task in self.engine.task_rows(row.id)],
            )

        return _serve("GetJobStatus", context, handle)

    def GetJobResult(
        self, request: admin_pb2.JobRequest, context: grpc.ServicerContext
    ) -> admin_pb2.JobResult:
        """One job and its outputs."""

        def handle() -> admin_pb2.JobResult:
            row = self.engine.job_record(request.job_id)
            return admin_pb2.JobResult(
                job=self._summary(row), serialized_outputs=row.outputs or b""
            )

        return _serve("GetJobResult", context, handle)

    def CancelJob(
        self, request: admin_pb2.JobRequest, context: grpc.ServicerContext
    ) -> admin_pb2.JobSummary:
        """Cancel a job through storage's own cancellation (cleanup runs)."""

        def handle() -> admin_pb2.JobSummary:
            self.engine.cancel_job(request.job_id)
            log.info("job cancelled by an operator", extra={"fields": {"job_id": request.job_id}})
            return self._summary(self.engine.job_record(request.job_id))

        return _serve("CancelJob", context, handle)

    def ListWorkers(
        self, request: admin_pb2.ListWorkersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListWorkersResponse:
        """Every registered worker with its last heartbeat and running tasks."""

        def handle() -> admin_pb2.ListWorkersResponse:
            running: dict[int, list[admin_pb2.RunningTask]] = {}
            for instance_id, (em_id, job_id, task_id) in sorted(
                self.engine.live_instances().items()
            ):
                key = task_key(task_id)
                try:
                    name = _name_and_function(self._spec(job_id), key)[0]
                except StorageFault:
                    name = key
                running.setdefault(em_id, []).append(
                    admin_pb2.RunningTask(
                        job_id=job_id, key=key, name=name, task_instance_id=instance_id
                    )
                )
            return admin_pb2.ListWorkersResponse(
                workers=[
                    admin_pb2.WorkerStatus(
                        worker_id=row.id,
                        ip_address=row.ip_address,
                        state=row.state,
                        last_heartbeat_at=row.last_heartbeat_at,
                        running=running.get(row.id, []),
                    )
                    for row in self.engine.execution_managers()
                ]
            )

        return _serve("ListWorkers", context, handle)


def _serve(rpc: str, context: grpc.ServicerContext, handler: Callable[[], _Response]) -> _Response:
    """Run ``handler``; a storage fault is its status, a bug is ``INTERNAL`` (still serving)."""
    try:
        return handler()
    except StorageFault as fault:
        context.abort(grpc.StatusCode[fault.code.name], fault.message)
    except Exception:
        log.exception("internal error", extra={"fields": {"rpc": rpc}})
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable")  # abort raises


def add_admin_service(server: grpc.Server, engine: StorageEngine) -> None:
    """Serve the admin service of ``engine`` on ``server``."""
    admin_pb2_grpc.add_ClusterAdminServiceServicer_to_server(ClusterAdmin(engine), server)
