"""The fault hook protocol.md section 6.13 allows for tests: block the worker's trio loop.

A stuck event loop is what ``/healthz`` exists to report, and nothing in a healthy worker
produces one on demand. With the environment variable :data:`BLOCK_LOOP_VARIABLE` set to a
number of seconds (read once at boot, only when ``metrics`` is configured), the worker blocks
its trio thread for that long, once, right after storage registered it: no task, heartbeat or
watchdog tick runs meanwhile, while the metrics thread keeps answering. It is a test hook;
never set it in production (storage may declare the blocked worker dead).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Final

from worker.metrics.instrumented import PortInstruments

__all__ = [
    "BLOCK_LOOP_VARIABLE",
    "FaultHookError",
    "block_loop_after_registration",
    "block_loop_seconds",
]

logger = logging.getLogger("worker.metrics")

#: Seconds to block the trio loop once after registration (test hook).
BLOCK_LOOP_VARIABLE: Final = "WORKER_TEST_BLOCK_LOOP_AFTER_REGISTRATION_SEC"


class FaultHookError(ValueError):
    """The hook's variable does not hold a usable number; ``str()`` is the line to print."""


def block_loop_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """The hook's duration from ``environ`` (default ``os.environ``); ``None`` when unset."""
    text = (os.environ if environ is None else environ).get(BLOCK_LOOP_VARIABLE)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise FaultHookError(f"{BLOCK_LOOP_VARIABLE}: expected seconds > 0, got {text!r}")
    return seconds


async def block_loop_after_registration(instruments: PortInstruments, seconds: float) -> None:
    """Wait for the registration, then block the whole trio thread for ``seconds``."""
    await instruments.registered.wait()
    logger.warning(
        "test hook: blocking the event loop",
        extra={"fields": {"seconds": seconds, "variable": BLOCK_LOOP_VARIABLE}},
    )
    # Deliberately synchronous: the point is that nothing else on this thread runs.
    time.sleep(seconds)  # noqa: ASYNC251
    logger.warning("test hook: event loop unblocked", extra={"fields": {"seconds": seconds}})
