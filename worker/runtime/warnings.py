"""Rate-limited warnings for loops that may fail on every tick (heartbeats)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

__all__ = ["RateLimitedWarner"]


class RateLimitedWarner:
    """Logs a repeated failure at WARNING at most once per ``period`` seconds, else DEBUG."""

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self._logger = logger
        self._period = period
        self._last_warning: float | None = None
        self._suppressed = 0

    def warn(self, now: float, message: str, fields: Mapping[str, object]) -> None:
        """Log ``message``; at WARNING when the period has passed since the last one."""
        if self._last_warning is None or now - self._last_warning >= self._period:
            extra = dict(fields, suppressed=self._suppressed)
            self._logger.warning(message, extra={"fields": extra})
            self._last_warning = now
            self._suppressed = 0
        else:
            self._suppressed += 1
            self._logger.debug(message, extra={"fields": dict(fields)})
