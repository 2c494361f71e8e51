"""Tasks and jobs in Python: declare tasks with :func:`task`, build a :class:`Job`, run it.

A fan-out of 100 tasks and a reducer, run on a local cluster of 4 workers::

    from worker.api import Job, run_local, task

    @task(retries=2, retry_delay_ms=200)
    def square(x):
        return x * x

    @task
    def total(*values):
        return sum(values)

    if __name__ == "__main__":
        job = Job("squares")
        job.add(total, *job.map(square, range(100)))
        print(run_local(job, workers=4))   # [328350]

The job is the same model a YAML job file loads into (:mod:`worker.cluster.jobs`): ``Job.build()``
returns it, and :func:`run_local` / :func:`submit` also accept a built job or a job file's path.
Task functions run in executor subprocesses, which import them by module name from the job's
``package_dir``: a task must be a module-level function in a file, and a script that builds and
runs a job must keep that under ``if __name__ == "__main__":`` (executors import the script as a
module). ``package_dir`` defaults to the folder the tasks' top-level package lives in.

This module imports only the standard library at load time: task modules import it inside the
executors, which must not pull in the worker's own dependencies.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

if TYPE_CHECKING:
    from worker.cluster import jobs as cluster_jobs
    from worker.cluster.retry_backoff import RetryBackoff

__all__ = [
    "Job",
    "JobFailedError",
    "Output",
    "TaskHandle",
    "TaskOptions",
    "options_of",
    "run_local",
    "submit",
    "task",
]

_ATTRIBUTE: Final = "__worker_task__"

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's options (the same fields as a job file's task entry).

    ``timeout_ms`` is the hard timeout (the worker kills the task); ``soft_timeout_ms`` is when
    storage hands the task to another worker as well. Giving only ``timeout_ms`` is enough: the
    soft one becomes ``min(150000, timeout_ms - 1)``. ``retry_delay_ms`` waits before each retry,
    multiplied by ``retry_backoff`` after each one, up to ``max_retry_delay_ms`` (our extension
    of the reference cluster; Spider retries at once).
    """

    outputs: int = 1
    retries: int = 0
    retry_delay_ms: int | None = None
    retry_backoff: float = 2.0
    max_retry_delay_ms: int = 60_000
    timeout_ms: int | None = None
    soft_timeout_ms: int | None = None
    max_instances: int = 1


@overload
def task(function: _F, /) -> _F: ...
@overload
def task(
    *,
    outputs: int = 1,
    retries: int = 0,
    retry_delay_ms: int | None = None,
    retry_backoff: float = 2.0,
    max_retry_delay_ms: int = 60_000,
    timeout_ms: int | None = None,
    soft_timeout_ms: int | None = None,
    max_instances: int = 1,
) -> Callable[[_F], _F]: ...
def task(function: Any = None, /, **options: Any) -> Any:
    """Declare a task function and its :class:`TaskOptions`; the function itself is unchanged.

    Use as ``@task`` or ``@task(outputs=2, retries=3, retry_delay_ms=500, timeout_ms=60000)``.
    A task returning several outputs returns a tuple of ``outputs`` values.
    """
    settings = TaskOptions(**options)

    def mark(target: _F) -> _F:
        setattr(target, _ATTRIBUTE, settings)
        return target

    return mark if function is None else mark(function)


def options_of(function: Callable[..., Any]) -> TaskOptions:
    """The options :func:`task` attached to ``function`` (defaults for an undecorated one)."""
    found = getattr(function, _ATTRIBUTE, None)
    return found if isinstance(found, TaskOptions) else TaskOptions()


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """Output ``index`` of the task named ``task``, as an input of another task."""

    task: str
    index: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class TaskHandle:
    """A task added to a :class:`Job`; pass it as an input to read its (first) output."""

    name: str
    outputs: int

    def __getitem__(self, index: int) -> Output:
        """Output ``index`` of this task (for tasks with several outputs)."""
        if not 0 <= index < self.outputs:
            raise IndexError(f"task {self.name!r} has {self.outputs} output(s), no output {index}")
        return Output(self.name, index)


def _location(function: Callable[..., Any]) -> tuple[str, str, Path | None]:
    """``(module, function name, folder the module's top package is in)`` of a task function."""
    name = getattr(function, "__name__", "")
    qualified = getattr(function, "__qualname__", name)
    if not name or qualified != name:
        raise TypeError(f"{qualified or function!r}: a task must be a module-level function")
    module_name = function.__module__
    module = sys.modules.get(module_name)
    source = getattr(module, "__file__", None)
    if source is None:
        if module_name == "__main__":
            raise TypeError(
                f"{name}: defined in an interactive session; executors import tasks from files, "
                "so put it in a module"
            )
        return module_name, name, None
    path = Path(source).resolve()
    if module_name == "__main__":
        # A script run directly: executors import it by its file name.
        module_name = path.stem
        if not module_name.isidentifier():
            raise TypeError(f"{name}: {path.name} is not importable as a module name")
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    folder = path.parent
    for _ in range(depth):
        folder = folder.parent
    return module_name, name, folder


class Job:
    """A job under construction: tasks, their inputs, and an optional commit/cleanup task."""

    def __init__(self, name: str = "job", *, package_dir: Path | str | None = None) -> None:
        """An empty job; ``package_dir`` (default: from the task functions) is where
        executors import task modules from."""
        self.name = name
        self.package_dir = None if package_dir is None else Path(package_dir).resolve()
        self._tasks: list[tuple[str, str, str, tuple[Any, ...], TaskOptions]] = []
        self._names: set[str] = set()
        self._folders: set[Path] = set()
        self._commit: tuple[str, str, TaskOptions] | None = None
        self._cleanup: tuple[str, str, TaskOptions] | None = None

    def _resolve(self, function: Callable[..., Any]) -> tuple[str, str]:
        module, name, folder = _location(function)
        if folder is not None:
            self._folders.add(folder)
        return module, name

    def _unique(self, base: str) -> str:
        name, number = base, 1
        while name in self._names:
            number += 1
            name = f"{base}_{number}"
        return name

    def add(
        self, function: Callable[..., Any], *inputs: Any, name: str | None = None
    ) -> TaskHandle:
        """Add a task calling ``function(*inputs)``; an input that is a :class:`TaskHandle` or
        :class:`Output` reads that task's output, anything else is a literal (msgpack-able).

        ``name`` defaults to the function's name (made unique with ``_2``, ``_3``, ...).
        """
        module, function_name = self._resolve(function)
        task_name = name if name is not None else self._unique(function_name)
        if task_name in self._names:
            raise ValueError(f"task {task_name!r}: name: declared twice")
        options = options_of(function)
        self._names.add(task_name)
        self._tasks.append((task_name, module, function_name, tuple(inputs), options))
        return TaskHandle(task_name, options.outputs)

    def map(
        self, function: Callable[..., Any], *iterables: Iterable[Any], name: str | None = None
    ) -> list[TaskHandle]:
        """Fan out: one task per item, like the builtin ``map`` (several iterables are zipped).

        Tasks are named ``NAME[i]`` (``NAME`` defaults to the function's name).
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable of inputs")
        base = name or getattr(function, "__name__", "task")
        return [
            self.add(function, *items, name=f"{base}[{index}]")
            for index, items in enumerate(zip(*iterables, strict=True))
        ]

    def commit(self, function: Callable[..., Any]) -> None:
        """Run ``function()`` once every task succeeded (it reads the outputs through
        ``worker.task.current().graph_outputs()``)."""
        self._commit = (*self._resolve(function), options_of(function))

    def cleanup(self, function: Callable[..., Any]) -> None:
        """Run ``function()`` if the job is cancelled."""
        self._cleanup = (*self._resolve(function), options_of(function))

    def build(self) -> cluster_jobs.Job:
        """The validated job model (the one a YAML job file loads into)."""
        from worker.cluster.jobs import JobBuilder, JobError, Ref

        package_dir = self.package_dir
        if package_dir is None:
            if len(self._folders) > 1:
                folders = ", ".join(sorted(str(folder) for folder in self._folders))
                raise JobError(
                    f"job {self.name!r}: package_dir: tasks come from several folders "
                    f"({folders}); pass Job(package_dir=...)"
                )
            package_dir = next(iter(self._folders), None)
        builder = JobBuilder(self.name, package_dir)
        for task_name, module, function_name, inputs, options in self._tasks:
            converted = [
                Ref(item.name)
                if isinstance(item, TaskHandle)
                else Ref(item.task, item.index)
                if isinstance(item, Output)
                else item
                for item in inputs
            ]
            builder.task(
                task_name,
                module,
                function_name,
                converted,
                outputs=options.outputs,
                retries=options.retries,
                max_instances=options.max_instances,
                timeout=_timeouts(options),
                backoff=_backoff(options),
            )
        if self._commit is not None:
            module, function_name, options = self._commit
            builder.with_commit(
                module, function_name, retries=options.retries, timeout=_timeouts(options)
            )
        if self._cleanup is not None:
            module, function_name, options = self._cleanup
            builder.with_cleanup(
                module, function_name, retries=options.retries, timeout=_timeouts(options)
            )
        return builder.build()


def _timeouts(options: TaskOptions) -> cluster_jobs.TaskTimeouts:
    from worker.cluster.jobs import default_timeouts

    return default_timeouts(options.soft_timeout_ms, options.timeout_ms)


def _backoff(options: TaskOptions) -> RetryBackoff | None:
    if options.retry_delay_ms is None:
        return None
    from worker.cluster.retry_backoff import RetryBackoff

    return RetryBackoff(
        options.retry_delay_ms,
        options.retry_backoff,
        max(options.max_retry_delay_ms, options.retry_delay_ms),
    )


class JobFailedError(RuntimeError):
    """The job did not succeed; the message names each failed task with its error.

    ``failed_tasks`` are their names; ``details`` adds the last lines of each traceback (when
    known: ``run_local`` reads them from the worker logs, ``submit`` cannot get them).
    """

    def __init__(
        self,
        message: str,
        *,
        state: str,
        failed_tasks: Sequence[str] = (),
        details: Sequence[str] = (),
    ) -> None:
        """A failure with the job's final ``state`` and the names of the tasks that failed."""
        super().__init__(message)
        self.state = state
        self.failed_tasks = list(failed_tasks)
        self.details = list(details)


def _model(job: Job | cluster_jobs.Job | Path | str) -> cluster_jobs.Job:
    if isinstance(job, Job):
        return job.build()
    if isinstance(job, Path | str):
        from worker.cluster.jobs import load_job_file

        return load_job_file(Path(job))
    return job


def run_local(
    job: Job | cluster_jobs.Job | Path | str,
    *,
    workers: int = 2,
    slots: int = 1,
    timeout_sec: float = 600.0,
    env: Sequence[str] = (),
    workdir: Path | str | None = None,
    quiet: bool = False,
    report: Path | str | None = None,
) -> list[Any]:
    """Run ``job`` on an embedded local cluster, as ``python -m worker local`` does; return the
    job's outputs (the outputs of the tasks no other task reads, in graph order).

    Prints the task output (unless ``quiet``) and the summary as ``local`` does; ``env`` names
    variables passed to the executors; ``report`` is a path for the HTML run report. Raises
    :class:`JobFailedError` naming the failed tasks if the job does not succeed, and
    ``worker.cluster.preflight.PreflightError`` (one line per problem) before anything starts
    if it cannot.
    """
    from worker.cluster import local

    run = local.run_job(
        _model(job),
        workers=workers,
        slots=slots,
        timeout_sec=timeout_sec,
        workdir=None if workdir is None else Path(workdir),
        inherited_env=tuple(env),
        quiet=quiet,
        report=None if report is None else Path(report),
    )
    if run.exit_code != local.EXIT_SUCCEEDED:
        from worker.cluster.failures import failure_lines

        reason = local.EXIT_CODES[run.exit_code]
        named = [f"task {f.name!r} failed: {f.error}" for f in run.failures]
        raise JobFailedError(
            "\n".join([f"job {run.job_id} {run.state.name}: {reason}", *named]),
            state=run.state.name,
            failed_tasks=[failure.name for failure in run.failures],
            details=failure_lines(run.failures) or ([run.error] if run.error else []),
        )
    return run.sink_outputs


def submit(
    job: Job | cluster_jobs.Job | Path | str,
    address: str = "127.0.0.1:50051",
    *,
    timeout_sec: float = 3600.0,
) -> list[Any]:
    """Submit ``job`` to the storage at ``host:port``, wait for it and return its outputs.

    Raises :class:`JobFailedError` with the job's error if it does not succeed (the protocol
    carries no traceback and no task name; ``python -m worker local`` shows both).
    """
    from worker.cluster.remote import run_remote

    return run_remote(_model(job), address, timeout_sec=timeout_sec)
