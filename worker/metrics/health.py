"""What the probes answer: a watchdog for liveness and a flag for readiness.

The trio side ticks the watchdog every second (:func:`run_watchdog`); the HTTP thread reads it.
Liveness fails when the last tick is more than ``timeout_sec`` old (the trio loop is stuck) or
when a heartbeat loop ended while the worker was neither stopping nor evicted. Failed RPCs,
outages, draining and stopping are all healthy. The watchdog is armed by its first tick, so a
worker whose loop has not started the watchdog yet is not reported stuck.

Fault hook for tests: the ``clock`` is injectable. Advancing a fake clock past the timeout
without ticking is exactly what a blocked trio loop looks like from the HTTP thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["WATCHDOG_PERIOD_SEC", "WATCHDOG_TIMEOUT_SEC", "Health", "run_watchdog"]

#: How often the trio side ticks the watchdog.
WATCHDOG_PERIOD_SEC: Final = 1.0
#: A watchdog whose last tick is older than this reports the loop stuck.
WATCHDOG_TIMEOUT_SEC: Final = 10.0


class Health:
    """Liveness and readiness, written from the trio thread and read from the HTTP thread."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout_sec: float = WATCHDOG_TIMEOUT_SEC,
    ) -> None:
        self._clock = clock
        self._timeout_sec = timeout_sec
        self._lock = threading.Lock()
        self._last_tick: float | None = None
        self._ready = False
        self._dead_loop: str | None = None

    def tick(self) -> None:
        """The trio loop is alive now (arms the watchdog on the first call)."""
        now = self._clock()
        with self._lock:
            self._last_tick = now

    def set_ready(self, ready: bool) -> None:
        """True once registered; False when draining begins (and before registration)."""
        with self._lock:
            self._ready = ready

    def heartbeat_loop_ended(self, loop: str, *, unexpected: bool) -> None:
        """A liveness loop ended; ``unexpected`` when the worker was neither stopping nor
        evicted, which makes the worker unhealthy for good."""
        if unexpected:
            with self._lock:
                if self._dead_loop is None:
                    self._dead_loop = loop

    @property
    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        with self._lock:
            return self._ready

    def liveness_problem(self) -> str | None:
        """``None`` when healthy, else why not (the body of a failing ``/healthz``)."""
        now = self._clock()
        with self._lock:
            if self._dead_loop is not None:
                return f"the {self._dead_loop} heartbeat loop ended unexpectedly"
            if self._last_tick is not None and now - self._last_tick > self._timeout_sec:
                return (
                    f"the event loop is stuck: no watchdog tick for {now - self._last_tick:.1f} s"
                    f" (limit {self._timeout_sec:g} s)"
                )
        return None


async def run_watchdog(health: Health, period_sec: float = WATCHDOG_PERIOD_SEC) -> None:
    """Tick ``health`` every ``period_sec`` until cancelled (run it in the worker's nursery)."""
    while True:
        health.tick()
        await trio.sleep(period_sec)
