"""Jobs: a DAG of Python tasks, built in Python or loaded from a YAML job file, and its encoding.

A job has regular tasks (each a ``module.function`` with ordered inputs that are literal values or
references to a parent's output), an optional commit task and an optional cleanup task. Tasks
are named; the graph is indexed in topological order when the job is built. Validation errors
name the task and the field (``task 'fib_3': inputs[0]: unknown task 'fib_9'``).

The submission encoding (protocol.md §8.6 [D]) is documented in docs/local-cluster.md:
``compressed_serialized_task_graph`` = zstd(msgpack(graph document)) and
``compressed_serialized_inputs`` = zstd(msgpack(list of literal payloads)).
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import msgpack
import yaml
import zstandard

from worker.cluster.retry_backoff import RetryBackoff, RetryBackoffError

__all__ = [
    "DEFAULT_HARD_TIMEOUT_MS",
    "DEFAULT_SOFT_TIMEOUT_MS",
    "ENCODING_VERSION",
    "AuxTask",
    "Input",
    "Job",
    "JobBuilder",
    "JobError",
    "Literal",
    "Ref",
    "Task",
    "TaskTimeouts",
    "decode_job",
    "default_timeouts",
    "encode_job",
    "load_job_file",
    "parse_job",
    "ref",
]

DEFAULT_SOFT_TIMEOUT_MS = 150_000
DEFAULT_HARD_TIMEOUT_MS = 300_000
_MIN_TIMEOUT_MS = 100
_MAX_TIMEOUT_MS = 86_400_000
#: Version tag of the graph document; bumped on any incompatible change.
ENCODING_VERSION = 1
_MAX_DECODED_BYTES = 64 * 1024 * 1024


class JobError(ValueError):
    """A job definition or submission is invalid; the message names the task and the field."""


@attrs.frozen(slots=True)
class TaskTimeouts:
    """A task's timeouts: storage re-enqueues after ``soft_ms``, the worker kills at ``hard_ms``."""

    soft_ms: int = DEFAULT_SOFT_TIMEOUT_MS
    hard_ms: int = DEFAULT_HARD_TIMEOUT_MS

    def check(self, where: str) -> None:
        """Raise :class:`JobError` unless both bounds are in range and ``hard_ms > soft_ms``."""
        for field, value in (("soft_ms", self.soft_ms), ("hard_ms", self.hard_ms)):
            if not _is_int(value) or not _MIN_TIMEOUT_MS <= value <= _MAX_TIMEOUT_MS:
                raise JobError(
                    f"{where}: timeout.{field}: must be an integer in "
                    f"{_MIN_TIMEOUT_MS}..{_MAX_TIMEOUT_MS}, got {value!r}"
                )
        if self.hard_ms <= self.soft_ms:
            raise JobError(
                f"{where}: timeout.hard_ms: must exceed soft_ms ({self.hard_ms} <= {self.soft_ms})"
            )


def default_timeouts(soft_ms: int | None = None, hard_ms: int | None = None) -> TaskTimeouts:
    """Timeouts with defaults for what is not given; ``hard_ms`` alone gets
    ``soft_ms = min(150 000, hard_ms - 1)`` (protocol.md §8.6), so it is valid on its own."""
    if soft_ms is None:
        if hard_ms is None or not _is_int(hard_ms):
            soft_ms = DEFAULT_SOFT_TIMEOUT_MS
        else:
            soft_ms = min(DEFAULT_SOFT_TIMEOUT_MS, hard_ms - 1)
    return TaskTimeouts(soft_ms, DEFAULT_HARD_TIMEOUT_MS if hard_ms is None else hard_ms)


@attrs.frozen(slots=True)
class Literal:
    """A literal input: one msgpack payload (the encoded value)."""

    payload: bytes

    @classmethod
    def of(cls, value: object) -> Literal:
        """The literal holding ``value`` encoded as msgpack."""
        return cls(msgpack.packb(value, use_bin_type=True))

    @property
    def value(self) -> Any:
        """The decoded value."""
        return msgpack.unpackb(self.payload, raw=False, strict_map_key=False)


@attrs.frozen(slots=True)
class Ref:
    """An input taken from output ``output`` of the task named ``task``."""

    task: str
    output: int = 0


def ref(task: str, output: int = 0) -> Ref:
    """An input referring to output ``output`` (0-based) of the task named ``task``."""
    return Ref(task, output)


Input = Literal | Ref


@attrs.frozen(slots=True)
class Task:
    """A regular task of the graph."""

    name: str
    module: str
    function: str
    inputs: tuple[Input, ...] = ()
    outputs: int = 1
    retries: int = 0
    max_instances: int = 1
    timeout: TaskTimeouts = TaskTimeouts()
    #: Delay between retries (our extension; None: retry at once, as Spider does).
    backoff: RetryBackoff | None = None


@attrs.frozen(slots=True)
class AuxTask:
    """The commit or cleanup task: a callable and its policy, no inputs."""

    module: str
    function: str
    retries: int = 0
    timeout: TaskTimeouts = TaskTimeouts()


@attrs.frozen(slots=True)
class Job:
    """A validated job: tasks in topological order (parents first), commit and cleanup."""

    name: str
    tasks: tuple[Task, ...]
    commit: AuxTask | None = None
    cleanup: AuxTask | None = None
    package_dir: Path | None = None
    # Derived once: storage resolves a parent's index for every input of every registration.
    _index_by_name: dict[str, int] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        """Index the tasks by name."""
        object.__setattr__(
            self, "_index_by_name", {task.name: index for index, task in enumerate(self.tasks)}
        )

    def index_of(self, name: str) -> int:
        """The graph index of the task named ``name`` (``KeyError`` if there is none)."""
        return self._index_by_name[name]

    @property
    def sink_indices(self) -> list[int]:
        """Indices of the tasks no other task reads from: their outputs are the job outputs."""
        read = {item.task for task in self.tasks for item in task.inputs if isinstance(item, Ref)}
        return [index for index, task in enumerate(self.tasks) if task.name not in read]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_identifier(where: str, field: str, value: object, dotted: bool) -> str:
    if not isinstance(value, str) or not value:
        raise JobError(f"{where}: {field}: must be a non-empty string, got {value!r}")
    parts = value.split(".") if dotted else [value]
    if not all(part.isidentifier() for part in parts):
        raise JobError(f"{where}: {field}: {value!r} is not a valid Python name")
    return value


def _check_count(where: str, field: str, value: object, minimum: int) -> int:
    if not _is_int(value) or not minimum <= value < 2**32:  # type: ignore[operator]
        raise JobError(f"{where}: {field}: must be an integer >= {minimum}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_task(task: Task) -> None:
    where = f"task {task.name!r}"
    _check_identifier(where, "module", task.module, dotted=True)
    _check_identifier(where, "function", task.function, dotted=False)
    _check_count(where, "outputs", task.outputs, 0)
    _check_count(where, "retries", task.retries, 0)
    _check_count(where, "max_instances", task.max_instances, 1)
    task.timeout.check(where)
    if task.backoff is not None:
        try:
            task.backoff.check(where)
        except RetryBackoffError as error:
            raise JobError(str(error)) from error


def _check_aux(role: str, task: AuxTask) -> None:
    _check_identifier(role, "module", task.module, dotted=True)
    _check_identifier(role, "function", task.function, dotted=False)
    _check_count(role, "retries", task.retries, 0)
    task.timeout.check(role)


def build_job(
    name: str,
    tasks: Iterable[Task],
    *,
    commit: AuxTask | None = None,
    cleanup: AuxTask | None = None,
    package_dir: Path | None = None,
) -> Job:
    """Validate ``tasks`` and order them topologically (stable: declaration order among peers)."""
    by_name: dict[str, Task] = {}
    for task in tasks:
        if not isinstance(task.name, str) or not task.name:
            raise JobError(f"task {task.name!r}: name: must be a non-empty string")
        if task.name in by_name:
            raise JobError(f"task {task.name!r}: name: declared twice")
        by_name[task.name] = task
    if not by_name:
        raise JobError("tasks: a job needs at least one task")
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for task in by_name.values():
        _check_task(task)
        parents = []
        for position, item in enumerate(task.inputs):
            if isinstance(item, Ref):
                parent = by_name.get(item.task)
                if parent is None:
                    raise JobError(
                        f"task {task.name!r}: inputs[{position}]: unknown task {item.task!r}"
                    )
                if not _is_int(item.output) or not 0 <= item.output < parent.outputs:
                    raise JobError(
                        f"task {task.name!r}: inputs[{position}]: task {item.task!r} has "
                        f"{parent.outputs} output(s), no output {item.output!r}"
                    )
                parents.append(item.task)
        sorter.add(task.name, *parents)
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as error:
        raise JobError(f"tasks: dependency cycle through {error.args[1]!r}") from error
    # static_order is valid but not stable; re-rank by (depth, declaration order) for readability.
    declared = {name: rank for rank, name in enumerate(by_name)}
    depth: dict[str, int] = {}
    for task_name in order:
        task = by_name[task_name]
        depth[task_name] = 1 + max(
            (depth[item.task] for item in task.inputs if isinstance(item, Ref)), default=-1
        )
    ordered = sorted(by_name, key=lambda n: (depth[n], declared[n]))
    if commit is not None:
        _check_aux("commit", commit)
    if cleanup is not None:
        _check_aux("cleanup", cleanup)
    return Job(name, tuple(by_name[n] for n in ordered), commit, cleanup, package_dir)


class JobBuilder:
    """A small Python API building the same jobs as a YAML job file.

    >>> job = (JobBuilder("demo").task("a", "m", "f", [1]).task("b", "m", "g", [ref("a")])
    ...        .with_commit("m", "commit").build())
    """

    def __init__(self, name: str, package_dir: Path | None = None) -> None:
        """Start an empty job called ``name`` whose task modules live in ``package_dir``."""
        self._name = name
        self._package_dir = package_dir
        self._tasks: list[Task] = []
        self._commit: AuxTask | None = None
        self._cleanup: AuxTask | None = None

    def task(
        self,
        name: str,
        module: str,
        function: str,
        inputs: Sequence[object] = (),
        *,
        outputs: int = 1,
        retries: int = 0,
        max_instances: int = 1,
        timeout: TaskTimeouts = TaskTimeouts(),
        backoff: RetryBackoff | None = None,
    ) -> JobBuilder:
        """Add a task; an input that is a :class:`Ref` reads a parent's output, else a literal."""
        converted = tuple(
            item if isinstance(item, Ref | Literal) else Literal.of(item) for item in inputs
        )
        self._tasks.append(
            Task(
                name, module, function, converted, outputs, retries, max_instances, timeout, backoff
            )
        )
        return self

    def with_commit(
        self,
        module: str,
        function: str,
        *,
        retries: int = 0,
        timeout: TaskTimeouts = TaskTimeouts(),
    ) -> JobBuilder:
        """Set the commit task (runs once every regular task succeeded)."""
        self._commit = AuxTask(module, function, retries, timeout)
        return self

    def with_cleanup(
        self,
        module: str,
        function: str,
        *,
        retries: int = 0,
        timeout: TaskTimeouts = TaskTimeouts(),
    ) -> JobBuilder:
        """Set the cleanup task (runs only after the job is cancelled)."""
        self._cleanup = AuxTask(module, function, retries, timeout)
        return self

    def build(self) -> Job:
        """The validated job."""
        return build_job(
            self._name,
            self._tasks,
            commit=self._commit,
            cleanup=self._cleanup,
            package_dir=self._package_dir,
        )


# --- YAML ---------------------------------------------------------------------------------------

_TASK_KEYS = {
    "name",
    "module",
    "function",
    "inputs",
    "outputs",
    "retries",
    "max_instances",
    "timeout",
    "retry_backoff",
}
_AUX_KEYS = {"module", "function", "retries", "timeout"}
_JOB_KEYS = {"name", "package_dir", "tasks", "commit", "cleanup"}


def _mapping(where: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise JobError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def _reject_unknown(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise JobError(
            f"{where}: {unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
        )


def _parse_timeout(where: str, value: object) -> TaskTimeouts:
    if value is None:
        return TaskTimeouts()
    data = _mapping(f"{where}: timeout", value)
    _reject_unknown(f"{where}: timeout", data, {"soft_ms", "hard_ms"})
    return default_timeouts(data.get("soft_ms"), data.get("hard_ms"))


def _parse_input(where: str, position: int, value: object) -> Input:
    if isinstance(value, Mapping):
        if set(value) == {"value"}:
            return Literal.of(value["value"])
        if "ref" in value and set(value) <= {"ref", "output"}:
            task_name = value["ref"]
            if not isinstance(task_name, str):
                raise JobError(f"{where}: inputs[{position}].ref: must be a task name")
            return Ref(task_name, value.get("output", 0))
        raise JobError(
            f"{where}: inputs[{position}]: a mapping input is {{ref: TASK, output: N}} or "
            f"{{value: LITERAL}}, got keys {sorted(value)}"
        )
    try:
        return Literal.of(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise JobError(f"{where}: inputs[{position}]: not encodable: {error}") from error


def _parse_task(position: int, value: object) -> Task:
    data = _mapping(f"tasks[{position}]", value)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise JobError(f"tasks[{position}]: name: required non-empty string")
    where = f"task {name!r}"
    _reject_unknown(where, data, _TASK_KEYS)
    for required in ("module", "function"):
        if required not in data:
            raise JobError(f"{where}: {required}: required")
    raw_inputs = data.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise JobError(f"{where}: inputs: must be a list")
    return Task(
        name=name,
        module=data["module"],
        function=data["function"],
        inputs=tuple(_parse_input(where, i, item) for i, item in enumerate(raw_inputs)),
        outputs=data.get("outputs", 1),
        retries=data.get("retries", 0),
        max_instances=data.get("max_instances", 1),
        timeout=_parse_timeout(where, data.get("timeout")),
        backoff=_read_backoff(where, data.get("retry_backoff"), RetryBackoff.from_mapping),
    )


def _read_backoff(
    where: str, value: object, read: Callable[[str, object], RetryBackoff]
) -> RetryBackoff | None:
    """A task's retry backoff from a job file or a submission (None when absent)."""
    if value is None:
        return None
    try:
        return read(where, value)
    except RetryBackoffError as error:
        raise JobError(str(error)) from error


def _parse_aux(role: str, value: object) -> AuxTask | None:
    if value is None:
        return None
    data = _mapping(role, value)
    _reject_unknown(role, data, _AUX_KEYS)
    for required in ("module", "function"):
        if required not in data:
            raise JobError(f"{role}: {required}: required")
    return AuxTask(
        module=data["module"],
        function=data["function"],
        retries=data.get("retries", 0),
        timeout=_parse_timeout(role, data.get("timeout")),
    )


def parse_job(document: object, base_dir: Path | None = None) -> Job:
    """Validate a parsed job document; ``package_dir`` is resolved against ``base_dir``."""
    data = _mapping("job", document)
    _reject_unknown("job", data, _JOB_KEYS)
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list):
        raise JobError("job: tasks: required list of tasks")
    name = data.get("name", "job")
    if not isinstance(name, str):
        raise JobError("job: name: must be a string")
    package_dir: Path | None = None
    if data.get("package_dir") is not None:
        if not isinstance(data["package_dir"], str):
            raise JobError("job: package_dir: must be a path string")
        package_dir = Path(data["package_dir"])
        if base_dir is not None and not package_dir.is_absolute():
            package_dir = (base_dir / package_dir).resolve()
    return build_job(
        name,
        [_parse_task(i, item) for i, item in enumerate(raw_tasks)],
        commit=_parse_aux("commit", data.get("commit")),
        cleanup=_parse_aux("cleanup", data.get("cleanup")),
        package_dir=package_dir,
    )


def load_job_file(path: Path) -> Job:
    """Load and validate a YAML job file (``package_dir`` defaults to the file's directory)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise JobError(f"{path}: cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise JobError(f"{path}: not valid YAML: {error}") from error
    job = parse_job(document, base_dir=path.resolve().parent)
    if job.package_dir is None:
        job = attrs.evolve(job, package_dir=path.resolve().parent)
    return job


# --- Submission encoding ------------------------------------------------------------------------


def _timeouts_doc(timeouts: TaskTimeouts) -> list[int]:
    return [timeouts.soft_ms, timeouts.hard_ms]


def _aux_doc(task: AuxTask | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {
        "module": task.module,
        "function": task.function,
        "retries": task.retries,
        "timeout": _timeouts_doc(task.timeout),
    }


def encode_job(job: Job) -> tuple[bytes, bytes]:
    """``(compressed_serialized_task_graph, compressed_serialized_inputs)`` for ``RegisterJob``.

    Graph document: ``{"version": 1, "name", "tasks": [{"name", "module", "function",
    "inputs": [["literal", k] | ["parent", task_index, output]], "outputs", "retries",
    "max_instances", "timeout": [soft_ms, hard_ms]}], "commit", "cleanup"}``; the inputs document
    is the list of literal payloads (``k`` indexes it). Both are msgpack, then zstd. A task with a
    retry backoff (our extension) also has ``"retry_backoff": [initial_ms, factor, max_ms]``.
    """
    literals: list[bytes] = []
    tasks_doc = []
    for task in job.tasks:
        inputs_doc: list[list[Any]] = []
        for item in task.inputs:
            if isinstance(item, Literal):
                inputs_doc.append(["literal", len(literals)])
                literals.append(item.payload)
            else:
                inputs_doc.append(["parent", job.index_of(item.task), item.output])
        task_doc: dict[str, Any] = {
            "name": task.name,
            "module": task.module,
            "function": task.function,
            "inputs": inputs_doc,
            "outputs": task.outputs,
            "retries": task.retries,
            "max_instances": task.max_instances,
            "timeout": _timeouts_doc(task.timeout),
        }
        if task.backoff is not None:
            task_doc["retry_backoff"] = task.backoff.to_document()
        tasks_doc.append(task_doc)
    graph = {
        "version": ENCODING_VERSION,
        "name": job.name,
        "tasks": tasks_doc,
        "commit": _aux_doc(job.commit),
        "cleanup": _aux_doc(job.cleanup),
    }
    compressor = zstandard.ZstdCompressor()
    return (
        compressor.compress(msgpack.packb(graph, use_bin_type=True)),
        compressor.compress(msgpack.packb(literals, use_bin_type=True)),
    )


def _unpack(what: str, data: bytes) -> Any:
    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if len(raw) > _MAX_DECODED_BYTES:
            raise JobError(f"{what}: larger than {_MAX_DECODED_BYTES} bytes")
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as error:
        if isinstance(error, JobError):
            raise
        raise JobError(f"{what}: not zstd-compressed msgpack: {error}") from error


def _decode_timeouts(where: str, value: object) -> TaskTimeouts:
    if not isinstance(value, list) or len(value) != 2:
        raise JobError(f"{where}: timeout: must be [soft_ms, hard_ms]")
    return TaskTimeouts(value[0], value[1])


def _decode_aux(role: str, value: object) -> AuxTask | None:
    if value is None:
        return None
    data = _mapping(role, value)
    try:
        return AuxTask(
            data["module"],
            data["function"],
            data["retries"],
            _decode_timeouts(role, data["timeout"]),
        )
    except KeyError as error:
        raise JobError(f"{role}: {error.args[0]}: required") from error


def decode_job(graph_bytes: bytes, inputs_bytes: bytes) -> Job:
    """The job a ``RegisterJob`` request carries; raises :class:`JobError` if malformed."""
    graph = _mapping("task graph", _unpack("task graph", graph_bytes))
    literals = _unpack("inputs", inputs_bytes)
    if graph.get("version") != ENCODING_VERSION:
        raise JobError(
            f"task graph: version: expected {ENCODING_VERSION}, got {graph.get('version')!r}"
        )
    if not isinstance(literals, list) or not all(isinstance(p, bytes) for p in literals):
        raise JobError("inputs: must be a list of msgpack payloads")
    raw_tasks = graph.get("tasks")
    if not isinstance(raw_tasks, list):
        raise JobError("task graph: tasks: must be a list")
    names: list[str] = []
    for position, raw in enumerate(raw_tasks):
        data = _mapping(f"tasks[{position}]", raw)
        names.append(str(data.get("name", f"task{position}")))
    tasks: list[Task] = []
    for position, raw in enumerate(raw_tasks):
        where = f"task {names[position]!r}"
        try:
            inputs: list[Input] = []
            for item in raw["inputs"]:
                if item[0] == "literal":
                    inputs.append(Literal(literals[item[1]]))
                elif item[0] == "parent" and 0 <= item[1] < position:
                    inputs.append(Ref(names[item[1]], item[2]))
                else:
                    raise JobError(f"{where}: inputs: bad input {item!r} (parents come first)")
            tasks.append(
                Task(
                    names[position],
                    raw["module"],
                    raw["function"],
                    tuple(inputs),
                    raw["outputs"],
                    raw["retries"],
                    raw["max_instances"],
                    _decode_timeouts(where, raw["timeout"]),
                    _read_backoff(where, raw.get("retry_backoff"), RetryBackoff.from_document),
                )
            )
        except (KeyError, IndexError, TypeError) as error:
            raise JobError(f"{where}: malformed task entry: {error!r}") from error
    job = build_job(
        str(graph.get("name", "job")),
        tasks,
        commit=_decode_aux("commit", graph.get("commit")),
        cleanup=_decode_aux("cleanup", graph.get("cleanup")),
    )
    if [task.name for task in job.tasks] != names:
        raise JobError("task graph: tasks are not in topological order")
    return job
