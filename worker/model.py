"""Domain values shared by every layer: ids, task ids, assignments, records, contexts, outcomes.

Everything here is a frozen, slotted attrs class (or a ``NewType`` over ``int`` for plain ids), so
values can be hashed, compared and logged without surprises. Nothing here imports trio, grpc or
the generated protobuf stubs: the transport converts messages to these values at its edge.
"""

from __future__ import annotations

import enum
from typing import Any, NewType

import attrs

__all__ = [
    "UINT64_MAX",
    "AssignmentId",
    "ExecutionContext",
    "ExecutionManagerId",
    "ExecutionRequest",
    "ExecutorCrash",
    "FailureReport",
    "InTaskFailure",
    "JobId",
    "Outcome",
    "Registration",
    "ResourceGroupId",
    "SchedulerAssignment",
    "SchedulerId",
    "SessionId",
    "Success",
    "SuccessReport",
    "TaskAssignment",
    "TaskAssignmentRecord",
    "TaskId",
    "TaskInstanceId",
    "TaskKind",
    "TdlContext",
    "Timeout",
    "TimeoutPolicy",
    "outcome_kind",
]

UINT64_MAX = 2**64 - 1

JobId = NewType("JobId", int)
ExecutionManagerId = NewType("ExecutionManagerId", int)
SessionId = NewType("SessionId", int)
SchedulerId = NewType("SchedulerId", int)
AssignmentId = NewType("AssignmentId", int)
TaskInstanceId = NewType("TaskInstanceId", int)
ResourceGroupId = NewType("ResourceGroupId", int)


def _uint64(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise ValueError(f"{attribute.name} must be an integer in 0..2**64-1, got {value!r}")


def _optional_uint64(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _uint64(instance, attribute, value)


class TaskKind(enum.Enum):
    """Which oneof member of ``common.TaskId`` is set."""

    INDEX = "index"
    COMMIT = "commit"
    CLEANUP = "cleanup"


@attrs.frozen(slots=True)
class TaskId:
    """A task of a job: a regular task by graph index (0 is valid), or the commit/cleanup task."""

    kind: TaskKind
    index: int | None = attrs.field(default=None, validator=_optional_uint64)

    def __attrs_post_init__(self) -> None:
        if (self.kind is TaskKind.INDEX) != (self.index is not None):
            raise ValueError(f"TaskId of kind {self.kind.value} cannot have index {self.index!r}")

    @classmethod
    def of_index(cls, index: int) -> TaskId:
        """A regular task at ``index`` in the job's task graph."""
        return cls(TaskKind.INDEX, index)

    @classmethod
    def commit(cls) -> TaskId:
        """The job's commit task."""
        return cls(TaskKind.COMMIT)

    @classmethod
    def cleanup(cls) -> TaskId:
        """The job's cleanup task."""
        return cls(TaskKind.CLEANUP)

    def __str__(self) -> str:
        return f"Index({self.index})" if self.kind is TaskKind.INDEX else self.kind.value.title()


@attrs.frozen(slots=True)
class TaskAssignment:
    """What the scheduler asks this worker to run (without the issuing scheduler's id)."""

    id: AssignmentId = attrs.field(validator=_uint64)
    resource_group_id: ResourceGroupId = attrs.field(validator=_uint64)
    job_id: JobId = attrs.field(validator=_uint64)
    task_id: TaskId
    session_id: SessionId = attrs.field(validator=_uint64)


@attrs.frozen(slots=True)
class TaskAssignmentRecord:
    """The acknowledgement of one consumed assignment: ``{id, from}`` on the wire."""

    id: AssignmentId = attrs.field(validator=_uint64)
    from_scheduler_id: SchedulerId = attrs.field(validator=_uint64)

    def __str__(self) -> str:
        return f"{{id: {self.id}, from: {self.from_scheduler_id}}}"


@attrs.frozen(slots=True)
class SchedulerAssignment:
    """An assignment as ``NextTask`` delivers it: the assignment plus the issuing scheduler."""

    assignment: TaskAssignment
    scheduler_id: SchedulerId = attrs.field(validator=_uint64)

    @property
    def record(self) -> TaskAssignmentRecord:
        """The acknowledgement record this assignment gets once consumed."""
        return TaskAssignmentRecord(self.assignment.id, self.scheduler_id)

    @property
    def key(self) -> tuple[SchedulerId, AssignmentId]:
        """``(scheduler_id, id)``: what identifies an assignment across schedulers."""
        return (self.scheduler_id, self.assignment.id)

    @property
    def session_id(self) -> SessionId:
        """The storage session the assignment was enqueued in (pinned for the attempt)."""
        return self.assignment.session_id


@attrs.frozen(slots=True)
class Registration:
    """Storage's answer to ``RegisterExecutionManager``."""

    execution_manager_id: ExecutionManagerId = attrs.field(validator=_uint64)
    session_id: SessionId = attrs.field(validator=_uint64)


@attrs.frozen(slots=True)
class TdlContext:
    """Which Python callable runs the task: ``package`` (a module) and ``task_func`` in it."""

    package: str
    task_func: str


@attrs.frozen(slots=True)
class TimeoutPolicy:
    """The task's timeouts; the worker enforces only the hard one."""

    soft_timeout_ms: int = attrs.field(validator=_uint64)
    hard_timeout_ms: int = attrs.field(validator=_uint64)


@attrs.frozen(slots=True)
class ExecutionContext:
    """Storage's answer to a successful ``RegisterTaskInstance``."""

    task_instance_id: TaskInstanceId = attrs.field(validator=_uint64)
    tdl_context: TdlContext
    timeout_policy: TimeoutPolicy
    serialized_task_io: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen(slots=True)
class ExecutionRequest:
    """One task execution handed to the executor pool."""

    job_id: JobId
    task_id: TaskId
    task_instance_id: TaskInstanceId
    resource_group_id: ResourceGroupId
    package: str
    task_func: str
    serialized_task_io: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    hard_timeout_ms: int

    @classmethod
    def for_assignment(
        cls, assignment: TaskAssignment, context: ExecutionContext
    ) -> ExecutionRequest:
        """The request that runs ``assignment`` with the context storage returned for it."""
        return cls(
            job_id=assignment.job_id,
            task_id=assignment.task_id,
            task_instance_id=context.task_instance_id,
            resource_group_id=assignment.resource_group_id,
            package=context.tdl_context.package,
            task_func=context.tdl_context.task_func,
            serialized_task_io=context.serialized_task_io,
            hard_timeout_ms=context.timeout_policy.hard_timeout_ms,
        )


# --- Executor outcomes (executor.md section 5) -------------------------------------------------


@attrs.frozen(slots=True)
class Success:
    """The task returned; ``outputs`` is the wire frame of its return value."""

    outputs: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    elapsed_us: int = 0


@attrs.frozen(slots=True)
class InTaskFailure:
    """The task (or its resolution, inputs or outputs) failed; the executor is reused."""

    type: str
    message: str
    traceback: str = attrs.field(default="", repr=False)
    elapsed_us: int = 0


@attrs.frozen(slots=True)
class Timeout:
    """The hard timeout passed; the executor's process group was killed."""

    hard_timeout_ms: int


@attrs.frozen(slots=True)
class ExecutorCrash:
    """The executor died or broke its channel; ``exit_code``/``signal`` say how, when known."""

    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""


Outcome = Success | InTaskFailure | Timeout | ExecutorCrash


def outcome_kind(outcome: Outcome) -> str:
    """What became of the task, in one word: the task-end log line and the metrics label."""
    match outcome:
        case Success():
            return "succeeded"
        case InTaskFailure():
            return "failed"
        case Timeout():
            return "timed_out"
        case ExecutorCrash():
            return "crashed"


# --- Reports to storage ------------------------------------------------------------------------


@attrs.frozen(slots=True)
class SuccessReport:
    """A ``ReportTaskSuccess`` request, pinned to the assignment's session."""

    job_id: JobId
    task_id: TaskId
    task_instance_id: TaskInstanceId
    execution_manager_id: ExecutionManagerId
    session_id: SessionId
    serialized_outputs: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen(slots=True)
class FailureReport:
    """A ``ReportTaskFailure`` request, pinned to the assignment's session."""

    job_id: JobId
    task_id: TaskId
    task_instance_id: TaskInstanceId
    execution_manager_id: ExecutionManagerId
    session_id: SessionId
    error_message: str
