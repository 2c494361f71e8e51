"""The trio shell: owns time, I/O, nurseries and cancel scopes; drives the sans-I/O core."""

from __future__ import annotations

from worker.runtime.runtime import WorkerRuntime
from worker.runtime.settings import RuntimeSettings

__all__ = ["RuntimeSettings", "WorkerRuntime"]
