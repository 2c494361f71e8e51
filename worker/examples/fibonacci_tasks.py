"""Example tasks: a fan-out of Fibonacci numbers, a reducer and a commit task.

Task modules run inside executor subprocesses; they need only the standard library (and
``worker.task`` for the commit task's context).
"""

from __future__ import annotations

import sys


def fibonacci(n: int) -> int:
    """The ``n``-th Fibonacci number (iteratively, so large ``n`` stays cheap)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    current, following = 0, 1
    for _ in range(n):
        current, following = following, current + following
    return current


def total(*values: int) -> int:
    """The sum of every input (the reducer of the fan-out)."""
    return sum(values)


def commit() -> None:
    """The commit task: check the job's outputs (read through the task context) and log them."""
    from worker import task

    outputs = task.current().graph_outputs()
    if not all(isinstance(value, int) for value in outputs):
        raise TypeError(f"expected integer outputs, got {outputs!r}")
    print(f"commit: job outputs {outputs}", file=sys.stderr)
