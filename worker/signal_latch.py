"""Keeps SIGTERM/SIGINT that arrive before the worker's trio loop listens for them.

``python -m worker --config FILE`` spends a few hundred milliseconds importing, reading its
configuration and starting trio before trio's signal receiver is installed. A SIGTERM in that
window would otherwise kill the process with the default action (death by signal, no exit code)
and a SIGINT would raise ``KeyboardInterrupt`` wherever it lands. The latch is installed first
(before the heavy imports); it only records the signal. The service takes the recorded signals
once trio's receiver is installed and treats them as if they had arrived then; trio restores the
latch when its receiver closes, so a signal after the loop ended is recorded, not fatal.

This module imports nothing but the standard library's ``signal``: it must be cheap to load.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Final

__all__ = ["STOP_SIGNALS", "SignalLatch", "install_latch"]

#: The signals that stop the worker (first: drain; second: forced stop).
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class SignalLatch:
    """Records stop signals until they are taken; installed once per process."""

    def __init__(self) -> None:
        self._received: list[int] = []

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        # Only a list append: safe at any point of the main thread's bytecode.
        self._received.append(signum)

    def take(self) -> tuple[int, ...]:
        """The signals recorded since the last ``take``, oldest first; the record is cleared."""
        taken = tuple(self._received)
        del self._received[: len(taken)]
        return taken


_LATCH: SignalLatch | None = None


def install_latch() -> SignalLatch:
    """Record SIGTERM and SIGINT from now on (main thread only); returns the process's latch.

    Calling it again keeps what was recorded and reinstalls the same handlers.
    """
    global _LATCH
    if _LATCH is None:
        _LATCH = SignalLatch()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _LATCH._record)
    return _LATCH
