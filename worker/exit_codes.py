"""Exit codes of ``python -m worker`` (protocol.md section 6.11) and how causes combine."""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["ExitCode", "combine"]


class ExitCode(enum.IntEnum):
    """What a supervisor learns from the worker's exit status."""

    OK = 0  # drained cleanly after the first signal, or stopped during boot by a signal
    FATAL = 1  # boot failure, INVALID_ARGUMENT/malformed context on registration, broken pool, bug
    CONFIG = 2  # bad configuration or command line; nothing started
    FORCED = 3  # second signal, or the drain deadline passed
    EVICTED = 4  # storage marked this worker dead, or its session went backwards


#: When causes combine, the highest-priority code wins: 2 > 1 > 4 > 3 > 0.
_PRIORITY: dict[ExitCode, int] = {
    ExitCode.CONFIG: 4,
    ExitCode.FATAL: 3,
    ExitCode.EVICTED: 2,
    ExitCode.FORCED: 1,
    ExitCode.OK: 0,
}


def combine(codes: Iterable[ExitCode]) -> ExitCode:
    """The exit code of the highest-priority cause among ``codes`` (``OK`` when empty)."""
    return max(codes, key=_PRIORITY.__getitem__, default=ExitCode.OK)
