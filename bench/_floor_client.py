"""The protocol's calls alone: one blocking grpcio client, no runtime and no executor.

``python -m bench._floor_client STORAGE_PORT SCHEDULER_PORT TASKS [overlap]`` registers with the
cluster on the loopback interface and, for each of ``TASKS`` assignments, sends what the protocol
asks of any worker: ``NextTask`` carrying the previous acknowledgement, ``RegisterTaskInstance``,
and ``ReportTaskSuccess`` with the task's inputs as its outputs (what the benchmark's no-op task
returns); then ``Shutdown``. It heartbeats both services twice a second. Every call is grpcio's
blocking stub on raw protobuf messages: no trio, no bridge, no state machine, no executor round
trip, no logging. Its CPU per task, and the cluster's while serving it, are the floor any worker
of this design pays (``bench.versus_celery`` runs it as its "floor" rows). At the end it prints
one JSON line: its CPU seconds and context switches, every thread included.

The calls go one after another; with ``overlap`` the reports go to a second thread on a channel of
its own, as a worker sends them while it polls again, so the chain per task is ``NextTask`` then
``RegisterTaskInstance``: the throughput floor of one slot (with an executor that takes no time).
"""

from __future__ import annotations

import json
import queue
import resource
import sys
import threading
import time
from collections.abc import Sequence

import grpc

from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc

_TIMEOUT_SEC = 30.0
_HEARTBEAT_SEC = 0.5


def _report_each(
    channel: grpc.Channel, reports: queue.SimpleQueue[storage_pb2.ReportTaskSuccessRequest | None]
) -> None:
    instances = storage_pb2_grpc.TaskInstanceManagementServiceStub(channel)
    while (report := reports.get()) is not None:
        instances.ReportTaskSuccess(report, timeout=_TIMEOUT_SEC)


def main(argv: Sequence[str]) -> int:
    """Run ``TASKS`` assignments through the cluster at the given ports."""
    storage_port, scheduler_port, tasks = (int(value) for value in argv[:3])
    overlap = argv[3:] == ["overlap"]
    with (
        grpc.insecure_channel(f"127.0.0.1:{storage_port}") as storage_channel,
        grpc.insecure_channel(f"127.0.0.1:{scheduler_port}") as scheduler_channel,
        grpc.insecure_channel(f"127.0.0.1:{storage_port}") as report_channel,
    ):
        reports: queue.SimpleQueue[storage_pb2.ReportTaskSuccessRequest | None] = (
            queue.SimpleQueue()
        )
        reporter = threading.Thread(target=_report_each, args=(report_channel, reports))
        if overlap:
            reporter.start()
        liveness = storage_pb2_grpc.ExecutionManagerLivenessServiceStub(storage_channel)
        instances = storage_pb2_grpc.TaskInstanceManagementServiceStub(storage_channel)
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(scheduler_channel)
        registered = liveness.RegisterExecutionManager(
            storage_pb2.RegisterExecutionManagerRequest(ip_address="127.0.0.1"),
            timeout=_TIMEOUT_SEC,
        )
        em_id = registered.registration.execution_manager_id
        previous: scheduler_pb2.TaskAssignmentRecord | None = None
        beat_at = 0.0
        done = 0
        while done < tasks:
            if time.monotonic() >= beat_at:
                liveness.UpdateExecutionManagerHeartbeat(
                    storage_pb2.ExecutionManagerIdRequest(execution_manager_id=em_id),
                    timeout=_TIMEOUT_SEC,
                )
                scheduler.Heartbeat(
                    scheduler_pb2.HeartbeatRequest(execution_manager_id=em_id),
                    timeout=_TIMEOUT_SEC,
                )
                beat_at = time.monotonic() + _HEARTBEAT_SEC
            request = scheduler_pb2.NextTaskRequest(execution_manager_id=em_id, wait_time_ms=1000)
            if previous is not None:
                request.prev_assignment.CopyFrom(previous)
            answer = scheduler.NextTask(request, timeout=_TIMEOUT_SEC)
            if answer.WhichOneof("result") != "assignment":
                previous = None  # delivered with this call
                continue
            assignment = answer.assignment
            previous = scheduler_pb2.TaskAssignmentRecord(
                id=assignment.id, **{"from": assignment.scheduler_id}
            )
            context = instances.RegisterTaskInstance(
                storage_pb2.RegisterTaskInstanceRequest(
                    job_id=assignment.job_id,
                    task_id=assignment.task_id,
                    execution_manager_id=em_id,
                    session_id=assignment.session_id,
                ),
                timeout=_TIMEOUT_SEC,
            ).execution_context
            report = storage_pb2.ReportTaskSuccessRequest(
                job_id=assignment.job_id,
                task_id=assignment.task_id,
                task_instance_id=context.task_instance_id,
                execution_manager_id=em_id,
                session_id=assignment.session_id,
                serialized_outputs=context.serialized_task_io,
            )
            if overlap:
                reports.put(report)
            else:
                instances.ReportTaskSuccess(report, timeout=_TIMEOUT_SEC)
            done += 1
        if overlap:
            reports.put(None)
            reporter.join()
        scheduler.Shutdown(
            scheduler_pb2.ShutdownRequest(
                execution_manager_id=em_id, prev_assignments=[] if previous is None else [previous]
            ),
            timeout=_TIMEOUT_SEC,
        )
    # What it used, all threads included (ended ones too, which /proc no longer lists).
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "cpu_sec": usage.ru_utime + usage.ru_stime,
                "switches": usage.ru_nvcsw + usage.ru_nivcsw,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
