"""The runtime's settings are the core's: one class, one source of defaults and checks."""

from __future__ import annotations

from worker.core.settings import RuntimeSettings

__all__ = ["RuntimeSettings"]
