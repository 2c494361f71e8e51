"""The worker's settings: the subset of the configuration the core and its trio shell need."""

from __future__ import annotations

from typing import Any

import attrs

from worker.core.backoff import BackoffPolicy

__all__ = ["RuntimeSettings"]


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(slots=True)
class RuntimeSettings:
    """Timings and limits of one worker (its core and its runtime); ``slots`` is section 6.12's.

    Defaults are protocol.md section 9's; the configuration layer maps the YAML keys onto these.
    """

    storage_heartbeat_interval_sec: float = attrs.field(validator=_positive)
    scheduler_heartbeat_interval_sec: float = attrs.field(validator=_positive)
    scheduler_poll_wait_ms: int = attrs.field(validator=attrs.validators.ge(0))
    drain_timeout_sec: float = attrs.field(default=30.0, validator=_positive)
    shutdown_rpc_budget_sec: float = attrs.field(default=5.0, validator=_positive)
    backoff_initial_sec: float = attrs.field(default=0.1, validator=_positive)
    backoff_max_sec: float = attrs.field(default=2.0, validator=_positive)
    ip_address: str = "0.0.0.0"
    max_send_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    slots: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    def __attrs_post_init__(self) -> None:
        self.backoff  # noqa: B018 (validates initial <= max at construction)

    @property
    def backoff(self) -> BackoffPolicy:
        """The backoff policy every retrying loop uses (jitter 0.2)."""
        return BackoffPolicy(self.backoff_initial_sec, self.backoff_max_sec)
