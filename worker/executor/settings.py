"""The executor pool's settings (the ``task_executor`` block, executor.md §1)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

__all__ = ["MIN_FRAME_HEADROOM_BYTES", "PoolSettings"]

#: ``max_frame_bytes`` must exceed the output limit by at least this much (executor.md §1).
MIN_FRAME_HEADROOM_BYTES = 64 * 1024


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"task_executor.{attribute.name} must be > 0, got {value!r}")


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"task_executor.{attribute.name} must be >= 0, got {value!r}")


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(slots=True)
class PoolSettings:
    """How the pool starts, talks to and supervises its executors.

    Defaults follow executor.md §1; ``output_limit_bytes`` is the worker's ``grpc.max_send_bytes``
    (LIMIT), passed to executors on their command line.
    """

    package_dir: Path = attrs.field(converter=Path)
    bin_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    max_log_line_bytes: int = attrs.field(default=65536, validator=_positive)
    inherited_env: tuple[str, ...] = attrs.field(default=(), converter=_names)
    kill_grace_ms: int = attrs.field(default=0, validator=_non_negative)
    ready_timeout_sec: float = attrs.field(default=10.0, validator=_positive)
    close_grace_ms: int = attrs.field(default=1000, validator=_non_negative)
    max_frame_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    respawn_backoff_initial_ms: int = attrs.field(default=100, validator=_non_negative)
    respawn_backoff_max_ms: int = attrs.field(default=5000, validator=_non_negative)
    crash_loop_limit: int = attrs.field(default=5, validator=_positive)
    log_queue_lines: int = attrs.field(default=1024, validator=_positive)
    log_drain_timeout_sec: float = attrs.field(default=5.0, validator=_non_negative)
    output_limit_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    slots: int = attrs.field(default=1, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_frame_bytes < self.output_limit_bytes + MIN_FRAME_HEADROOM_BYTES:
            raise ValueError(
                f"task_executor.max_frame_bytes ({self.max_frame_bytes}) must be at least the "
                f"output limit ({self.output_limit_bytes}) + {MIN_FRAME_HEADROOM_BYTES}"
            )
        if self.respawn_backoff_max_ms < self.respawn_backoff_initial_ms:
            raise ValueError(
                "task_executor.respawn_backoff_max_ms must be >= respawn_backoff_initial_ms"
            )
