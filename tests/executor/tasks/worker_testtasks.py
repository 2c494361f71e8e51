"""Tasks the executor and runtime tests run (scenarios.md §1, "Test tasks").

This file is copied into a temporary ``package_dir`` and imported there by the executors; it is
never imported from the tests' own package.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

from worker import task

#: Module state that persists across tasks on one executor (import caching).
CALLS: list[int] = []

NOT_CALLABLE = 42


class Pair(NamedTuple):
    """A named tuple: encoded as one payload per field."""

    left: int
    right: str


def fibonacci(n: int) -> int:
    """The n-th Fibonacci number, by naive recursion."""
    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)


def always_fail() -> None:
    """Raise ``RuntimeError``."""
    raise RuntimeError("always_fail: intentional failure")


def fail_with(size: int) -> None:
    """Raise ``ValueError`` whose message is ``size`` characters long."""
    raise ValueError("é" * size)


def kill_self(sig: int) -> None:
    """Send ``sig`` to this executor."""
    os.kill(os.getpid(), sig)
    time.sleep(5)


def exit_hard(code: int) -> None:
    """Exit the executor at once with ``code``."""
    os._exit(code)


def exit_soft(code: int) -> None:
    """Raise ``SystemExit`` (an in-task failure; the executor stays)."""
    sys.exit(code)


def spin() -> None:
    """Busy-loop forever."""
    while True:
        pass


def spin_ignoring_sigterm() -> None:
    """Ignore SIGTERM, then busy-loop forever (only SIGKILL stops it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def spin_with_child() -> int:
    """Fork a sleeping grandchild (same process group), say ``forked``, then busy-loop forever."""
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print("forked", flush=True)
    while True:
        pass


def exit_with_child(code: int) -> None:
    """Fork a sleeping grandchild (same process group), then exit the executor with ``code``."""
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    os._exit(code)


def sleep(seconds: float) -> None:
    """Sleep ``seconds``."""
    time.sleep(seconds)


def noop() -> None:
    """Do nothing (zero outputs)."""


def echo(*values: Any) -> Any:
    """Return the inputs: one value as one output, several as a tuple."""
    if len(values) == 1:
        return values[0]
    return tuple(values)


def ret(value: Any) -> Any:
    """Return ``value`` unchanged (a tuple gives one output per element)."""
    return value


def as_tuple(*values: Any) -> tuple[Any, ...]:
    """Return the inputs as a tuple (one output per input)."""
    return values


def pair() -> Pair:
    """Return a named tuple."""
    return Pair(10, "hi")


def unencodable() -> object:
    """Return a value msgpack cannot encode."""
    return object()


def too_big_int() -> int:
    """Return an int outside msgpack's range."""
    return 2**64


def big_output(size: int) -> bytes:
    """Return ``size`` bytes."""
    return b"x" * size


def pid() -> int:
    """This executor's PID."""
    return os.getpid()


def pgid() -> int:
    """This executor's process group id."""
    return os.getpgid(0)


def emit(data: bytes) -> None:
    """Write raw bytes to fd 2."""
    os.write(2, data)


def shout(text: str) -> None:
    """``print`` to stdout."""
    print(text)


def write_fd1(data: bytes) -> None:
    """Write raw bytes to fd 1 (must not corrupt the channel)."""
    os.write(1, data)


def partial_line(text: str) -> None:
    """Write text with no newline (it ends up before the end marker)."""
    sys.stderr.write(text)


def later_line(text: str, delay: float) -> None:
    """Start a thread that prints ``text`` after ``delay`` seconds (while the executor idles)."""

    def run() -> None:
        time.sleep(delay)
        print(text, flush=True)

    threading.Thread(target=run, daemon=True).start()


def chatty(lines: int, width: int) -> int:
    """Print ``lines`` lines of ``width`` characters; returns ``lines``."""
    row = "y" * width
    for i in range(lines):
        print(f"{i:08d} {row}")
    return lines


def env() -> list[str]:
    """The names in this executor's environment."""
    return sorted(os.environ)


def loaded_modules() -> list[str]:
    """The names of the modules loaded in this executor."""
    return sorted(sys.modules)


def count_call() -> int:
    """Append to module state and return how many calls this executor has seen."""
    CALLS.append(1)
    return len(CALLS)


def ctx_info() -> tuple[int, str, Any, int, int, str, str]:
    """The running task's context ids."""
    ctx = task.current()
    return (
        ctx.job_id,
        ctx.task_id.kind,
        ctx.task_id.index,
        ctx.task_instance_id,
        ctx.resource_group_id,
        ctx.package,
        ctx.task_func,
    )


def assert_outputs_sum_zero() -> None:
    """Commit task: the job's graph outputs must be non-empty and sum to zero."""
    outputs = task.current().graph_outputs()
    if not outputs:
        raise ValueError("assert_outputs_sum_zero: graph outputs are empty")
    if sum(outputs) != 0:
        raise ValueError(f"assert_outputs_sum_zero: {outputs[:5]}... do not sum to zero")


def raw_outputs() -> list[bytes]:
    """Commit task: the raw graph-output payloads."""
    return task.current().raw_graph_outputs()


def signal_number(name: str) -> int:
    """The number of a signal by name."""
    return int(signal.Signals[name])


async def coroutine_task() -> None:
    """An async task (unsupported)."""


def generator_task() -> Any:
    """A generator task (unsupported)."""
    yield 1
