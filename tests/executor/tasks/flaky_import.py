"""A task module whose import fails until a flag file ``flaky.ok`` exists beside it."""

from __future__ import annotations

import os

if not os.path.exists(os.path.join(os.path.dirname(__file__), "flaky.ok")):
    raise ImportError("flaky_import: flag file missing")


def ready() -> str:
    """Return "ok" once importable."""
    return "ok"
