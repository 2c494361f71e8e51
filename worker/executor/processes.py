"""Executor processes: their command line and environment, spawning, process groups and reaping.

These are the pool's process-level helpers (executor.md §6.1, §6.3, §8). Every executor starts in
a new session, so its process group id is its PID and the group can be killed as a whole;
``kill_group`` and ``reap_group_orphans`` do that, and ``become_subreaper`` lets the worker reap
the grandchildren it kills.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio

import worker
from worker.executor.channel import ChannelError, FrameReader, decode_message
from worker.executor.logs import TaskTag
from worker.executor.settings import PoolSettings

__all__ = [
    "RECEIVE_CHUNK",
    "WORKER_SET_ENV",
    "ExecutorProcess",
    "Lifeline",
    "StartFailed",
    "become_subreaper",
    "build_environment",
    "describe_status",
    "executor_command",
    "exit_status",
    "kill_group",
    "reap_group_orphans",
    "spawn_executor",
]

#: The variables the worker itself sets in every executor's environment (executor.md §8).
WORKER_SET_ENV = ("SPIDER_TDL_PACKAGE_DIR", "PYTHONCOERCECLOCALE")

#: How much one read of a pipe asks for.
RECEIVE_CHUNK = 256 * 1024

#: Puts the worker's source root on sys.path (last, after the child's own imports), starts the
#: group watcher (``worker.executor.guard``), then runs the child. ``-P`` keeps the working
#: directory off sys.path.
_BOOTSTRAP = (
    "import sys;r=sys.argv[1];sys.path.insert(0,r);"
    "from worker.executor.guard import guard;a=guard(sys.argv[2:]);"
    "from worker.executor.child import main;"
    "sys.path.remove(r);sys.path.append(r);main(a)"
)
#: Starts the group watcher, then replaces itself with a ``bin_path`` executor (``exec=``). It
#: runs with ``-S`` (no site-packages, half the start-up time): it needs only the stdlib.
_LAUNCHER = (
    "import sys;sys.path.insert(0,sys.argv[1]);"
    "from worker.executor.guard import guard;guard(sys.argv[2:])"
)
_WORKER_ROOT = str(Path(worker.__file__).resolve().parent.parent)
_PR_SET_CHILD_SUBREAPER = 36
_GROUP_REAP_WAIT_SEC = 1.0


class StartFailed(Exception):
    """An executor could not be started (spawn error, exit before ``ready``, or timeout)."""


def build_environment(settings: PoolSettings) -> tuple[dict[bytes, bytes], list[str]]:
    """The executors' environment, built from empty, and the configured names that are unset.

    It holds each set name of ``inherited_env`` (copied as bytes) plus ``WORKER_SET_ENV``:
    ``SPIDER_TDL_PACKAGE_DIR`` and ``PYTHONCOERCECLOCALE=0`` (so the interpreter does not add
    ``LC_CTYPE`` under PEP 538).
    """
    env: dict[bytes, bytes] = {}
    missing: list[str] = []
    for name in settings.inherited_env:
        value = os.environb.get(os.fsencode(name))
        if value is None:
            missing.append(name)
        else:
            env[os.fsencode(name)] = value
    env[b"SPIDER_TDL_PACKAGE_DIR"] = os.fsencode(str(settings.package_dir.resolve()))
    env[b"PYTHONCOERCECLOCALE"] = b"0"
    return env, missing


def executor_command(
    settings: PoolSettings,
    *,
    in_fd: int,
    out_fd: int,
    nonce: str,
    bin_path: Path | None = None,
    lifeline_fd: int | None = None,
) -> list[str]:
    """The argv that starts one executor: the built-in one, or ``bin_path`` with the same args.

    Settings travel as ``key=value`` arguments, never in the environment; ``run_as=uid:gid``
    appears when the executor must switch users (not when run_as names the worker's own user).
    With ``lifeline_fd``
    the executor starts a group watcher first; a ``bin_path`` program is then started by a small
    launcher that starts the watcher and replaces itself with the program (same PID).
    """
    args = [
        f"in_fd={in_fd}",
        f"out_fd={out_fd}",
        f"package_dir={settings.package_dir.resolve()}",
        f"max_frame_bytes={settings.max_frame_bytes}",
        f"output_limit={settings.output_limit_bytes}",
        f"nonce={nonce}",
    ]
    if settings.run_as is not None and settings.run_as.uid != os.geteuid():
        args.append(f"run_as={settings.run_as.argument}")
    program = bin_path if bin_path is not None else settings.bin_path
    if lifeline_fd is None:
        if program is not None:
            return [str(program), *args]
        return [sys.executable, "-P", "-c", _BOOTSTRAP, _WORKER_ROOT, *args]
    args.append(f"lifeline_fd={lifeline_fd}")
    if program is not None:
        return [sys.executable, "-S", "-P", "-c", _LAUNCHER, _WORKER_ROOT, f"exec={program}", *args]
    return [sys.executable, "-P", "-c", _BOOTSTRAP, _WORKER_ROOT, *args]


def exit_status(returncode: int | None) -> tuple[int | None, int | None]:
    """``(exit code, signal)`` of a subprocess returncode (negative: killed by that signal)."""
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, -returncode
    return returncode, None


def describe_status(returncode: int | None) -> str:
    """A returncode as crash messages show it: ``3``, ``signal 9 (SIGKILL)`` or ``unknown``."""
    exit_code, signum = exit_status(returncode)
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "unknown"
        return f"signal {signum} ({name})"
    return "unknown" if exit_code is None else str(exit_code)


@functools.cache
def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    An executor's grandchildren are then reparented to the worker when the executor dies, so the
    pool can reap them after killing the group, even when PID 1 does not reap orphans. The
    attribute is process-wide and permanent, so it is set once (the result is cached). The
    worker's only children are executors, so it adopts nothing else; see docs/tasks.md.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Signal every process of group ``pgid``; a group already gone is not an error."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def reap_group_orphans(pgid: int) -> None:
    """Reap the killed group's members that were reparented to us (bounded).

    Called only after the leader was reaped, so it never steals the leader's status.
    """
    with trio.move_on_after(_GROUP_REAP_WAIT_SEC):
        while True:
            try:
                pid, _status = os.waitpid(-pgid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                await trio.sleep(0.005)


class ExecutorProcess:
    """One live executor process, its two channel pipes, and the tags of its requests."""

    def __init__(
        self,
        executor_id: int,
        process: trio.Process,
        send_stream: trio.lowlevel.FdStream,
        receive_stream: trio.lowlevel.FdStream,
        nonce: str,
        max_frame_bytes: int,
    ) -> None:
        self.executor_id = executor_id
        self.process = process
        self.pid = process.pid
        self.send_stream = send_stream
        self.receive_stream = receive_stream
        self.nonce = nonce
        self.reader = FrameReader(max_frame_bytes)
        self.bodies: deque[bytes] = deque()
        self.tags: dict[int, TaskTag] = {}
        self.next_request_id = 0
        #: The scope of the request in flight; the exit watcher cancels it.
        self.in_flight: trio.CancelScope | None = None

    async def receive_message(self) -> dict[str, Any] | None:
        """The next message from the executor; ``None`` at EOF. Raises ``ChannelError``."""
        while not self.bodies:
            data = await self.receive_stream.receive_some(RECEIVE_CHUNK)
            if not data:
                if self.reader.pending_bytes:
                    raise ChannelError("EOF inside a frame")
                return None
            self.bodies.extend(self.reader.feed(data))
        return decode_message(self.bodies.popleft())

    def read_ready(self) -> ChannelError | OSError | None:
        """Move what is already in the response pipe into ``bodies``, without waiting.

        Returns what stopped the reading early: a bad frame header or a failed read.
        """
        try:
            while data := _read_nowait(self.receive_stream.fileno()):
                self.bodies.extend(self.reader.feed(data))
        except (ChannelError, OSError) as exc:
            return exc
        return None

    def close_streams(self) -> None:
        """Close both channel pipes (idempotent)."""
        for stream in (self.send_stream, self.receive_stream):
            with suppress(OSError):
                stream.close()


def _read_nowait(fd: int) -> bytes:
    try:
        return os.read(fd, RECEIVE_CHUNK)  # the fd is non-blocking
    except BlockingIOError:
        return b""  # nothing more yet (a task's surviving grandchild may hold the pipe open)


class Lifeline:
    """The pipe whose end-of-file tells every group watcher that the worker is gone (§6.8).

    The worker keeps the write end (close-on-exec, never written to) for as long as the pool is
    open; executors inherit only the read end. ``close`` makes every watcher kill its group.
    """

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()

    def close(self) -> None:
        """Close both ends (idempotent)."""
        for fd in (self.read_fd, self._write_fd):
            with suppress(OSError):
                os.close(fd)
        self.read_fd = self._write_fd = -1


async def spawn_executor(
    settings: PoolSettings,
    env: dict[bytes, bytes],
    executor_id: int,
    nonce: str,
    bin_path: Path | None,
    lifeline: Lifeline,
) -> ExecutorProcess:
    """Start one executor in a new session with its channel pipes; ``StartFailed`` if it cannot.

    stdin is ``/dev/null``; stdout and stderr share one pipe, the executor's log. The executor
    gets the read end of ``lifeline`` and starts its group watcher from it.
    """
    program = bin_path if bin_path is not None else settings.bin_path
    if program is not None and not os.access(program, os.X_OK):
        raise StartFailed(f"cannot spawn executor {str(program)!r}: not an executable file")
    try:
        request_read, request_write = os.pipe()
    except OSError as exc:
        raise StartFailed(f"cannot create the executor's channel: {exc}") from None
    try:
        response_read, response_write = os.pipe()
    except OSError as exc:
        os.close(request_read)
        os.close(request_write)
        raise StartFailed(f"cannot create the executor's channel: {exc}") from None
    command = executor_command(
        settings,
        in_fd=request_read,
        out_fd=response_write,
        nonce=nonce,
        bin_path=bin_path,
        lifeline_fd=lifeline.read_fd,
    )
    try:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(request_read, response_write, lifeline.read_fd),
            start_new_session=True,
            env=env,  # type: ignore[arg-type]  # Popen takes bytes on POSIX
        )
    except BaseException as exc:
        for fd in (request_read, request_write, response_read, response_write):
            os.close(fd)
        if isinstance(exc, OSError):
            raise StartFailed(f"cannot spawn executor {command[0]!r}: {exc}") from None
        raise
    os.close(request_read)
    os.close(response_write)
    return ExecutorProcess(
        executor_id,
        process,
        trio.lowlevel.FdStream(request_write),
        trio.lowlevel.FdStream(response_read),
        nonce,
        settings.max_frame_bytes,
    )
