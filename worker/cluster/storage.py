"""The reference storage engine: protocol.md §8 semantics as a thread-safe class, no gRPC.

Durable state (sessions, workers, schedulers, groups, jobs and per-task progress) lives in SQLite
(:mod:`.db`); task instances, readiness and the ready lanes live in memory, as in Spider. Every
public method runs under one lock and either returns a value or raises :class:`StorageFault`
carrying the status code the gRPC layer answers with. The engine never stops on a bad request.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

import attrs

from worker.cluster.attempts import LOST, Attempt, AttemptLog
from worker.cluster.db import Database, EmRow, JobRow, TaskRow
from worker.cluster.jobs import (
    AuxTask,
    Job,
    JobError,
    Literal,
    Ref,
    TaskTimeouts,
    decode_job,
    encode_job,
)
from worker.cluster.retry_backoff import DelayedQueue
from worker.errors import StatusCode
from worker.executor.wire import (
    FrameDecodeError,
    decode_frame,
    decode_graph_outputs,
    encode_frame,
    encode_graph_outputs,
)
from worker.model import TaskId, TaskKind

__all__ = [
    "DEFAULT_RESOURCE_GROUP",
    "JOB_OUTPUTS_MAX_BYTES",
    "STORAGE_INTERNAL_ERROR",
    "ContextInfo",
    "JobState",
    "Lane",
    "ReadyTask",
    "StorageEngine",
    "StorageFault",
    "StorageSettings",
    "TaskState",
    "task_key",
]

log = logging.getLogger("worker.cluster.storage")

#: External id of the single built-in resource group (any password is accepted).
DEFAULT_RESOURCE_GROUP = "default"
#: The largest decompressed job outputs storage and its clients accept (a zstd-bomb bound).
JOB_OUTPUTS_MAX_BYTES: Final = 256 * 1024 * 1024
#: The details of every ``INTERNAL`` answer of ``TaskInstanceManagementService`` (§8.3).
STORAGE_INTERNAL_ERROR = "storage service internal error"


class JobState(enum.IntEnum):
    """Mirror of ``storage.JobState``."""

    JOB_STATE_UNSPECIFIED = 0
    READY = 1
    RUNNING = 2
    COMMIT_READY = 3
    CLEANUP_READY = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7

    @property
    def terminal(self) -> bool:
        """Whether the job is finished."""
        return self in _TERMINAL_JOB_STATES


_TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class TaskState(enum.Enum):
    """A task's progress inside a job."""

    PENDING = "pending"
    #: Failed with a retry left, held until its retry delay passes (our extension).
    WAITING = "waiting"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the task is finished."""
        return self in {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}


class Lane(enum.Enum):
    """The three inbound lanes the scheduler polls."""

    REGULAR = "regular"
    COMMIT = "commit"
    CLEANUP = "cleanup"


class StorageFault(Exception):
    """A request the storage answers with a non-OK status (the engine keeps serving)."""

    def __init__(self, code: StatusCode, message: str) -> None:
        """A fault answered as ``code`` with ``message``."""
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@attrs.frozen(slots=True)
class StorageSettings:
    """Storage timings (protocol.md §9); fractional seconds accepted."""

    execution_manager_stale_cutoff_sec: float = 10.0
    gc_interval_sec: float = 1.0
    terminated_job_retention_sec: float = 300.0


@attrs.frozen(slots=True)
class ReadyTask:
    """One entry of an inbound lane."""

    resource_group_id: int
    job_id: int
    task_id: TaskId


@attrs.frozen(slots=True)
class ContextInfo:
    """What ``RegisterTaskInstance`` returns: the instance id and the execution context."""

    task_instance_id: int
    package: str
    task_func: str
    soft_timeout_ms: int
    hard_timeout_ms: int
    serialized_task_io: bytes


@attrs.define(slots=True)
class _Instance:
    id: int
    em_id: int
    job_id: int
    task_id: TaskId
    soft_deadline: float
    soft_handled: bool = False


@attrs.define(slots=True)
class _Task:
    task_id: TaskId
    package: str
    function: str
    timeouts: TaskTimeouts
    retries_left: int
    max_instances: int
    declared_outputs: int
    state: TaskState = TaskState.PENDING
    waiting_parents: int = 0
    live: set[int] = attrs.field(factory=set)
    outputs: list[bytes] | None = None

    @property
    def key(self) -> str:
        return task_key(self.task_id)


@attrs.define(slots=True)
class _Job:
    id: int
    resource_group_id: int
    spec: Job
    state: JobState
    tasks: list[_Task]
    children: list[list[int]]
    commit: _Task | None
    cleanup: _Task | None
    outputs: bytes | None = None
    terminated_at: float | None = None
    #: Regular tasks succeeded so far (a counter, so a success costs O(1), not a scan of the job).
    succeeded: int = 0

    def lookup(self, task_id: TaskId) -> _Task | None:
        if task_id.kind is TaskKind.INDEX:
            index = task_id.index
            return self.tasks[index] if index is not None and index < len(self.tasks) else None
        return self.commit if task_id.kind is TaskKind.COMMIT else self.cleanup


def task_key(task_id: TaskId) -> str:
    """The name storage's tables and the admin service give a task: ``index:N``, or its kind."""
    return f"index:{task_id.index}" if task_id.kind is TaskKind.INDEX else task_id.kind.value


def _encode_job_outputs(payloads: list[bytes]) -> bytes:
    """Job outputs as SerializedTaskOutputs in Spider's storage form: above the 1024-byte rule a
    zstd frame without a content size, so the worker's decoder is exercised on that form."""
    return encode_graph_outputs(payloads, content_size=False)


_LANE_OF_KIND: Final = {
    TaskKind.INDEX: Lane.REGULAR,
    TaskKind.COMMIT: Lane.COMMIT,
    TaskKind.CLEANUP: Lane.CLEANUP,
}


def _aux_task(task_id: TaskId, spec: AuxTask | None) -> _Task | None:
    if spec is None:
        return None
    return _Task(
        task_id, spec.module, spec.function, spec.timeout, spec.retries, 1, 0, TaskState.PENDING
    )


class StorageEngine:
    """The storage semantics over a :class:`Database`; all methods are thread-safe."""

    def __init__(
        self,
        database: Database,
        settings: StorageSettings = StorageSettings(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Start a storage process: new session, built-in group, recovery of unfinished jobs."""
        self.db = database
        self.settings = settings
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._lanes: dict[Lane, collections.deque[ReadyTask]] = {
            lane: collections.deque() for lane in Lane
        }
        self._jobs: dict[int, _Job] = {}
        self._instances: dict[int, _Instance] = {}
        #: Tasks waiting out a retry delay: (job id, task id) by due time (our extension).
        self._waiting: DelayedQueue[tuple[int, TaskId]] = DelayedQueue()
        #: Who ran what when, for the run report.
        self._attempts = AttemptLog()
        self._dead: set[int] = set()
        self._next_instance_id = 1
        self.session_id = 0
        self.default_group_id = database.ensure_resource_group(DEFAULT_RESOURCE_GROUP, b"")
        with self._cond:
            self._start_session()

    # --- sessions and recovery ---

    def _start_session(self) -> None:
        self.session_id = self.db.new_session()
        # §8.2: a worker's silence counts from the restart, not from its last heartbeat before
        # the outage; one that really died is reaped a cutoff after the restart.
        self.db.raise_alive_heartbeats(self._clock())
        self._jobs.clear()
        self._instances.clear()
        self._waiting.clear()
        self._attempts.clear()
        for lane in self._lanes.values():
            lane.clear()
        self._next_instance_id = 1
        self._dead = {row.id for row in self.db.ems() if row.state == "dead"}
        self._recover()
        log.info(
            "storage session started",
            extra={"fields": {"session_id": self.session_id, "jobs": len(self._jobs)}},
        )
        self._cond.notify_all()

    def restart(self) -> int:
        """Test hook: behave as a restarted storage process (new session, state rebuilt)."""
        with self._cond:
            self._start_session()
            return self.session_id

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Test hook: hold storage's lock, so reads and hooks inside act as one step.

        The lock is re-entrant: every other method may be called inside.
        """
        with self._cond:
            yield

    def _recover(self) -> None:
        rows = self.db.jobs_in_states(
            [JobState.READY, JobState.RUNNING, JobState.COMMIT_READY, JobState.CLEANUP_READY]
        )
        for row in rows:
            try:
                spec = decode_job(row.graph, row.inputs)
            except JobError:
                log.exception("cannot recover job", extra={"fields": {"job_id": row.id}})
                continue
            job = self._build(row.id, row.resource_group_id, spec, JobState(row.state))
            job.outputs = row.outputs
            self._jobs[row.id] = job
            if job.state is JobState.RUNNING:
                self._reset_tasks(job)
                self._enqueue_roots(job)
            elif job.state is JobState.COMMIT_READY and job.commit is not None:
                self._make_ready(job, job.commit)
            elif job.state is JobState.CLEANUP_READY and job.cleanup is not None:
                self._make_ready(job, job.cleanup)

    def _build(self, job_id: int, group_id: int, spec: Job, state: JobState) -> _Job:
        tasks: list[_Task] = []
        children: list[list[int]] = [[] for _ in spec.tasks]
        for index, task in enumerate(spec.tasks):
            parents = {spec.index_of(item.task) for item in task.inputs if isinstance(item, Ref)}
            for parent in parents:
                children[parent].append(index)
            tasks.append(
                _Task(
                    TaskId.of_index(index),
                    task.module,
                    task.function,
                    task.timeout,
                    task.retries,
                    task.max_instances,
                    task.outputs,
                    TaskState.PENDING,
                    waiting_parents=len(parents),
                )
            )
        return _Job(
            job_id,
            group_id,
            spec,
            state,
            tasks,
            children,
            _aux_task(TaskId.commit(), spec.commit),
            _aux_task(TaskId.cleanup(), spec.cleanup),
        )

    def _all_tasks(self, job: _Job) -> list[_Task]:
        extra = [task for task in (job.commit, job.cleanup) if task is not None]
        return [*job.tasks, *extra]

    def _reset_tasks(self, job: _Job) -> None:
        for task in self._all_tasks(job):
            self.db.upsert_task(job.id, task.key, TaskState.PENDING.value, task.retries_left)

    def _enqueue_roots(self, job: _Job) -> None:
        for task in job.tasks:
            if task.waiting_parents == 0:
                self._make_ready(job, task)

    def _make_ready(self, job: _Job, task: _Task) -> None:
        task.state = TaskState.READY
        self.db.set_task_state(job.id, task.key, TaskState.READY.value)
        self._enqueue(job, task)

    def _enqueue(self, job: _Job, task: _Task) -> None:
        self._lanes[_LANE_OF_KIND[task.task_id.kind]].append(
            ReadyTask(job.resource_group_id, job.id, task.task_id)
        )
        self._cond.notify_all()

    # --- inbound queue ---

    def poll_ready(
        self, lanes: tuple[Lane, ...], max_items: int, wait_sec: float
    ) -> tuple[int, list[ReadyTask]]:
        """Up to ``max_items`` ready entries of ``lanes`` (in order), waiting up to ``wait_sec``.

        Returns the current session with the entries (possibly none).
        """
        deadline = time.monotonic() + max(0.0, wait_sec)
        with self._cond:
            while True:
                self._release_waiting()
                if any(self._lanes[lane] for lane in lanes):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.session_id, []
                next_due = self._waiting.next_due()
                if next_due is not None:
                    remaining = max(0.001, min(remaining, next_due - self._clock()))
                self._cond.wait(remaining)
            taken: list[ReadyTask] = []
            limit = max_items if max_items > 0 else 2**31
            for lane in lanes:
                queue = self._lanes[lane]
                while queue and len(taken) < limit:
                    taken.append(queue.popleft())
            return self.session_id, taken

    def _release_waiting(self) -> None:
        """Make the tasks whose retry delay passed ready again (and enqueue them)."""
        for job_id, task_id in self._waiting.pop_due(self._clock()):
            job = self._jobs.get(job_id)
            task = job.lookup(task_id) if job else None
            if job is None or task is None or job.state.terminal or task.state.terminal:
                continue
            if task.state is TaskState.WAITING:
                self._make_ready(job, task)

    def _retry_delay_sec(self, job: _Job, task: _Task) -> float:
        """The delay before the retry just granted (0 without a backoff); our extension."""
        if task.task_id.kind is not TaskKind.INDEX or task.task_id.index is None:
            return 0.0
        spec = job.spec.tasks[task.task_id.index]
        if spec.backoff is None:
            return 0.0
        return spec.backoff.delay_ms(spec.retries - task.retries_left) / 1000

    def wake_pollers(self) -> None:
        """Wake every blocked :meth:`poll_ready` (used when stopping)."""
        with self._cond:
            self._cond.notify_all()

    def register_scheduler(self, host: str, port: int) -> tuple[int, int]:
        """Register a scheduler: ``(scheduler_id, session_id)``; ready work is handed out again.

        A registering scheduler may replace one that took ready entries and died with them, also
        across a storage restart (whose recovery handed its entries to the scheduler then
        running). So every ready task that is not still waiting in a lane is enqueued again;
        one already waiting is not, so a first registration adds no duplicates.
        """
        with self._cond:
            scheduler_id = self.db.insert_scheduler(host, port, self.session_id, self._clock())
            waiting = {(e.job_id, e.task_id) for lane in self._lanes.values() for e in lane}
            for job in self._jobs.values():
                for task in self._all_tasks(job):
                    if task.state is TaskState.READY and (job.id, task.task_id) not in waiting:
                        self._enqueue(job, task)
            return scheduler_id, self.session_id

    # --- workers ---

    def register_execution_manager(self, ip_address: str) -> tuple[int, int]:
        """Register a worker: ``(execution_manager_id, session_id)``."""
        try:
            ipaddress.ip_address(ip_address)
        except ValueError as error:
            raise StorageFault(
                StatusCode.INVALID_ARGUMENT, f"invalid IP address: {ip_address!r}"
            ) from error
        with self._cond:
            em_id = self.db.insert_em(ip_address, self._clock())
            log.info("worker registered", extra={"fields": {"em_id": em_id, "ip": ip_address}})
            return em_id, self.session_id

    def heartbeat(self, em_id: int) -> int:
        """Refresh a worker's liveness and return the session."""
        with self._cond:
            row = self.db.em(em_id)
            if row is None:
                raise StorageFault(
                    StatusCode.INVALID_ARGUMENT, f"execution manager {em_id} not found"
                )
            if row.state == "dead":
                raise StorageFault(
                    StatusCode.FAILED_PRECONDITION, f"execution manager {em_id} is dead"
                )
            self.db.touch_em(em_id, self._clock())
            return self.session_id

    def mark_dead(self, em_id: int) -> list[ReadyTask]:
        """Test hook and reaper step: mark a worker dead and re-enqueue its live instances."""
        with self._cond:
            return self._mark_dead([em_id])

    def _mark_dead(self, em_ids: list[int]) -> list[ReadyTask]:
        self.db.mark_ems_dead(em_ids)
        self._dead.update(em_ids)
        requeued: list[ReadyTask] = []
        for instance in list(self._instances.values()):
            if instance.em_id in em_ids:
                entry = self._force_remove(instance)
                if entry is not None:
                    requeued.append(entry)
        if em_ids:
            log.warning(
                "workers marked dead",
                extra={"fields": {"em_ids": em_ids, "requeued": len(requeued)}},
            )
        return requeued

    def _force_remove(self, instance: _Instance) -> ReadyTask | None:
        """Drop an instance; re-enqueue its task (no retry spent) if it is still running."""
        self._instances.pop(instance.id, None)
        self._attempts.ended(instance.id, LOST, self._clock())
        job = self._jobs.get(instance.job_id)
        task = job.lookup(instance.task_id) if job else None
        if job is None or task is None:
            return None
        task.live.discard(instance.id)
        if task.state.terminal or job.state.terminal:
            return None
        if not task.live:
            task.state = TaskState.READY
            self.db.set_task_state(job.id, task.key, TaskState.READY.value)
        self._enqueue(job, task)
        return ReadyTask(job.resource_group_id, job.id, task.task_id)

    # --- GC: reaper, soft timeouts, job eviction ---

    def collect(self) -> None:
        """One GC cycle: reap stale workers, re-enqueue soft-timed-out tasks, evict old jobs."""
        with self._cond:
            now = self._clock()
            stale = self.db.stale_ems(now - self.settings.execution_manager_stale_cutoff_sec)
            if stale:
                self._mark_dead(stale)
            self._release_waiting()
            for instance in list(self._instances.values()):
                job = self._jobs.get(instance.job_id)
                task = job.lookup(instance.task_id) if job else None
                if job is None or task is None or task.state.terminal:
                    self._instances.pop(instance.id, None)
                    self._attempts.ended(instance.id, LOST, now)
                    continue
                if instance.em_id in self._dead:
                    self._force_remove(instance)
                elif instance.soft_deadline <= now and not instance.soft_handled:
                    instance.soft_handled = True
                    log.info(
                        "soft timeout: task re-enqueued",
                        extra={"fields": {"job_id": job.id, "task": task.key}},
                    )
                    self._enqueue(job, task)
            retention = self.settings.terminated_job_retention_sec
            for job_id, job in list(self._jobs.items()):
                if job.terminated_at is not None and job.terminated_at + retention <= now:
                    del self._jobs[job_id]
                    self._attempts.forget(job_id)

    # --- task instances ---

    def _session_gate(self, session_id: int) -> None:
        if session_id != self.session_id:
            raise StorageFault(
                StatusCode.NOT_FOUND,
                f"stale session; current storage session is {self.session_id}",
            )

    def _job_gate(self, job_id: int, task_id: TaskId) -> tuple[_Job, _Task]:
        job = self._jobs.get(job_id)
        if job is None:
            raise StorageFault(
                StatusCode.FAILED_PRECONDITION, f"cache stale: job not found in cache: {job_id}"
            )
        state = job.state
        if task_id.kind is TaskKind.INDEX:
            if state is JobState.READY:
                raise StorageFault(StatusCode.INTERNAL, STORAGE_INTERNAL_ERROR)
            if state is not JobState.RUNNING:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, f"job is {state.name}")
        elif task_id.kind is TaskKind.COMMIT:
            if state in {JobState.READY, JobState.RUNNING}:
                raise StorageFault(StatusCode.INTERNAL, STORAGE_INTERNAL_ERROR)
            if state is not JobState.COMMIT_READY:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, f"job is {state.name}")
        else:
            if not state.terminal and state is not JobState.CLEANUP_READY:
                raise StorageFault(StatusCode.INTERNAL, STORAGE_INTERNAL_ERROR)
            if state is not JobState.CLEANUP_READY:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, f"job is {state.name}")
        task = job.lookup(task_id)
        if task is None:
            raise StorageFault(StatusCode.INTERNAL, STORAGE_INTERNAL_ERROR)
        return job, task

    def register_task_instance(
        self, job_id: int, task_id: TaskId | None, em_id: int, session_id: int
    ) -> ContextInfo:
        """protocol.md §8.3, in its check order."""
        if task_id is None:
            raise StorageFault(StatusCode.INVALID_ARGUMENT, "task ID is missing")
        with self._cond:
            self._session_gate(session_id)
            job, task = self._job_gate(job_id, task_id)
            if task.state.terminal:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, "task is terminal")
            if task.state is TaskState.PENDING:
                raise StorageFault(StatusCode.INTERNAL, STORAGE_INTERNAL_ERROR)
            if len(task.live) >= task.max_instances:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, "instance limit reached")
            if self.db.em(em_id) is None:
                raise StorageFault(StatusCode.INTERNAL, STORAGE_INTERNAL_ERROR)
            instance = _Instance(
                self._next_instance_id,
                em_id,
                job_id,
                task_id,
                soft_deadline=self._clock() + task.timeouts.soft_ms / 1000,
            )
            self._next_instance_id += 1
            self._instances[instance.id] = instance
            self._attempts.started(instance.id, job_id, task.key, em_id, self._clock())
            task.live.add(instance.id)
            task.state = TaskState.RUNNING
            self.db.task_started(job.id, task.key)
            context = ContextInfo(
                instance.id,
                task.package,
                task.function,
                task.timeouts.soft_ms,
                task.timeouts.hard_ms,
                self._task_io(job, task),
            )
            if em_id in self._dead:
                self._force_remove(instance)
            return context

    def _task_io(self, job: _Job, task: _Task) -> bytes:
        kind = task.task_id.kind
        if kind is TaskKind.COMMIT:
            return _encode_job_outputs(self._job_output_payloads(job))
        if kind is TaskKind.CLEANUP:
            return b""
        assert task.task_id.index is not None
        payloads: list[bytes] = []
        for item in job.spec.tasks[task.task_id.index].inputs:
            if isinstance(item, Literal):
                payloads.append(item.payload)
            else:
                parent = job.tasks[job.spec.index_of(item.task)]
                assert parent.outputs is not None
                payloads.append(parent.outputs[item.output])
        return encode_frame(payloads)

    def _job_output_payloads(self, job: _Job) -> list[bytes]:
        if job.outputs is not None:
            return decode_graph_outputs(job.outputs, max_bytes=JOB_OUTPUTS_MAX_BYTES)
        payloads: list[bytes] = []
        for index in job.spec.sink_indices:
            outputs = job.tasks[index].outputs
            payloads.extend(outputs or [])
        return payloads

    def _live_instance(self, job: _Job, task: _Task, instance_id: int) -> _Instance:
        instance = self._instances.get(instance_id)
        if instance is None or instance_id not in task.live or instance.job_id != job.id:
            raise StorageFault(
                StatusCode.FAILED_PRECONDITION, f"task instance {instance_id} is not live"
            )
        if task.state.terminal:
            raise StorageFault(StatusCode.FAILED_PRECONDITION, "task is terminal")
        return instance

    def report_success(
        self,
        job_id: int,
        task_id: TaskId | None,
        task_instance_id: int,
        session_id: int,
        serialized_outputs: bytes,
    ) -> None:
        """protocol.md §8.4 success, in its check order."""
        if task_id is None:
            raise StorageFault(StatusCode.INVALID_ARGUMENT, "task ID is missing")
        with self._cond:
            self._session_gate(session_id)
            outputs: list[bytes] = []
            if task_id.kind is TaskKind.INDEX:
                try:
                    outputs = decode_frame(serialized_outputs)
                except FrameDecodeError as error:
                    raise StorageFault(
                        StatusCode.INVALID_ARGUMENT, f"malformed outputs: {error}"
                    ) from error
            job, task = self._job_gate(job_id, task_id)
            instance = self._live_instance(job, task, task_instance_id)
            if task_id.kind is TaskKind.INDEX and len(outputs) != task.declared_outputs:
                # §8.4: the instance fails as if reported failed, so the job never hangs.
                assert task_id.index is not None
                name = job.spec.tasks[task_id.index].name
                mismatch = (
                    f"output count mismatch: task {name} declared {task.declared_outputs} "
                    f"outputs, returned {len(outputs)}"
                )
                log.warning(
                    "output count mismatch", extra={"fields": {"job_id": job_id, "task": name}}
                )
                self._fail_instance(job, task, instance, mismatch)
                raise StorageFault(StatusCode.INVALID_ARGUMENT, mismatch)
            self._instances.pop(instance.id, None)
            self._attempts.ended(instance.id, TaskState.SUCCEEDED.value, self._clock())
            task.live.discard(instance.id)
            task.state = TaskState.SUCCEEDED
            task.outputs = outputs
            self.db.task_succeeded(job.id, task.key, encode_frame(outputs))
            if task_id.kind is TaskKind.COMMIT:
                self._finish(job, JobState.SUCCEEDED)
            elif task_id.kind is TaskKind.CLEANUP:
                self._finish(job, JobState.CANCELLED)
            else:
                self._after_regular_success(job, task)

    def _after_regular_success(self, job: _Job, task: _Task) -> None:
        assert task.task_id.index is not None
        job.succeeded += 1
        for child_index in job.children[task.task_id.index]:
            child = job.tasks[child_index]
            child.waiting_parents -= 1
            if child.waiting_parents == 0 and child.state is TaskState.PENDING:
                self._make_ready(job, child)
        if job.succeeded == len(job.tasks):
            job.outputs = _encode_job_outputs(self._job_output_payloads(job))
            if job.commit is not None:
                job.state = JobState.COMMIT_READY
                self.db.set_job_state(job.id, job.state, outputs=job.outputs)
                self._make_ready(job, job.commit)
            else:
                self.db.set_job_state(job.id, JobState.RUNNING, outputs=job.outputs)
                self._finish(job, JobState.SUCCEEDED)

    def _finish(self, job: _Job, state: JobState, error: str | None = None) -> None:
        job.state = state
        job.terminated_at = self._clock()
        self.db.cancel_tasks(job.id)
        self.db.set_job_state(job.id, state, error=error, finished_at=job.terminated_at)
        for task in self._all_tasks(job):
            if not task.state.terminal:
                task.state = TaskState.CANCELLED
        log.info("job finished", extra={"fields": {"job_id": job.id, "state": state.name}})

    def report_failure(
        self,
        job_id: int,
        task_id: TaskId | None,
        task_instance_id: int,
        session_id: int,
        error_message: str,
    ) -> None:
        """protocol.md §8.4 failure: retry while retries remain, else fail the job."""
        if task_id is None:
            raise StorageFault(StatusCode.INVALID_ARGUMENT, "task ID is missing")
        with self._cond:
            self._session_gate(session_id)
            job, task = self._job_gate(job_id, task_id)
            instance = self._live_instance(job, task, task_instance_id)
            self._fail_instance(job, task, instance, error_message)

    def _fail_instance(self, job: _Job, task: _Task, instance: _Instance, error: str) -> None:
        """Remove a failed instance: retry the task if a retry is left, else fail the job."""
        self._instances.pop(instance.id, None)
        self._attempts.ended(instance.id, TaskState.FAILED.value, self._clock())
        task.live.discard(instance.id)
        if task.retries_left > 0:
            task.retries_left -= 1
            # With a backoff and no other live instance, the task waits out its delay.
            delay = 0.0 if task.live else self._retry_delay_sec(job, task)
            if not task.live:
                task.state = TaskState.WAITING if delay > 0 else TaskState.READY
            self.db.task_failed(job.id, task.key, task.state.value, task.retries_left, error)
            if delay > 0:
                self._waiting.push(self._clock() + delay, (job.id, task.task_id))
                self._cond.notify_all()
            else:
                self._enqueue(job, task)
            return
        task.state = TaskState.FAILED
        self.db.task_failed(job.id, task.key, task.state.value, 0, error)
        self._finish(job, JobState.FAILED, error)

    # --- jobs ---

    def verify_resource_group(self, group_id: int) -> None:
        """Raise ``UNAUTHENTICATED`` unless the group exists (any password is accepted)."""
        with self._cond:
            if not self.db.resource_group_exists(group_id):
                raise StorageFault(StatusCode.UNAUTHENTICATED, "invalid resource group")

    def add_resource_group(self, external_id: str) -> int:
        """Create (or find) a resource group by external id."""
        with self._cond:
            return self.db.ensure_resource_group(external_id, b"")

    def register_job(self, group_id: int, graph: bytes, inputs: bytes) -> int:
        """Store a submission (state ``READY``) and return its job id."""
        self.verify_resource_group(group_id)
        try:
            spec = decode_job(graph, inputs)
        except JobError as error:
            raise StorageFault(StatusCode.INVALID_ARGUMENT, str(error)) from error
        with self._cond:
            job_id = self.db.insert_job(
                group_id, spec.name, graph, inputs, JobState.READY, self._clock()
            )
            job = self._build(job_id, group_id, spec, JobState.READY)
            self._jobs[job_id] = job
            self._reset_tasks(job)
            return job_id

    def submit(self, spec: Job, group_id: int | None = None) -> int:
        """Register and start ``spec`` in one step (in-process clients)."""
        graph, inputs = encode_job(spec)
        job_id = self.register_job(group_id or self.default_group_id, graph, inputs)
        self.start_job(job_id)
        return job_id

    def _cached(self, job_id: int) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            if self.db.job(job_id) is None:
                raise StorageFault(StatusCode.NOT_FOUND, "job not found")
            raise StorageFault(StatusCode.FAILED_PRECONDITION, "job is not active")
        return job

    def start_job(self, job_id: int) -> None:
        """``READY → RUNNING``; the root tasks become ready."""
        with self._cond:
            job = self._cached(job_id)
            if job.state is not JobState.READY:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, f"job is {job.state.name}")
            job.state = JobState.RUNNING
            self.db.set_job_state(job_id, job.state)
            self._enqueue_roots(job)

    def cancel_job(self, job_id: int) -> None:
        """Cancel a job: cleanup task if it has one, else ``CANCELLED``."""
        with self._cond:
            job = self._cached(job_id)
            if job.state.terminal or job.state is JobState.CLEANUP_READY:
                raise StorageFault(StatusCode.FAILED_PRECONDITION, f"job is {job.state.name}")
            for task in job.tasks:
                if not task.state.terminal:
                    task.state = TaskState.CANCELLED
            if job.commit is not None and not job.commit.state.terminal:
                job.commit.state = TaskState.CANCELLED
            self.db.cancel_tasks(job_id)
            if job.cleanup is not None:
                job.state = JobState.CLEANUP_READY
                self.db.set_job_state(job_id, job.state)
                self.db.upsert_task(
                    job_id, job.cleanup.key, TaskState.PENDING.value, job.cleanup.retries_left
                )
                self._make_ready(job, job.cleanup)
            else:
                self._finish(job, JobState.CANCELLED)

    def _job_row(self, job_id: int) -> JobRow:
        """The job's durable row (so evicted jobs still answer); ``NOT_FOUND`` if none."""
        with self._cond:
            row = self.db.job(job_id)
        if row is None:
            raise StorageFault(StatusCode.NOT_FOUND, "job not found")
        return row

    def job_state(self, job_id: int) -> JobState:
        """The job's state (from the database, so evicted jobs still answer)."""
        return JobState(self._job_row(job_id).state)

    def job_outputs(self, job_id: int) -> bytes:
        """The job outputs as SerializedTaskOutputs (empty until the graph finished)."""
        return self._job_row(job_id).outputs or b""

    def job_error(self, job_id: int) -> str:
        """The job's error message (empty unless it failed)."""
        return self._job_row(job_id).error

    # --- read access for tests, progress bars and benchmarks ---

    def task_rows(self, job_id: int) -> list[TaskRow]:
        """Every durable task row of a job."""
        with self._cond:
            return self.db.tasks(job_id)

    def task_state_counts(self, job_id: int) -> dict[str, int]:
        """``{task state: count}`` of a job."""
        with self._cond:
            return self.db.task_state_counts(job_id)

    def attempts(self, job_id: int) -> list[Attempt]:
        """The job's task attempts (while it is cached), in start order."""
        with self._cond:
            return self._attempts.of_job(job_id)

    def live_instances(self) -> dict[int, tuple[int, int, TaskId]]:
        """``{instance id: (em_id, job_id, task_id)}`` of every live instance."""
        with self._cond:
            return {i.id: (i.em_id, i.job_id, i.task_id) for i in self._instances.values()}

    def job_record(self, job_id: int) -> JobRow:
        """The job's durable row; ``NOT_FOUND`` if there is none."""
        return self._job_row(job_id)

    def recent_jobs(self, limit: int | None = None) -> list[JobRow]:
        """Every job's durable row, newest first (at most ``limit``)."""
        with self._cond:
            return self.db.recent_jobs(limit)

    def state_counts(self) -> tuple[dict[int, int], dict[str, int]]:
        """``({job state: count}, {task state: count})`` over every job in the database."""
        with self._cond:
            return self.db.job_counts_by_state(), self.db.task_counts_by_state()

    def ready_counts(self) -> dict[Lane, int]:
        """``{lane: entries}`` of the inbound lanes the scheduler has not pulled yet."""
        with self._cond:
            return {lane: len(entries) for lane, entries in self._lanes.items()}

    def execution_managers(self) -> list[EmRow]:
        """Every registered worker's durable row (alive or dead)."""
        with self._cond:
            return self.db.ems()
