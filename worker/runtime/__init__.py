"""The trio shell: owns time, I/O, nurseries and cancel scopes; drives the sans-I/O core."""

from __future__ import annotations

from worker.core.settings import RuntimeSettings
from worker.runtime.runtime import WorkerRuntime

__all__ = ["RuntimeSettings", "WorkerRuntime"]
