"""The executor pool's settings (the ``task_executor`` block, executor.md §1).

Defaults and checks have one source, the configuration classes of ``worker.config``: each field
here shares its ``task_executor`` key's default and the check of its value, and the relations
between keys are ``worker.config.task_executor_problem``. So a pool built in code (tests, bench)
refuses exactly what a configuration file would.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from worker.config import (
    FRAME_HEADROOM_BYTES,
    GrpcConfig,
    RunAs,
    TaskExecutorConfig,
    task_executor_problem,
)

__all__ = ["MIN_FRAME_HEADROOM_BYTES", "PoolSettings"]

#: ``max_frame_bytes`` must exceed the output limit by at least this much (executor.md §1).
MIN_FRAME_HEADROOM_BYTES = FRAME_HEADROOM_BYTES


def _key(block: type, name: str, *, prefix: str) -> Any:
    """A field with the default and the value check of configuration key ``prefix.name``."""
    key = attrs.fields_dict(block)[name]
    check = key.metadata["check"]

    def validate(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
        try:
            check.convert(value)
        except ValueError as error:
            raise ValueError(f"{prefix}.{name}: {error}") from None

    return attrs.field(default=key.default, validator=validate)


def _executor_key(name: str) -> Any:
    return _key(TaskExecutorConfig, name, prefix="task_executor")


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(slots=True)
class PoolSettings:
    """How the pool starts, talks to and supervises its executors.

    ``output_limit_bytes`` is the worker's ``grpc.max_send_bytes`` (LIMIT), passed to executors
    on their command line; ``slots`` is the number of executors; ``run_as`` the (resolved) user
    executors switch to, ``None`` for the worker's own.
    """

    package_dir: Path = attrs.field(converter=Path)
    bin_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    max_log_line_bytes: int = _executor_key("max_log_line_bytes")
    inherited_env: tuple[str, ...] = attrs.field(default=(), converter=_names)
    kill_grace_ms: int = _executor_key("kill_grace_ms")
    ready_timeout_sec: float = _executor_key("ready_timeout_sec")
    close_grace_ms: int = _executor_key("close_grace_ms")
    max_frame_bytes: int = _executor_key("max_frame_bytes")
    respawn_backoff_initial_ms: int = _executor_key("respawn_backoff_initial_ms")
    respawn_backoff_max_ms: int = _executor_key("respawn_backoff_max_ms")
    crash_loop_limit: int = _executor_key("crash_loop_limit")
    log_queue_lines: int = _executor_key("log_queue_lines")
    log_drain_timeout_sec: float = _executor_key("log_drain_timeout_sec")
    run_as: RunAs | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(RunAs))
    )
    output_limit_bytes: int = _key(GrpcConfig, "max_send_bytes", prefix="grpc")
    slots: int = attrs.field(default=1, validator=_positive)

    def __attrs_post_init__(self) -> None:
        problem = task_executor_problem(
            max_frame_bytes=self.max_frame_bytes,
            output_limit_bytes=self.output_limit_bytes,
            respawn_backoff_initial_ms=self.respawn_backoff_initial_ms,
            respawn_backoff_max_ms=self.respawn_backoff_max_ms,
        )
        if problem is not None:
            key, text = problem
            raise ValueError(f"{key}: {text}")
