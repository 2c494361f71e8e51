"""The worker's YAML configuration (protocol.md section 9.1, executor.md section 1).

Spider's keys keep Spider's names and nesting, so a Spider worker configuration loads unchanged;
our extension blocks are optional with documented defaults. The file is structured into frozen
attrs classes by cattrs. Every field carries ``metadata["doc"]`` (a one-line description, from
which the docs generate the key reference) and ``metadata["check"]`` (the validation of its raw
YAML value, whose ``description`` is the accepted range).

Errors are one line naming the key: ``config error: scheduler.port: must be an integer in
1..65535, got 'abc'``. Unknown keys are not errors (a newer Spider key must not stop the worker);
they are returned so the caller can warn about each one.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import attrs
import cattrs
import cattrs.gen
import yaml

from worker.security import first_unreadable

if TYPE_CHECKING:
    from worker.core.settings import RuntimeSettings
    from worker.executor.settings import PoolSettings
    from worker.transport.channels import ChannelOptions

__all__ = [
    "ENV_OVERRIDES",
    "BackoffConfig",
    "ConfigError",
    "Endpoint",
    "GrpcConfig",
    "LivenessConfig",
    "LoadedConfig",
    "LogConfig",
    "MetricsConfig",
    "RunAs",
    "ShutdownConfig",
    "FRAME_HEADROOM_BYTES",
    "TaskExecutorConfig",
    "WorkerConfig",
    "load_config",
    "parse_config",
    "task_executor_problem",
]

#: Environment variables that override endpoint keys (applied over the file's values).
ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    "WORKER_STORAGE_HOST": ("storage", "host"),
    "WORKER_STORAGE_PORT": ("storage", "port"),
    "WORKER_SCHEDULER_HOST": ("scheduler", "host"),
    "WORKER_SCHEDULER_PORT": ("scheduler", "port"),
}

_UINT64_MAX: Final = 2**64 - 1
#: executor.md 2.3: a parent/executor frame must hold LIMIT (grpc.max_send_bytes) plus its envelope.
FRAME_HEADROOM_BYTES: Final = 64 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` is the one line to print."""

    def __init__(self, key: str | None, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}" if key else f"config error: {problem}")


class _Invalid(ValueError):
    """A raw value failed its check; the message is the problem, without the key."""


# --- Checks of raw YAML values --------------------------------------------------------------


@attrs.frozen
class _Check:
    """Validates and converts one raw value; ``description`` names what is accepted."""

    description: str
    convert: Callable[[Any], Any]

    def structure_hook(self, value: Any, _type: Any) -> Any:
        """The cattrs structure hook of the field: the converted value, or ``_Invalid``."""
        return self.convert(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(minimum: int, maximum: int | None = None) -> _Check:
    if maximum == _UINT64_MAX:  # a uint64 on the wire
        description = f"an integer in {minimum}..2**64-1"
    elif maximum is not None:
        description = f"an integer in {minimum}..{maximum}"
    else:
        description = "an integer > 0" if minimum == 1 else f"an integer >= {minimum}"

    def convert(value: Any) -> int:
        if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
            raise _Invalid(f"must be {description}, got {value!r}")
        return int(value)

    return _Check(description, convert)


def _positive_number() -> _Check:
    description = "a number > 0"

    def convert(value: Any) -> float:
        if not (_is_int(value) or isinstance(value, float)) or not value > 0:
            raise _Invalid(f"must be {description}, got {value!r}")
        if value == float("inf"):
            raise _Invalid(f"must be finite, got {value!r}")
        return float(value)

    return _Check(description, convert)


def _non_empty_string() -> _Check:
    description = "a non-empty string"

    def convert(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"must be {description}, got {value!r}")
        return value

    return _Check(description, convert)


def _ip_address() -> _Check:
    description = 'an IP address such as "0.0.0.0"'

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be {description}, got {value!r}")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise _Invalid(f"must be {description}, got {value!r}") from None
        return value

    return _Check(description, convert)


def _directory() -> _Check:
    description = "the path of an existing directory"

    def convert(value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise _Invalid(f"must be {description}, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_dir():
            raise _Invalid(f"must be {description}, got {value!r} (not a directory)")
        return path

    return _Check(description, convert)


def _executable() -> _Check:
    description = "the path of an executable file"

    def convert(value: Any) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise _Invalid(f"must be {description}, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise _Invalid(f"must be {description}, got {value!r} (not an executable file)")
        return path

    return _Check(description, convert)


def _names() -> _Check:
    description = "a list of environment variable names"

    def convert(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
            isinstance(name, str) and name and "=" not in name and "\0" not in name
            for name in value
        ):
            raise _Invalid(f"must be {description}, got {value!r}")
        return tuple(value)

    return _Check(description, convert)


def _one_of(*choices: str) -> _Check:
    description = "one of " + ", ".join(f'"{choice}"' for choice in choices)

    def convert(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"must be {description}, got {value!r}")
        return str(value)

    return _Check(description, convert)


def _executor_protocol() -> _Check:
    description = '"worker" (our executor channel)'

    def convert(value: Any) -> str:
        if value == "spider":
            raise _Invalid(
                '"spider" compatibility mode (Spider\'s executor framing) is not implemented;'
                ' use "worker" (the default)'
            )
        if value != "worker":
            raise _Invalid(f"must be {description}, got {value!r}")
        return "worker"

    return _Check(description, convert)


class RunAs(NamedTuple):
    """The user ``task_executor.run_as`` names, resolved (executor.md §8.1)."""

    name: str
    uid: int
    gid: int

    @property
    def argument(self) -> str:
        """``uid:gid``, as the executor's ``run_as=`` argument carries it."""
        return f"{self.uid}:{self.gid}"


def _run_as() -> _Check:
    description = "a user name or numeric uid (the worker must run as root)"

    def convert(value: Any) -> RunAs | None:
        if value is None:
            return None
        try:
            if _is_int(value) or (isinstance(value, str) and value.isdigit()):
                entry = pwd.getpwuid(int(value))
            elif isinstance(value, str) and value:
                entry = pwd.getpwnam(value)
            else:
                raise _Invalid(f"must be {description}, got {value!r}")
        except (KeyError, OverflowError):
            raise _Invalid(f"no such user: {value!r}") from None
        if os.geteuid() not in (0, entry.pw_uid):
            raise _Invalid(
                f"switching executors to user {entry.pw_name!r} needs a worker running as root"
                f" (it runs as uid {os.geteuid()})"
            )
        return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)

    return _Check(description, convert)


def _key(doc: str, check: _Check, default_doc: str | None = None) -> dict[str, Any]:
    """Field metadata of a key: its one-line description and the check of its raw value.

    ``default_doc`` describes a default decided at run time (shown instead of the value).
    """
    metadata: dict[str, Any] = {"doc": doc, "check": check}
    if default_doc is not None:
        metadata["default_doc"] = default_doc
    return metadata


def _block(doc: str) -> dict[str, Any]:
    """Field metadata of a nested block."""
    return {"doc": doc}


# --- The configuration classes --------------------------------------------------------------


@attrs.frozen(slots=True)
class Endpoint:
    """Where a server listens (plaintext HTTP/2)."""

    host: str = attrs.field(
        metadata=_key("Host name or IP address of the server.", _non_empty_string())
    )
    port: int = attrs.field(metadata=_key("TCP port of the server.", _integer(1, 65535)))

    @property
    def target(self) -> str:
        """``host:port`` as printed in logs."""
        return f"{self.host}:{self.port}"


@attrs.frozen(slots=True)
class LivenessConfig:
    """Heartbeat periods (Spider takes integers; fractions are accepted here)."""

    storage_heartbeat_interval_sec: float = attrs.field(
        metadata=_key(
            "Period of UpdateExecutionManagerHeartbeat to storage, in seconds.", _positive_number()
        )
    )
    scheduler_heartbeat_interval_sec: float = attrs.field(
        metadata=_key("Period of Heartbeat to the scheduler, in seconds.", _positive_number())
    )


@attrs.frozen(slots=True)
class TaskExecutorConfig:
    """The executor pool: Spider's keys plus our optional extensions (executor.md section 1)."""

    package_dir: Path = attrs.field(
        metadata=_key(
            "Directory put first on the executors' sys.path; task modules are imported from it.",
            _directory(),
        )
    )
    bin_path: Path | None = attrs.field(
        default=None,
        metadata=_key(
            "Executor command speaking our executor channel (default: the built-in Python one).",
            _executable(),
            default_doc="built-in Python executor",
        ),
    )
    max_log_line_bytes: int = attrs.field(
        default=65536,
        metadata=_key(
            "Executor output lines longer than this are dropped with a warning.", _integer(1)
        ),
    )
    inherited_env: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_key(
            "Names of the worker's environment variables passed on to executors (allow-list).",
            _names(),
        ),
    )
    kill_grace_ms: int = attrs.field(
        default=0,
        metadata=_key(
            "SIGTERM grace before SIGKILL on a hard timeout (0: SIGKILL at once).", _integer(0)
        ),
    )
    ready_timeout_sec: float = attrs.field(
        default=10.0,
        metadata=_key(
            "How long a new executor has to become ready, in seconds.", _positive_number()
        ),
    )
    close_grace_ms: int = attrs.field(
        default=1000,
        metadata=_key("How long a closing executor has to exit before it is killed.", _integer(0)),
    )
    max_frame_bytes: int = attrs.field(
        default=8 * 1024 * 1024,
        metadata=_key(
            "Largest parent/executor frame; at least grpc.max_send_bytes + 65536.", _integer(1)
        ),
    )
    respawn_backoff_initial_ms: int = attrs.field(
        default=100, metadata=_key("First delay between failed executor starts.", _integer(1))
    )
    respawn_backoff_max_ms: int = attrs.field(
        default=5000, metadata=_key("Largest delay between failed executor starts.", _integer(1))
    )
    crash_loop_limit: int = attrs.field(
        default=5,
        metadata=_key(
            "Consecutive failed executor starts before the pool is broken (exit 1).", _integer(1)
        ),
    )
    log_queue_lines: int = attrs.field(
        default=1024,
        metadata=_key("Capacity of the bounded queue of executor log lines.", _integer(1)),
    )
    log_drain_timeout_sec: float = attrs.field(
        default=5.0,
        metadata=_key(
            "How long closing the pool waits for queued log lines to be written.",
            _positive_number(),
        ),
    )
    run_as: RunAs | None = attrs.field(
        default=None,
        metadata=_key(
            "User the executors switch to (no supplementary groups) before any task code runs,"
            " so tasks cannot read the worker's environment or memory; needs a root worker.",
            _run_as(),
            default_doc="the worker's own user",
        ),
    )
    protocol: str = attrs.field(
        default="worker",
        metadata=_key(
            'Executor protocol: only "worker" (Spider\'s "spider" mode is not implemented).',
            _executor_protocol(),
        ),
    )


@attrs.frozen(slots=True)
class ShutdownConfig:
    """How long a graceful stop may take."""

    drain_timeout_sec: float = attrs.field(
        default=30.0,
        metadata=_key(
            "After the first signal, how long the running task and reports may take before a"
            " forced stop.",
            _positive_number(),
        ),
    )
    rpc_budget_sec: float = attrs.field(
        default=5.0,
        metadata=_key(
            "Time budget of the final Shutdown call, transient retries included.",
            _positive_number(),
        ),
    )


@attrs.frozen(slots=True)
class GrpcConfig:
    """Deadlines and message-size limits of every call."""

    rpc_timeout_sec: float = attrs.field(
        default=30.0,
        metadata=_key(
            "Deadline of every unary call; NextTask gets wait_time_ms plus this.",
            _positive_number(),
        ),
    )
    max_send_bytes: int = attrs.field(
        default=4 * 1024 * 1024,
        metadata=_key(
            "Largest request sent (Spider's servers accept 4 MiB); bigger outputs are reported as"
            " OutputTooLarge failures.",
            _integer(1),
        ),
    )
    max_receive_bytes: int = attrs.field(
        default=256 * 1024 * 1024, metadata=_key("Largest response accepted.", _integer(1))
    )


@attrs.frozen(slots=True)
class BackoffConfig:
    """Exponential backoff with jitter after transport errors (no hot loops)."""

    initial_sec: float = attrs.field(
        default=0.1,
        metadata=_key(
            "First backoff delay, in seconds (also of gRPC reconnection attempts).",
            _positive_number(),
        ),
    )
    max_sec: float = attrs.field(
        default=2.0,
        metadata=_key(
            "Largest backoff delay, in seconds (also between gRPC reconnection attempts).",
            _positive_number(),
        ),
    )


@attrs.frozen(slots=True)
class LogConfig:
    """The worker's own log output (stderr)."""

    format: str | None = attrs.field(
        default=None,
        metadata=_key(
            '"console" (human-readable) or "json" (JSON lines).',
            _one_of("console", "json"),
            default_doc="console on a terminal, else json",
        ),
    )
    level: str = attrs.field(
        default="info",
        metadata=_key(
            "Lowest level logged; WORKER_LOG_LEVEL and, above it, --log-level override it.",
            _one_of("debug", "info", "warning", "error"),
        ),
    )


@attrs.frozen(slots=True)
class MetricsConfig:
    """Where the worker serves its metrics and health probes (plain HTTP, its own thread)."""

    host: str = attrs.field(
        metadata=_key(
            "Address to listen on (e.g. 127.0.0.1, or 0.0.0.0 for every interface).",
            _non_empty_string(),
        )
    )
    port: int = attrs.field(
        metadata=_key("TCP port to listen on (0: a free port, logged).", _integer(0, 65535))
    )

    @property
    def target(self) -> str:
        """``host:port`` as printed in logs."""
        return f"{self.host}:{self.port}"


@attrs.frozen(slots=True)
class WorkerConfig:
    """One worker's configuration file."""

    storage: Endpoint = attrs.field(
        metadata=_block("Storage server (liveness and task-instance services).")
    )
    scheduler: Endpoint = attrs.field(metadata=_block("Scheduler server."))
    connection_pool_size: int = attrs.field(
        metadata=_key("Channels opened per server, used round-robin.", _integer(1))
    )
    scheduler_poll_wait_ms: int = attrs.field(
        metadata=_key(
            "Long-poll budget sent as NextTask's wait_time_ms (0: do not wait).",
            _integer(0, _UINT64_MAX),
        )
    )
    liveness: LivenessConfig = attrs.field(metadata=_block("Heartbeat periods."))
    task_executor: TaskExecutorConfig = attrs.field(metadata=_block("The executor pool."))
    slots: int = attrs.field(
        default=1,
        metadata=_key(
            "Tasks this worker runs at once: one executor and one long poll per slot"
            " (protocol.md section 6.12).",
            _integer(1),
        ),
    )
    ip_address: str = attrs.field(
        default="0.0.0.0",
        metadata=_key(
            "Address sent in RegisterExecutionManager (must parse as an IP address).", _ip_address()
        ),
    )
    shutdown: ShutdownConfig = attrs.field(
        factory=ShutdownConfig, metadata=_block("Graceful-stop budgets (optional).")
    )
    grpc: GrpcConfig = attrs.field(
        factory=GrpcConfig, metadata=_block("Deadlines and size limits (optional).")
    )
    backoff: BackoffConfig = attrs.field(
        factory=BackoffConfig, metadata=_block("Retry backoff (optional).")
    )
    log: LogConfig = attrs.field(factory=LogConfig, metadata=_block("Log output (optional)."))
    metrics: MetricsConfig | None = attrs.field(
        default=None,
        metadata=_block("Metrics and health endpoints over HTTP (optional; absent: off)."),
    )

    def to_runtime_settings(self) -> RuntimeSettings:
        """The runtime's settings."""
        from worker.core.settings import RuntimeSettings

        return RuntimeSettings(
            storage_heartbeat_interval_sec=self.liveness.storage_heartbeat_interval_sec,
            scheduler_heartbeat_interval_sec=self.liveness.scheduler_heartbeat_interval_sec,
            scheduler_poll_wait_ms=self.scheduler_poll_wait_ms,
            drain_timeout_sec=self.shutdown.drain_timeout_sec,
            shutdown_rpc_budget_sec=self.shutdown.rpc_budget_sec,
            backoff_initial_sec=self.backoff.initial_sec,
            backoff_max_sec=self.backoff.max_sec,
            ip_address=self.ip_address,
            max_send_bytes=self.grpc.max_send_bytes,
            slots=self.slots,
        )

    def to_channel_options(self) -> ChannelOptions:
        """The gRPC channels' size limits; reconnects back off like every other retry."""
        from worker.transport.channels import ChannelOptions

        return ChannelOptions(
            max_send_bytes=self.grpc.max_send_bytes,
            max_receive_bytes=self.grpc.max_receive_bytes,
            reconnect_initial_sec=self.backoff.initial_sec,
            reconnect_max_sec=self.backoff.max_sec,
        )

    def to_pool_settings(self) -> PoolSettings:
        """The executor pool's settings: one executor per slot.

        Every ``task_executor`` key the pool knows is passed on under its own name.
        """
        from worker.executor.settings import PoolSettings

        pool_keys = attrs.fields_dict(PoolSettings)
        executor = {
            field.name: getattr(self.task_executor, field.name)
            for field in attrs.fields(TaskExecutorConfig)
            if field.name in pool_keys
        }
        return PoolSettings(
            **executor, output_limit_bytes=self.grpc.max_send_bytes, slots=self.slots
        )


_CLASSES: Final = (
    Endpoint,
    LivenessConfig,
    TaskExecutorConfig,
    ShutdownConfig,
    GrpcConfig,
    BackoffConfig,
    LogConfig,
    MetricsConfig,
    WorkerConfig,
)


# --- Structuring ----------------------------------------------------------------------------


def _build_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    for cls in _CLASSES:
        attrs.resolve_types(cls)  # field.type becomes the class, not its annotation string
        overrides = {
            field.name: cattrs.gen.override(struct_hook=field.metadata["check"].structure_hook)
            for field in attrs.fields(cls)
            if "check" in field.metadata
        }
        structure = cattrs.gen.make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]

        def structure_mapping(
            value: Any, cls_: Any, _structure: Callable[[Any, Any], Any] = structure
        ) -> Any:
            if not isinstance(value, Mapping):
                raise _Invalid(f"must be a mapping of keys, got {value!r}")
            return _structure(value, cls_)

        converter.register_structure_hook(cls, structure_mapping)
    return converter


_CONVERTER: Final = _build_converter()


def _describe(error: BaseException, _type: type | None) -> str:
    if isinstance(error, _Invalid):
        return str(error)
    if isinstance(error, KeyError):
        return "missing required key"
    return f"invalid value ({error})"


def _first_error(error: Exception) -> tuple[str | None, str]:
    for line in cattrs.transform_error(error, path="", format_exception=_describe):
        problem, _, path = line.rpartition(" @ ")
        return path.lstrip(".").replace("['", ".").replace("']", "") or None, problem
    return None, str(error)


def _block_class(annotation: Any) -> type | None:
    """The config class of a block field (``X`` or ``X | None``), else ``None``."""
    members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    candidate = members[0] if len(members) == 1 else annotation
    return candidate if isinstance(candidate, type) and attrs.has(candidate) else None


def _unknown_keys(raw: Mapping[str, Any], cls: type, prefix: str = "") -> list[str]:
    fields = {field.name: field for field in attrs.fields(cls)}
    unknown: list[str] = []
    for key, value in raw.items():
        path = f"{prefix}{key}"
        field = fields.get(str(key))
        if field is None:
            unknown.append(path)
        elif (block := _block_class(field.type)) is not None and isinstance(value, Mapping):
            unknown.extend(_unknown_keys(value, block, f"{path}."))
    return unknown


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Overlay endpoint overrides; returns ``{key path: variable}`` for error messages."""
    sources: dict[str, str] = {}
    for variable, (block, key) in ENV_OVERRIDES.items():
        if variable not in environ:
            continue
        text = environ[variable]
        value: Any = int(text) if key == "port" and text.strip().isdigit() else text
        section = raw.get(block)
        if not isinstance(section, dict):
            section = {}
            raw[block] = section
        section[key] = value
        sources[f"{block}.{key}"] = variable
    return sources


@attrs.frozen(slots=True)
class LoadedConfig:
    """A valid configuration and the unknown keys found in the file (to warn about)."""

    config: WorkerConfig
    unknown_keys: tuple[str, ...] = ()
    environment_overrides: tuple[str, ...] = ()


def parse_config(raw: object, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Validate an already-parsed YAML document; ``ConfigError`` names the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(None, f"the file must hold a mapping of keys, got {raw!r}")
    document: dict[str, Any] = {
        str(key): dict(value) if isinstance(value, Mapping) else value for key, value in raw.items()
    }
    sources = _apply_environment(document, os.environ if environ is None else environ)
    unknown = tuple(_unknown_keys(document, WorkerConfig))
    try:
        config = _CONVERTER.structure(document, WorkerConfig)
    except Exception as error:  # cattrs wraps every failure in an exception group
        key, problem = _first_error(error)
        if key in sources:
            key = f"{key} (from {sources[key]})"
        raise ConfigError(key, problem) from None
    _check_relations(config)
    return LoadedConfig(config, unknown, tuple(sorted(sources.values())))


def task_executor_problem(
    *,
    max_frame_bytes: int,
    output_limit_bytes: int,
    respawn_backoff_initial_ms: int,
    respawn_backoff_max_ms: int,
) -> tuple[str, str] | None:
    """The first broken relation between executor settings, as ``(key, problem)``; else None.

    ``output_limit_bytes`` is ``grpc.max_send_bytes``. Shared by the configuration and
    ``worker.executor.settings.PoolSettings``.
    """
    minimum_frame = output_limit_bytes + FRAME_HEADROOM_BYTES
    if max_frame_bytes < minimum_frame:
        return (
            "task_executor.max_frame_bytes",
            f"must be at least grpc.max_send_bytes + {FRAME_HEADROOM_BYTES} ({minimum_frame}),"
            f" got {max_frame_bytes}",
        )
    if respawn_backoff_max_ms < respawn_backoff_initial_ms:
        return (
            "task_executor.respawn_backoff_max_ms",
            f"must be at least task_executor.respawn_backoff_initial_ms"
            f" ({respawn_backoff_initial_ms}), got {respawn_backoff_max_ms}",
        )
    return None


def _check_relations(config: WorkerConfig) -> None:
    executor = config.task_executor
    problem = task_executor_problem(
        max_frame_bytes=executor.max_frame_bytes,
        output_limit_bytes=config.grpc.max_send_bytes,
        respawn_backoff_initial_ms=executor.respawn_backoff_initial_ms,
        respawn_backoff_max_ms=executor.respawn_backoff_max_ms,
    )
    if problem is not None:
        raise ConfigError(*problem)
    _check_run_as(config.task_executor)
    if config.backoff.max_sec < config.backoff.initial_sec:
        raise ConfigError(
            "backoff.max_sec",
            f"must be at least backoff.initial_sec ({config.backoff.initial_sec}),"
            f" got {config.backoff.max_sec}",
        )


def _check_run_as(executor: TaskExecutorConfig) -> None:
    """The ``run_as`` user must reach ``package_dir`` (and ``bin_path``) through mode bits."""
    user = executor.run_as
    if user is None:
        return
    paths = [(executor.package_dir, "read and search")]
    if executor.bin_path is not None:
        paths.append((executor.bin_path, "read and execute"))
    for path, access in paths:
        blocked = first_unreadable(path, user.uid, user.gid)
        if blocked is not None:
            raise ConfigError(
                "task_executor.run_as",
                f"user {user.name!r} cannot {access} {str(path)!r} (blocked at {str(blocked)!r})",
            )


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate the YAML file at ``path``; ``ConfigError`` for any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(None, f"cannot read {str(path)!r}: {_reason(error)}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid syntax"
        raise ConfigError(None, f"{str(path)!r} is not valid YAML{where}: {problem}") from None
    return parse_config(raw, environ)


def _reason(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)
