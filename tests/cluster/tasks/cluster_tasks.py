"""Task functions the end-to-end tests run in real executors (``package_dir`` = this directory)."""

from __future__ import annotations

import hashlib
import os
import sys
import time


def echo(value: object) -> object:
    """Return the input unchanged."""
    return value


def add(*values: int) -> int:
    """The sum of the inputs."""
    return sum(values)


def sleepy(seconds: float, value: object) -> object:
    """Sleep, then return ``value``."""
    time.sleep(seconds)
    return value


def fail_until(marker_dir: str, failures: int, value: object) -> object:
    """Fail the first ``failures`` attempts (counted in ``marker_dir``), then return ``value``."""
    os.makedirs(marker_dir, exist_ok=True)
    attempt = len(os.listdir(marker_dir)) + 1
    with open(os.path.join(marker_dir, f"attempt-{attempt}"), "w"):
        pass
    if attempt <= failures:
        raise RuntimeError(f"planned failure {attempt}")
    return value


def always_fail() -> None:
    """Raise every time."""
    raise ValueError("this task always fails")


def spin() -> None:
    """Never return (a hard timeout must kill it)."""
    while True:
        time.sleep(0.05)


def blob(size: int, fill: str) -> str:
    """A string of ``size`` copies of ``fill``."""
    return fill * size


def commit_check() -> None:
    """Commit: check the job outputs are the two blobs and log their digest."""
    from worker import task

    outputs = task.current().graph_outputs()
    if outputs != ["a" * 800, "b" * 800]:
        raise AssertionError(f"unexpected job outputs: {[len(o) for o in outputs]}")
    digest = hashlib.sha256("".join(outputs).encode()).hexdigest()[:16]
    print(f"commit-digest {digest}", file=sys.stderr, flush=True)


def cleanup() -> None:
    """Cleanup: nothing to undo."""


def crash(code: int) -> None:
    """Exit the executor process at once (a crash, not an in-task failure)."""
    os._exit(code)


def sleepy_leaving_a_straggler(seconds: float, value: object) -> object:
    """Start a grandchild that ignores SIGTERM and lingers 30 s, sleep, then return ``value``.

    The grandchild stays in the executor's process group: only the worker's clean-up (or the
    executor's own guard when the worker dies) ends it.
    """
    import subprocess

    subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    return value
