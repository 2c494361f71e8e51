"""gRPC servicers over the storage and scheduler engines, with the test hooks of protocol.md §8.7.

The servicers only translate: protobuf in, engine call, protobuf out, :class:`StorageFault` to a
status. :class:`FaultHooks` lets a test script a status, a delay or a malformed response for the
next calls of any RPC, or delay every call of an RPC (to widen a window).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import attrs
import grpc

from worker.cluster.admin import add_admin_service
from worker.cluster.callpool import CallPool
from worker.cluster.scheduler import (
    SchedulerBusy,
    SchedulerClosed,
    SchedulerEngine,
    SchedulerSettings,
)
from worker.cluster.status import ClusterStatus, status_handler
from worker.cluster.storage import STORAGE_INTERNAL_ERROR, Lane, StorageEngine, StorageFault
from worker.errors import Rpc, StatusCode
from worker.model import TaskId
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc
from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc
from worker.transport.convert import task_id_from_proto, task_id_to_proto

__all__ = [
    "Delay",
    "Fail",
    "FaultHooks",
    "ListenError",
    "Listener",
    "Malformed",
    "SchedulerServer",
    "StorageServer",
    "listen",
    "scheduler_threads",
    "task_id_or_none",
]

log = logging.getLogger("worker.cluster.servers")

#: gRPC's default server receive limit, kept as Spider's servers keep it.
SERVER_RECEIVE_LIMIT = 4 * 1024 * 1024
_Response = TypeVar("_Response")


@attrs.frozen(slots=True)
class Fail:
    """Answer the call with ``code`` (a delay first, e.g. to provoke ``DEADLINE_EXCEEDED``)."""

    code: StatusCode
    message: str = "scripted failure"
    delay_sec: float = 0.0


@attrs.frozen(slots=True)
class Delay:
    """Sleep ``seconds`` before serving the call normally."""

    seconds: float


@attrs.frozen(slots=True)
class Malformed:
    """Serve the call, then drop ``field`` from the response.

    ``field``: ``"registration"``, ``"execution_context"``, ``"tdl_context"``,
    ``"timeout_policy"`` or ``"result"`` (``NextTask``'s oneof).
    """

    field: str


Action = Fail | Delay | Malformed


class FaultHooks:
    """Scripted per-RPC behaviour; RPCs are named by method, e.g. ``"RegisterTaskInstance"``."""

    def __init__(self, history: int = 100_000) -> None:
        """No script: every call is served normally; ``history`` arrival times kept per RPC.

        The bound keeps a long-lived ``python -m worker cluster`` from growing without limit.
        """
        self._lock = threading.Lock()
        self._scripts: dict[str, collections.deque[Action]] = collections.defaultdict(
            collections.deque
        )
        self._always: dict[str, float] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        #: ``time.monotonic()`` at the arrival of each call, per RPC (to check backoff gaps).
        self.call_times: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=history)
        )
        #: The same, for the calls answered by a scripted :class:`Fail`.
        self.failed_call_times: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=history)
        )
        #: Called after every successful call as ``(rpc, request, response, started, finished)``
        #: (``time.perf_counter`` seconds), e.g. by the benchmark; None = no observation.
        self.observer: Callable[[str, Any, Any, float, float], None] | None = None

    def script(self, rpc: str, *actions: Action) -> None:
        """Apply ``actions`` to the next calls of ``rpc``, one per call, in order."""
        with self._lock:
            self._scripts[rpc].extend(actions)

    def delay_always(self, rpc: str, seconds: float) -> None:
        """Delay every later call of ``rpc`` by ``seconds`` (0 removes the delay)."""
        with self._lock:
            if seconds > 0:
                self._always[rpc] = seconds
            else:
                self._always.pop(rpc, None)

    def clear(self) -> None:
        """Forget every script and delay."""
        with self._lock:
            self._scripts.clear()
            self._always.clear()

    def take(self, rpc: str) -> tuple[float, Action | None]:
        """``(delay, action)`` for one call of ``rpc``."""
        with self._lock:
            self.calls[rpc] += 1
            now = time.monotonic()
            self.call_times[rpc].append(now)
            queue = self._scripts.get(rpc)
            action = queue.popleft() if queue else None
            if isinstance(action, Fail):
                self.failed_call_times[rpc].append(now)
            return self._always.get(rpc, 0.0), action


def _abort(context: grpc.ServicerContext, code: StatusCode, message: str) -> None:
    context.abort(grpc.StatusCode[code.name], message)


def task_id_or_none(request: Any, rpc: Rpc) -> TaskId | None:
    """The request's ``task_id`` as a model value, None when missing or kind-less."""
    if not request.HasField("task_id") or request.task_id.WhichOneof("kind") is None:
        return None
    return task_id_from_proto(request.task_id, rpc)


class _Hooked:
    """Shared call wrapper: apply the hooks, map faults to statuses, keep serving on bugs."""

    #: The details of the ``INTERNAL`` answer to an unexpected failure (a bug) of this service.
    internal_message = "internal error"

    def __init__(self, hooks: FaultHooks) -> None:
        self.hooks = hooks

    def _serve(
        self,
        rpc: str,
        context: grpc.ServicerContext,
        handler: Callable[[], _Response],
        malform: Callable[[Any, str], None] | None = None,
        request: Any = None,
    ) -> _Response:
        started = time.perf_counter()
        delay, action = self.hooks.take(rpc)
        if isinstance(action, Delay):
            delay += action.seconds
        if isinstance(action, Fail):
            delay += action.delay_sec
        if delay > 0:
            time.sleep(delay)
        if isinstance(action, Fail):
            _abort(context, action.code, action.message)
        try:
            response = handler()
        except StorageFault as fault:
            log.info(
                "request rejected",
                extra={"fields": {"rpc": rpc, "code": fault.code.name, "detail": fault.message}},
            )
            _abort(context, fault.code, fault.message)
            raise AssertionError("unreachable") from None  # abort raises
        except SchedulerClosed:
            _abort(context, StatusCode.INTERNAL, "scheduler is shutting down")
            raise AssertionError("unreachable") from None
        except SchedulerBusy:
            _abort(context, StatusCode.RESOURCE_EXHAUSTED, "too many concurrent long polls")
            raise AssertionError("unreachable") from None
        except Exception:
            # A bug must not take the service down: answer INTERNAL and keep serving.
            log.exception("internal error", extra={"fields": {"rpc": rpc}})
            _abort(context, StatusCode.INTERNAL, self.internal_message)
            raise AssertionError("unreachable") from None
        if isinstance(action, Malformed) and malform is not None:
            malform(response, action.field)
        observer = self.hooks.observer
        if observer is not None:
            observer(rpc, request, response, started, time.perf_counter())
        return response


def _clear(message: Any, field: str) -> None:
    if field == "tdl_context" or field == "timeout_policy":
        message.execution_context.ClearField(field)
    else:
        message.ClearField(field)


class _StorageService(_Hooked):
    """A storage servicer: the hooked call wrapper over the storage engine."""

    def __init__(self, engine: StorageEngine, hooks: FaultHooks) -> None:
        super().__init__(hooks)
        self.engine = engine


class _TaskInstances(_StorageService, storage_pb2_grpc.TaskInstanceManagementServiceServicer):
    # protocol.md §8.3: every INTERNAL answer of this service reads the same.
    internal_message = STORAGE_INTERNAL_ERROR

    def RegisterTaskInstance(
        self, request: storage_pb2.RegisterTaskInstanceRequest, context: grpc.ServicerContext
    ) -> storage_pb2.RegisterTaskInstanceResponse:
        def handle() -> storage_pb2.RegisterTaskInstanceResponse:
            info = self.engine.register_task_instance(
                request.job_id,
                task_id_or_none(request, Rpc.REGISTER_TASK_INSTANCE),
                request.execution_manager_id,
                request.session_id,
            )
            return storage_pb2.RegisterTaskInstanceResponse(
                execution_context=storage_pb2.ExecutionContext(
                    task_instance_id=info.task_instance_id,
                    tdl_context=storage_pb2.TdlContext(
                        package=info.package, task_func=info.task_func
                    ),
                    timeout_policy=storage_pb2.TimeoutPolicy(
                        soft_timeout_ms=info.soft_timeout_ms, hard_timeout_ms=info.hard_timeout_ms
                    ),
                    serialized_task_io=info.serialized_task_io,
                )
            )

        return self._serve("RegisterTaskInstance", context, handle, _clear, request=request)

    def ReportTaskSuccess(
        self, request: storage_pb2.ReportTaskSuccessRequest, context: grpc.ServicerContext
    ) -> common_pb2.Void:
        def handle() -> common_pb2.Void:
            self.engine.report_success(
                request.job_id,
                task_id_or_none(request, Rpc.REPORT_TASK_SUCCESS),
                request.task_instance_id,
                request.session_id,
                request.serialized_outputs,
            )
            return common_pb2.Void()

        return self._serve("ReportTaskSuccess", context, handle, request=request)

    def ReportTaskFailure(
        self, request: storage_pb2.ReportTaskFailureRequest, context: grpc.ServicerContext
    ) -> common_pb2.Void:
        def handle() -> common_pb2.Void:
            self.engine.report_failure(
                request.job_id,
                task_id_or_none(request, Rpc.REPORT_TASK_FAILURE),
                request.task_instance_id,
                request.session_id,
                request.error_message,
            )
            return common_pb2.Void()

        return self._serve("ReportTaskFailure", context, handle, request=request)


class _Liveness(_StorageService, storage_pb2_grpc.ExecutionManagerLivenessServiceServicer):
    def RegisterExecutionManager(
        self, request: storage_pb2.RegisterExecutionManagerRequest, context: grpc.ServicerContext
    ) -> storage_pb2.RegisterExecutionManagerResponse:
        def handle() -> storage_pb2.RegisterExecutionManagerResponse:
            em_id, session = self.engine.register_execution_manager(request.ip_address)
            return storage_pb2.RegisterExecutionManagerResponse(
                registration=storage_pb2.ExecutionManagerRegistration(
                    execution_manager_id=em_id, session_id=session
                )
            )

        return self._serve("RegisterExecutionManager", context, handle, _clear, request=request)

    def UpdateExecutionManagerHeartbeat(
        self, request: storage_pb2.ExecutionManagerIdRequest, context: grpc.ServicerContext
    ) -> storage_pb2.UpdateExecutionManagerHeartbeatResponse:
        def handle() -> storage_pb2.UpdateExecutionManagerHeartbeatResponse:
            session = self.engine.heartbeat(request.execution_manager_id)
            return storage_pb2.UpdateExecutionManagerHeartbeatResponse(session_id=session)

        return self._serve("UpdateExecutionManagerHeartbeat", context, handle, request=request)


def _state_response(engine: StorageEngine, job_id: int) -> storage_pb2.JobStateResponse:
    state = storage_pb2.JobState.ValueType(int(engine.job_state(job_id)))
    return storage_pb2.JobStateResponse(state=state)


class _Jobs(_StorageService, storage_pb2_grpc.JobOrchestrationServiceServicer):
    def RegisterJob(
        self, request: storage_pb2.RegisterJobRequest, context: grpc.ServicerContext
    ) -> storage_pb2.RegisterJobResponse:
        def handle() -> storage_pb2.RegisterJobResponse:
            job_id = self.engine.register_job(
                request.resource_group_id,
                request.compressed_serialized_task_graph,
                request.compressed_serialized_inputs,
            )
            return storage_pb2.RegisterJobResponse(job_id=job_id)

        return self._serve("RegisterJob", context, handle, request=request)

    def StartJob(
        self, request: storage_pb2.JobIdRequest, context: grpc.ServicerContext
    ) -> storage_pb2.JobStateResponse:
        def handle() -> storage_pb2.JobStateResponse:
            self.engine.start_job(request.job_id)
            return _state_response(self.engine, request.job_id)

        return self._serve("StartJob", context, handle, request=request)

    def CancelJob(
        self, request: storage_pb2.JobIdRequest, context: grpc.ServicerContext
    ) -> storage_pb2.JobStateResponse:
        def handle() -> storage_pb2.JobStateResponse:
            self.engine.cancel_job(request.job_id)
            return _state_response(self.engine, request.job_id)

        return self._serve("CancelJob", context, handle, request=request)

    def GetJobState(
        self, request: storage_pb2.JobIdRequest, context: grpc.ServicerContext
    ) -> storage_pb2.JobStateResponse:
        def handle() -> storage_pb2.JobStateResponse:
            return _state_response(self.engine, request.job_id)

        return self._serve("GetJobState", context, handle, request=request)

    def GetJobOutputs(
        self, request: storage_pb2.JobIdRequest, context: grpc.ServicerContext
    ) -> storage_pb2.JobOutputsResponse:
        def handle() -> storage_pb2.JobOutputsResponse:
            outputs = self.engine.job_outputs(request.job_id)
            return storage_pb2.JobOutputsResponse(serialized_outputs=outputs)

        return self._serve("GetJobOutputs", context, handle, request=request)

    def GetJobError(
        self, request: storage_pb2.JobIdRequest, context: grpc.ServicerContext
    ) -> storage_pb2.JobErrorResponse:
        def handle() -> storage_pb2.JobErrorResponse:
            return storage_pb2.JobErrorResponse(error_message=self.engine.job_error(request.job_id))

        return self._serve("GetJobError", context, handle, request=request)


class _Inbound(_StorageService, storage_pb2_grpc.InboundQueueServiceServicer):
    def _poll(
        self, rpc: str, lane: Lane, request: Any, context: grpc.ServicerContext
    ) -> storage_pb2.PollReadyTasksResponse:
        def handle() -> storage_pb2.PollReadyTasksResponse:
            session, entries = self.engine.poll_ready(
                (lane,), request.max_items, request.wait_ms / 1000
            )
            return storage_pb2.PollReadyTasksResponse(
                tasks=storage_pb2.ReadyTasks(
                    session_id=session,
                    tasks=[
                        storage_pb2.ReadyTask(
                            resource_group_id=e.resource_group_id,
                            job_id=e.job_id,
                            task_id=task_id_to_proto(e.task_id),
                        )
                        for e in entries
                    ],
                )
            )

        return self._serve(rpc, context, handle)

    def PollReadyTasks(
        self, request: storage_pb2.PollReadyTasksRequest, context: grpc.ServicerContext
    ) -> storage_pb2.PollReadyTasksResponse:
        return self._poll("PollReadyTasks", Lane.REGULAR, request, context)

    def PollReadyCommitTasks(
        self, request: storage_pb2.PollReadyTasksRequest, context: grpc.ServicerContext
    ) -> storage_pb2.PollReadyTasksResponse:
        return self._poll("PollReadyCommitTasks", Lane.COMMIT, request, context)

    def PollReadyCleanupTasks(
        self, request: storage_pb2.PollReadyTasksRequest, context: grpc.ServicerContext
    ) -> storage_pb2.PollReadyTasksResponse:
        return self._poll("PollReadyCleanupTasks", Lane.CLEANUP, request, context)


class _Groups(_StorageService, storage_pb2_grpc.ResourceGroupManagementServiceServicer):
    def AddResourceGroup(
        self, request: storage_pb2.AddResourceGroupRequest, context: grpc.ServicerContext
    ) -> storage_pb2.ResourceGroupIdResponse:
        def handle() -> storage_pb2.ResourceGroupIdResponse:
            group_id = self.engine.add_resource_group(request.external_resource_group_id)
            return storage_pb2.ResourceGroupIdResponse(resource_group_id=group_id)

        return self._serve("AddResourceGroup", context, handle, request=request)

    def VerifyResourceGroup(
        self, request: storage_pb2.VerifyResourceGroupRequest, context: grpc.ServicerContext
    ) -> common_pb2.Void:
        def handle() -> common_pb2.Void:
            self.engine.verify_resource_group(request.resource_group_id)
            return common_pb2.Void()

        return self._serve("VerifyResourceGroup", context, handle, request=request)


class _SchedulerRegistration(
    _StorageService, storage_pb2_grpc.SchedulerRegistrationServiceServicer
):
    def RegisterScheduler(
        self, request: storage_pb2.RegisterSchedulerRequest, context: grpc.ServicerContext
    ) -> storage_pb2.RegisterSchedulerResponse:
        def handle() -> storage_pb2.RegisterSchedulerResponse:
            scheduler_id, session = self.engine.register_scheduler(request.host, request.port)
            return storage_pb2.RegisterSchedulerResponse(
                registration=storage_pb2.SchedulerRegistration(
                    scheduler_id=scheduler_id, session_id=session
                )
            )

        return self._serve("RegisterScheduler", context, handle, request=request)

    def GetSchedulers(
        self, request: common_pb2.Void, context: grpc.ServicerContext
    ) -> storage_pb2.GetSchedulersResponse:
        # As Spider's storage does (§8.6 [O]); the scheduler endpoint is static config.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetSchedulers is not implemented")
        raise AssertionError("unreachable")


class _Sessions(_StorageService, storage_pb2_grpc.SessionManagementServiceServicer):
    def GetSession(
        self, request: common_pb2.Void, context: grpc.ServicerContext
    ) -> storage_pb2.GetSessionResponse:
        return self._serve(
            "GetSession",
            context,
            lambda: storage_pb2.GetSessionResponse(session_id=self.engine.session_id),
        )


class _Scheduler(_Hooked, scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, engine: SchedulerEngine, hooks: FaultHooks) -> None:
        super().__init__(hooks)
        self.engine = engine

    def NextTask(
        self, request: scheduler_pb2.NextTaskRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.NextTaskResponse:
        def handle() -> scheduler_pb2.NextTaskResponse:
            ack: tuple[int, int] | None = None
            if request.HasField("prev_assignment"):
                ack = (request.prev_assignment.id, getattr(request.prev_assignment, "from"))
            # A client that gives up (cancel, deadline) wakes the wait so the thread is freed;
            # a call that already returned wakes nobody (every other long poll would wake and
            # wait again for nothing).
            waiting = True

            def on_termination() -> None:
                if waiting:
                    self.engine.wake()

            context.add_callback(on_termination)
            try:
                assignment = self.engine.next_task(
                    request.execution_manager_id,
                    ack,
                    request.wait_time_ms / 1000,
                    is_cancelled=lambda: not context.is_active(),
                )
            finally:
                waiting = False
            if assignment is None:
                return scheduler_pb2.NextTaskResponse(no_task=common_pb2.Void())
            return scheduler_pb2.NextTaskResponse(
                assignment=scheduler_pb2.SchedulerAssignment(
                    id=assignment.id,
                    resource_group_id=assignment.resource_group_id,
                    job_id=assignment.job_id,
                    task_id=task_id_to_proto(assignment.task_id),
                    scheduler_id=assignment.scheduler_id,
                    session_id=assignment.session_id,
                )
            )

        def malform(response: scheduler_pb2.NextTaskResponse, field: str) -> None:
            response.ClearField("assignment")
            response.ClearField("no_task")

        return self._serve("NextTask", context, handle, malform, request=request)

    def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> common_pb2.Void:
        def handle() -> common_pb2.Void:
            self.engine.heartbeat(request.execution_manager_id)
            return common_pb2.Void()

        return self._serve("Heartbeat", context, handle, request=request)

    def Shutdown(
        self, request: scheduler_pb2.ShutdownRequest, context: grpc.ServicerContext
    ) -> common_pb2.Void:
        def handle() -> common_pb2.Void:
            acks = [(r.id, getattr(r, "from")) for r in request.prev_assignments]
            if not self.engine.shutdown(request.execution_manager_id, acks):
                raise StorageFault(StatusCode.NOT_FOUND, "execution manager not found")
            return common_pb2.Void()

        return self._serve("Shutdown", context, handle, request=request)


class ListenError(OSError):
    """A server cannot listen on its address; the message is one line naming it."""


def _why_not_bindable(host: str, port: int) -> str:
    """The operating system's reason ``host:port`` cannot be bound (grpc does not say)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        return f"bad address: {error.strerror or error}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            return error.strerror or str(error)
    return "refused by grpc"


@contextlib.contextmanager
def _core_log_silenced() -> Iterator[None]:
    """Keep grpc's C core from writing its own multi-line report of a failed bind to fd 2.

    A start-up failure must be one line, and :class:`ListenError` already names the address and
    the reason. Used only around binding (start-up and restart hooks), which takes microseconds.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@attrs.frozen(slots=True)
class Listener:
    """A gRPC server bound to its port and not serving yet; services are added before start.

    Binding first lets a cluster refuse a taken port before it opens its database.
    """

    server: grpc.Server
    host: str
    port: int


def listen(host: str, port: int, threads: int) -> Listener:
    """Bind ``host:port`` (0 = any free port) with room for ``threads`` concurrent calls.

    ``grpc.so_reuseport`` is off, so a port another process listens on is refused instead of
    being shared (the kernel would split connections between the two). Calls beyond ``threads``
    are answered ``RESOURCE_EXHAUSTED`` at once rather than queued behind long polls; the pool
    starts threads only as calls need them.
    """
    server = grpc.server(
        CallPool(max_workers=threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", SERVER_RECEIVE_LIMIT),
        ],
        maximum_concurrent_rpcs=threads,
    )
    address = f"{host}:{port}"
    try:
        with _core_log_silenced():
            bound = int(server.add_insecure_port(address))
    except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
        bound = 0
    if bound == 0:
        server.stop(None)
        raise ListenError(f"cannot listen on {address}: {_why_not_bindable(host, port)}")
    return Listener(server, host, bound)


#: Threads a server keeps for calls other than long polls (heartbeats, reports, job calls).
SHORT_CALL_THREADS: Final = 64
#: Concurrent storage calls; storage's only long polls are remote schedulers' inbound polls.
STORAGE_THREADS: Final = 256


def scheduler_threads(settings: SchedulerSettings) -> int:
    """The scheduler server's thread bound: every allowed long poll plus the short calls."""
    return settings.max_long_polls + SHORT_CALL_THREADS


class StorageServer:
    """Every storage service of an engine on one gRPC port."""

    def __init__(
        self,
        engine: StorageEngine,
        listener: Listener,
        hooks: FaultHooks | None = None,
        status: Callable[[], ClusterStatus] | None = None,
    ) -> None:
        """Serve on ``listener`` (bound by :func:`listen`); serving starts with :meth:`start`.

        ``status`` answers the cluster status call (:mod:`.status`) when given.
        """
        self.engine = engine
        self.hooks = hooks or FaultHooks()
        self._server = listener.server
        if status is not None:
            self._server.add_generic_rpc_handlers((status_handler(status),))
        storage_pb2_grpc.add_TaskInstanceManagementServiceServicer_to_server(
            _TaskInstances(engine, self.hooks), self._server
        )
        storage_pb2_grpc.add_ExecutionManagerLivenessServiceServicer_to_server(
            _Liveness(engine, self.hooks), self._server
        )
        storage_pb2_grpc.add_JobOrchestrationServiceServicer_to_server(
            _Jobs(engine, self.hooks), self._server
        )
        storage_pb2_grpc.add_InboundQueueServiceServicer_to_server(
            _Inbound(engine, self.hooks), self._server
        )
        storage_pb2_grpc.add_ResourceGroupManagementServiceServicer_to_server(
            _Groups(engine, self.hooks), self._server
        )
        storage_pb2_grpc.add_SchedulerRegistrationServiceServicer_to_server(
            _SchedulerRegistration(engine, self.hooks), self._server
        )
        storage_pb2_grpc.add_SessionManagementServiceServicer_to_server(
            _Sessions(engine, self.hooks), self._server
        )
        add_admin_service(self._server, engine)  # ours: the status commands' service
        self.host = listener.host
        self.port = listener.port
        self._gc_stop = threading.Event()
        self._gc_thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve, and run a GC cycle every ``gc_interval_sec`` (the first one interval later)."""
        self._server.start()
        self._gc_thread = threading.Thread(target=self._gc_loop, name="storage-gc", daemon=True)
        self._gc_thread.start()

    def _gc_loop(self) -> None:
        while not self._gc_stop.wait(self.engine.settings.gc_interval_sec):
            try:
                self.engine.collect()
            except Exception:
                log.exception("storage GC cycle failed")

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving and the GC thread."""
        self._gc_stop.set()
        self.engine.wake_pollers()
        self._server.stop(grace).wait(5)
        if self._gc_thread is not None:
            self._gc_thread.join(timeout=5)


class SchedulerServer:
    """The ``SchedulerService`` of an engine on one gRPC port."""

    def __init__(
        self,
        engine: SchedulerEngine,
        listener: Listener,
        hooks: FaultHooks | None = None,
    ) -> None:
        """Serve on ``listener`` (bound by :func:`listen` with :func:`scheduler_threads`)."""
        self.engine = engine
        self.hooks = hooks or FaultHooks()
        self._server = listener.server
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
            _Scheduler(engine, self.hooks), self._server
        )
        self.host = listener.host
        self.port = listener.port

    def start(self) -> None:
        """Start the engine's threads and serve."""
        self.engine.start()
        self._server.start()

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop the engine (pollers get ``INTERNAL``) and the server."""
        self.engine.stop()
        self._server.stop(grace).wait(5)
