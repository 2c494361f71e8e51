"""The executor pool: pre-spawned executor subprocesses, supervised from trio (executor.md §1, §6).

``open_pool(settings)`` is an async context manager: it spawns every slot's executor and waits for
each ``ready`` before yielding an ``ExecutorPool``; leaving it shuts every executor down, kills
every process group the pool created, and drains the executor log. ``ExecutorPool.execute`` runs
one request to exactly one outcome (``Success``, ``InTaskFailure``, ``Timeout``,
``ExecutorCrash``) or raises ``PoolBroken``/``PoolClosed``/``Cancelled``.

Supervision rules, in brief:

* Callers are served first come, first served; one task in flight per executor.
* The hard-timeout clock starts before the request write. On expiry the executor's whole group
  is killed (SIGKILL at once, or SIGTERM then SIGKILL after ``kill_grace_ms``), the leader is
  reaped, and a fresh executor is started before ``Timeout`` is returned.
* A broken channel (write failure, EOF, bad frame, wrong id) or a dead process is an
  ``ExecutorCrash`` carrying the exit code or signal; the group is killed and a fresh executor
  started. The triggering outcome is returned even when that start fails.
* Failed starts back off exponentially with jitter; ``crash_loop_limit`` consecutive failures
  break the slot (``PoolBroken``). A task crashing its executor is not a failed start.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import secrets
import signal
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

import worker
from worker.errors import PoolBroken, PoolClosed, PoolInitError
from worker.executor.channel import (
    PROTOCOL_VERSION,
    ChannelError,
    FrameReader,
    decode_message,
    encode_message,
)
from worker.executor.logs import (
    DroppedLine,
    ExecutorLogLine,
    JsonLinesSink,
    LineSplitter,
    LineTagger,
    LogSink,
    TaskTag,
)
from worker.executor.settings import PoolSettings
from worker.model import (
    ExecutionRequest,
    ExecutorCrash,
    InTaskFailure,
    Outcome,
    Success,
    Timeout,
)

__all__ = [
    "WORKER_SET_ENV",
    "ExecutorPool",
    "become_subreaper",
    "build_environment",
    "executor_command",
    "open_pool",
    "result_beats_timer",
]

log = logging.getLogger("worker.executor")

#: The variables the worker itself sets in every executor's environment (executor.md §8).
WORKER_SET_ENV = ("SPIDER_TDL_PACKAGE_DIR", "PYTHONCOERCECLOCALE")

#: Puts the worker's source root on sys.path (last, after the child's own imports), then runs
#: the child. ``-P`` keeps the working directory off sys.path.
_BOOTSTRAP = (
    "import sys;r=sys.argv[1];sys.path.insert(0,r);"
    "from worker.executor.child import main;"
    "sys.path.remove(r);sys.path.append(r);main(sys.argv[2:])"
)
_WORKER_ROOT = str(Path(worker.__file__).resolve().parent.parent)
_RECEIVE_CHUNK = 256 * 1024
_CRASH_REAP_WAIT_SEC = 1.0
_REAP_BOUND_SEC = 5.0
_BACKOFF_JITTER = 0.2
_PR_SET_CHILD_SUBREAPER = 36
_LOG_BATCH_LINES = 256
_GROUP_REAP_WAIT_SEC = 1.0
#: Tags of requests whose begin marker the log reader has not seen yet. The reader lags by at
#: most one read chunk plus a pipe buffer of marker lines (~8,000 tasks), so this never drops a
#: tag the built-in executor's markers will claim.
_MAX_PENDING_TAGS = 16384


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
    settings: PoolSettings, *, in_fd: int, out_fd: int, nonce: str, bin_path: Path | None = None
) -> list[str]:
    """The argv that starts one executor: the built-in one, or ``bin_path`` with the same args.

    Settings travel as ``key=value`` arguments, never in the environment.
    """
    args = [
        f"in_fd={in_fd}",
        f"out_fd={out_fd}",
        f"package_dir={settings.package_dir.resolve()}",
        f"max_frame_bytes={settings.max_frame_bytes}",
        f"output_limit={settings.output_limit_bytes}",
        f"nonce={nonce}",
    ]
    program = bin_path if bin_path is not None else settings.bin_path
    if program is not None:
        return [str(program), *args]
    return [sys.executable, "-P", "-c", _BOOTSTRAP, _WORKER_ROOT, *args]


def _exit_status(returncode: int | None) -> tuple[int | None, int | None]:
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, -returncode
    return returncode, None


def _describe_status(returncode: int | None) -> str:
    exit_code, signum = _exit_status(returncode)
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


def _kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class _StartFailed(Exception):
    """An executor could not be started (spawn error, exit before ``ready``, or timeout)."""


class _ChannelBroken(Exception):
    """The channel to a busy executor broke; the message says how.

    ``eof`` marks a plain end of channel: when the process's exit status explains it, the crash
    carries no detail (``executor crashed (exit_status = 3)``).
    """

    def __init__(self, detail: str, *, eof: bool = False) -> None:
        super().__init__(detail)
        self.eof = eof


class _Process:
    """One live executor process and its two channel pipes."""

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
        self.logs_done = trio.Event()
        #: The scope of the request in flight; the exit watcher cancels it.
        self.in_flight: trio.CancelScope | None = None

    async def receive_message(self) -> dict[str, Any] | None:
        """The next message from the executor; ``None`` at EOF. Raises ``ChannelError``."""
        while not self.bodies:
            data = await self.receive_stream.receive_some(_RECEIVE_CHUNK)
            if not data:
                if self.reader.pending_bytes:
                    raise ChannelError("EOF inside a frame")
                return None
            self.bodies.extend(self.reader.feed(data))
        return decode_message(self.bodies.popleft())

    def close_streams(self) -> None:
        for stream in (self.send_stream, self.receive_stream):
            with suppress(OSError):
                stream.close()


class _Slot:
    """One executor position: its current process (if started) and its failed-start count."""

    def __init__(self) -> None:
        self.process: _Process | None = None
        self.failures = 0
        self.busy = False


class ExecutorPool:
    """A running pool (use ``open_pool``); satisfies ``worker.core.ports.Executor``."""

    def __init__(
        self,
        settings: PoolSettings,
        nursery: trio.Nursery,
        *,
        log_sink: LogSink,
        bin_path_for: Callable[[int], Path | None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._nursery = nursery
        self._sink = log_sink
        self._bin_path_for = bin_path_for
        self._random = rng or random.Random()
        self._env, self._missing_env = build_environment(settings)
        self._slots = [_Slot() for _ in range(settings.slots)]
        self._idle_send, self._idle_receive = trio.open_memory_channel[_Slot](settings.slots)
        self._log_send, self._log_receive = trio.open_memory_channel[ExecutorLogLine](
            settings.log_queue_lines
        )
        self._writer_done = trio.Event()
        self._next_executor_id = 0
        self._closing = False
        self._broken: str | None = None
        self._all_pgids: list[int] = []
        self._background: list[trio.CancelScope] = []

    # --- public ------------------------------------------------------------------------------

    @property
    def executor_pids(self) -> list[int | None]:
        """The PID of each slot's current executor (``None`` while a slot has none)."""
        return [s.process.pid if s.process else None for s in self._slots]

    @property
    def executor_ids(self) -> list[int | None]:
        """The executor id of each slot's current executor."""
        return [s.process.executor_id if s.process else None for s in self._slots]

    @property
    def process_groups(self) -> list[int]:
        """Every process group id this pool ever created (one per spawn)."""
        return list(self._all_pgids)

    async def execute(self, request: ExecutionRequest) -> Outcome:
        """Run ``request`` on the next free executor (FIFO) and return its one outcome."""
        if self._closing:
            raise PoolClosed("the executor pool is closed")
        if self._broken is not None:
            raise PoolBroken(self._broken)
        try:
            slot = await self._idle_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise PoolClosed("the executor pool is closed") from None
        slot.busy = True
        try:
            return await self._run(slot, request)
        finally:
            slot.busy = False
            with suppress(trio.ClosedResourceError):
                self._idle_send.send_nowait(slot)

    async def aclose(self) -> None:
        """Shut every executor down, kill every group, drain the log (idempotent)."""
        if self._closing:
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            await self._close()

    # --- start -------------------------------------------------------------------------------

    async def _start_all(self) -> None:
        if not become_subreaper():
            log.warning(
                "cannot become a child subreaper: killed executors' grandchildren are left to "
                "PID 1 to reap (run under an init such as tini)"
            )
        for name in self._missing_env:
            log.warning(
                "inherited_env names %s, which is not set in the worker: executors will not see it",
                name,
                extra={"fields": {"name": name}},
            )
        try:
            for slot in self._slots:
                slot.process = await self._start_executor()
                self._idle_send.send_nowait(slot)
        except _StartFailed as exc:
            raise PoolInitError(f"the executor pool could not start: {exc}") from None

    async def _start_executor(self) -> _Process:
        """Spawn one executor and wait for its ``ready``; raises ``_StartFailed`` after cleanup."""
        executor_id = self._next_executor_id
        self._next_executor_id += 1
        nonce = secrets.token_hex(8)
        bin_path = self._bin_path_for(executor_id) if self._bin_path_for else None
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        command = executor_command(
            self.settings,
            in_fd=request_read,
            out_fd=response_write,
            nonce=nonce,
            bin_path=bin_path,
        )
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(request_read, response_write),
                start_new_session=True,
                env=self._env,  # type: ignore[arg-type]  # Popen takes bytes on POSIX
            )
        except BaseException as exc:
            for fd in (request_read, request_write, response_read, response_write):
                os.close(fd)
            if isinstance(exc, OSError):
                raise _StartFailed(f"cannot spawn executor {command[0]!r}: {exc}") from None
            raise
        os.close(request_read)
        os.close(response_write)
        self._all_pgids.append(process.pid)
        proc = _Process(
            executor_id,
            process,
            trio.lowlevel.FdStream(request_write),
            trio.lowlevel.FdStream(response_read),
            nonce,
            self.settings.max_frame_bytes,
        )
        self._start_background(self._read_logs, proc)
        self._start_background(self._watch_exit, proc)
        fields = {"executor_id": executor_id, "pid": process.pid}
        try:
            problem = await self._await_ready(proc)
        except BaseException:
            await self._kill_and_reap(proc)
            raise
        if problem is not None:
            await self._kill_and_reap(proc)
            log.warning(
                "executor %d failed to start: %s", executor_id, problem, extra={"fields": fields}
            )
            raise _StartFailed(f"executor {executor_id} {problem}")
        log.debug("executor %d ready", executor_id, extra={"fields": fields})
        return proc

    async def _await_ready(self, proc: _Process) -> str | None:
        message: dict[str, Any] | None = None
        with trio.move_on_after(self.settings.ready_timeout_sec):
            try:
                message = await proc.receive_message()
            except ChannelError as exc:
                return f"sent a bad ready frame: {exc}"
            except (trio.BrokenResourceError, OSError) as exc:
                return f"broke its channel before ready: {exc}"
            if message is None:
                status = await self._status_within(proc, _CRASH_REAP_WAIT_SEC)
                return f"exited before ready (exit_status = {_describe_status(status)})"
            if message.get("t") != "ready" or message.get("v") != PROTOCOL_VERSION:
                return (
                    f"sent {message.get('t')!r} version {message.get('v')!r} instead of "
                    f"ready version {PROTOCOL_VERSION}"
                )
            return None
        return f"was not ready within {self.settings.ready_timeout_sec} s"

    async def _ensure_executor(self, slot: _Slot) -> _Process:
        """The slot's live executor, replacing a dead one and retrying failed starts."""
        proc = slot.process
        if proc is not None and proc.process.poll() is not None:
            status = proc.process.returncode
            log.warning(
                "executor %d died while idle (exit_status = %s); starting a new one",
                proc.executor_id,
                _describe_status(status),
                extra={"fields": {"executor_id": proc.executor_id, "pid": proc.pid}},
            )
            await self._kill_and_reap(proc)
            slot.process = None
            slot.failures += 1
        while slot.process is None:
            if self._closing:
                raise PoolClosed("the executor pool is closed")
            if slot.failures >= self.settings.crash_loop_limit:
                self._broken = (
                    f"executor start failed {slot.failures} times in a row "
                    f"(crash_loop_limit = {self.settings.crash_loop_limit})"
                )
                raise PoolBroken(self._broken)
            if slot.failures:
                await trio.sleep(self._backoff(slot.failures))
            await self._respawn(slot)
        return slot.process

    def _backoff(self, failures: int) -> float:
        initial = self.settings.respawn_backoff_initial_ms / 1000
        cap = self.settings.respawn_backoff_max_ms / 1000
        delay = min(cap, initial * math.pow(2, failures - 1))
        return delay * (1 - _BACKOFF_JITTER * self._random.random())

    async def _respawn(self, slot: _Slot) -> None:
        """Start a new executor for ``slot``; a failure is recorded, never raised."""
        slot.process = None
        if self._closing:
            return
        try:
            slot.process = await self._start_executor()
        except _StartFailed:
            slot.failures += 1
            return
        slot.failures = 0

    # --- run ---------------------------------------------------------------------------------

    async def _run(self, slot: _Slot, request: ExecutionRequest) -> Outcome:
        proc = await self._ensure_executor(slot)
        deadline = trio.current_time() + request.hard_timeout_ms / 1000
        request_id = proc.next_request_id
        proc.next_request_id += 1
        try:
            frame = encode_message(
                {
                    "t": "exec",
                    "id": request_id,
                    "job": request.job_id,
                    "kind": request.task_id.kind.value,
                    "index": request.task_id.index,
                    "inst": request.task_instance_id,
                    "rg": request.resource_group_id,
                    "pkg": request.package,
                    "func": request.task_func,
                    "io": request.serialized_task_io,
                    "hard_ms": request.hard_timeout_ms,
                },
                self.settings.max_frame_bytes,
            )
        except ChannelError as exc:
            return InTaskFailure("FrameTooLarge", f"request {exc}; it was not sent")
        tag = TaskTag(request.job_id, str(request.task_id), request.task_instance_id)
        proc.tags[request_id] = tag
        if len(proc.tags) > _MAX_PENDING_TAGS:
            # an executor that writes no markers never claims its tags: drop the oldest
            del proc.tags[next(iter(proc.tags))]
        outcome: Outcome | None = None
        broken: _ChannelBroken | None = None
        try:
            # the exit watcher cancels this scope too: a task's surviving grandchild may hold
            # the channel open, so EOF alone does not reveal the executor's death
            with trio.move_on_at(deadline) as proc.in_flight:
                try:
                    outcome = await self._exchange(proc, request_id, frame)
                except _ChannelBroken as error:
                    broken = error
            proc.in_flight = None
            if outcome is None and broken is None:
                # the deadline fired or the executor exited: a result already complete in the
                # pipe still wins (executor.md §10 item 11)
                problem = _read_ready(proc)
                outcome = result_beats_timer(proc.bodies, request_id)
                if outcome is None and proc.process.returncode is not None:
                    broken = _exit_cause(proc, request_id, problem)
            # handled outside the deadline scope, so the deadline cannot turn a crash into a
            # timeout or interrupt the respawn
            if broken is not None:
                outcome = await self._crashed(slot, proc, broken)
            elif outcome is None:
                outcome = await self._timed_out(slot, proc, request.hard_timeout_ms)
        except BaseException:
            # Cancelled (forced stop, eviction) or a bug: kill the group, start afresh, re-raise.
            with trio.CancelScope(shield=True):
                if slot.process is proc:
                    await self._kill_and_reap(proc)
                    slot.process = None
                    with trio.move_on_after(self.settings.ready_timeout_sec + 1):
                        await self._respawn(slot)
            raise
        if isinstance(outcome, InTaskFailure):
            fields = {**tag.as_fields(), "executor_id": proc.executor_id}
            log.warning(
                "task failed: %s: %s%s",
                outcome.type,
                outcome.message,
                f"\n{outcome.traceback.rstrip()}" if outcome.traceback else "",
                extra={"fields": fields},
            )
        return outcome

    async def _watch_exit(self, proc: _Process) -> None:
        """Reap the executor when it exits and cut short the request it leaves in flight."""
        await proc.process.wait()
        if proc.in_flight is not None:
            proc.in_flight.cancel()

    async def _exchange(self, proc: _Process, request_id: int, frame: bytes) -> Outcome:
        try:
            await proc.send_stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ChannelBroken(f"request write failed: {exc}") from None
        try:
            message = await proc.receive_message()
        except ChannelError as exc:
            raise _ChannelBroken(str(exc)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ChannelBroken(f"channel read failed: {exc}") from None
        if message is None:
            raise _ChannelBroken("closed its channel before replying", eof=True)
        return _outcome_of(message, request_id)

    async def _crashed(self, slot: _Slot, proc: _Process, broken: _ChannelBroken) -> ExecutorCrash:
        with trio.CancelScope(shield=True):
            status = await self._status_within(proc, _CRASH_REAP_WAIT_SEC)
            await self._kill_and_reap(proc)
        exit_code, signum = _exit_status(status)
        detail = "" if broken.eof and status is not None else str(broken)
        crash = ExecutorCrash(exit_code=exit_code, signal=signum, detail=detail)
        log.warning(
            "executor %d crashed (exit_status = %s): %s",
            proc.executor_id,
            _describe_status(status),
            broken,
            extra={"fields": {"executor_id": proc.executor_id, "pid": proc.pid}},
        )
        await self._respawn(slot)
        return crash

    async def _timed_out(self, slot: _Slot, proc: _Process, hard_timeout_ms: int) -> Timeout:
        with trio.CancelScope(shield=True):
            grace = self.settings.kill_grace_ms / 1000
            if grace > 0:
                _kill_group(proc.pid, signal.SIGTERM)
                with trio.move_on_after(grace):
                    await proc.process.wait()
            await self._kill_and_reap(proc)
        log.warning(
            "hard timeout (%d ms) exceeded: executor %d killed",
            hard_timeout_ms,
            proc.executor_id,
            extra={"fields": {"executor_id": proc.executor_id, "pid": proc.pid}},
        )
        await self._respawn(slot)
        return Timeout(hard_timeout_ms)

    async def _status_within(self, proc: _Process, seconds: float) -> int | None:
        """The leader's returncode if it exits within ``seconds`` (``None``: still alive)."""
        with trio.move_on_after(seconds):
            return await proc.process.wait()
        return proc.process.returncode

    async def _kill_and_reap(self, proc: _Process) -> None:
        """SIGKILL the executor's group (group before reap: the pgid cannot be reused)."""
        with trio.CancelScope(shield=True):
            _kill_group(proc.pid)
            with trio.move_on_after(_REAP_BOUND_SEC):
                await proc.process.wait()
            proc.close_streams()
            if proc.process.returncode is not None:
                await _reap_group_orphans(proc.pid)

    # --- logs --------------------------------------------------------------------------------

    async def _read_logs(self, proc: _Process) -> None:
        stream = proc.process.stdout
        assert stream is not None
        tagger = LineTagger(proc.nonce, proc.tags)
        splitter = LineSplitter(
            self.settings.max_log_line_bytes, marker_prefix=tagger.marker_prefix
        )
        send = self._log_send.clone()
        try:
            async with send:
                while True:
                    try:
                        data = await stream.receive_some(_RECEIVE_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    events = splitter.feed(bytes(data)) if data else splitter.finish()
                    for event in events:
                        if isinstance(event, DroppedLine):
                            self._warn_dropped(proc, tagger.current, event.size)
                            continue
                        text, tag = tagger.process(event.data)
                        if text is not None:
                            await send.send(ExecutorLogLine(proc.executor_id, text, tag))
                    if not data:
                        return
        finally:
            proc.logs_done.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _warn_dropped(self, proc: _Process, tag: TaskTag | None, size: int) -> None:
        fields: dict[str, object] = {"executor_id": proc.executor_id}
        if tag is not None:
            fields.update(tag.as_fields())
        log.warning(
            "dropped a %d-byte log line from executor %d%s: longer than max_log_line_bytes = %d",
            size,
            proc.executor_id,
            f" (job {tag.job_id}, task {tag.task_id}, instance {tag.task_instance_id})"
            if tag
            else "",
            self.settings.max_log_line_bytes,
            extra={
                "fields": {**fields, "cap": self.settings.max_log_line_bytes, "dropped_bytes": size}
            },
        )

    async def _write_logs(self) -> None:
        """The one writer: batches of queued lines go to the sink in a worker thread.

        The thread keeps a slow or blocked sink (a full stdout pipe) from stalling the event loop;
        the bounded queue then pushes back on the executors instead.
        """
        try:
            async with self._log_receive:
                async for line in self._log_receive:
                    batch = [line]
                    while len(batch) < _LOG_BATCH_LINES:
                        try:
                            batch.append(self._log_receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    try:
                        await trio.to_thread.run_sync(
                            self._write_batch, batch, abandon_on_cancel=True
                        )
                    except Exception as exc:
                        self._broken = f"the executor-log sink failed: {exc!r}"
                        log.error("%s; stopping", self._broken)
                        raise PoolBroken(self._broken) from exc
        finally:
            self._writer_done.set()

    def _write_batch(self, batch: list[ExecutorLogLine]) -> None:
        for line in batch:
            self._sink(line)

    # --- close -------------------------------------------------------------------------------

    async def _close(self) -> None:
        self._idle_send.close()
        procs = [slot.process for slot in self._slots if slot.process is not None]
        busy = {slot.process for slot in self._slots if slot.busy and slot.process is not None}
        shutdown = encode_message({"t": "shutdown"})
        for proc in procs:
            if proc in busy:
                _kill_group(proc.pid)
                continue
            with trio.move_on_after(self.settings.close_grace_ms / 1000):
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await proc.send_stream.send_all(shutdown)
        with trio.move_on_after(self.settings.close_grace_ms / 1000):
            for proc in procs:
                await proc.process.wait()
        for proc in procs:
            await self._kill_and_reap(proc)
        for slot in self._slots:
            slot.process = None
        self._log_send.close()
        with trio.move_on_after(self.settings.log_drain_timeout_sec):
            await self._writer_done.wait()
        if not self._writer_done.is_set():
            queued = self._log_receive.statistics().current_buffer_used
            log.warning(
                "executor log not drained within %s s: %d queued lines not written",
                self.settings.log_drain_timeout_sec,
                queued,
                extra={"fields": {"queued_lines": queued}},
            )
        for scope in self._background:
            scope.cancel()

    def _start_background(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``function`` in the pool's nursery under a scope that close can cancel."""
        scope = trio.CancelScope()
        self._background.append(scope)

        async def run() -> None:
            try:
                with scope:
                    await function(*args)
            finally:
                self._background.remove(scope)  # one pair of tasks per spawn: do not pile up

        self._nursery.start_soon(run)


def _read_ready(proc: _Process) -> ChannelError | OSError | None:
    """Move what is already in the response pipe into ``proc.bodies``, without waiting.

    Returns what stopped the reading early: a bad frame header or a failed read.
    """
    try:
        while data := _read_nowait(proc.receive_stream.fileno()):
            proc.bodies.extend(proc.reader.feed(data))
    except (ChannelError, OSError) as exc:
        return exc
    return None


def _read_nowait(fd: int) -> bytes:
    try:
        return os.read(fd, _RECEIVE_CHUNK)  # the fd is non-blocking
    except BlockingIOError:
        return b""  # nothing more yet (a task's surviving grandchild may hold the pipe open)


def _exit_cause(
    proc: _Process, request_id: int, problem: ChannelError | OSError | None
) -> _ChannelBroken:
    """Why the channel of an executor that exited mid-request ended, from what it left behind.

    ``problem`` is what stopped ``_read_ready``. A bad frame, an unexpected message or a frame
    cut short is named; else it is a plain end of channel, which the exit status explains.
    """
    if isinstance(problem, ChannelError):
        return _ChannelBroken(str(problem))
    if problem is not None:
        return _ChannelBroken(f"channel read failed: {problem}")
    if proc.bodies:
        try:
            _outcome_of(decode_message(proc.bodies[0]), request_id)
        except ChannelError as exc:
            return _ChannelBroken(str(exc))
        except _ChannelBroken as broken:
            return broken
    if proc.reader.pending_bytes:
        return _ChannelBroken("EOF inside a frame")
    return _ChannelBroken("closed its channel before replying", eof=True)


def result_beats_timer(bodies: Sequence[bytes], request_id: int) -> Outcome | None:
    """The decision once the hard-timeout deadline fired (executor.md §6.2, §10 item 11).

    ``bodies`` are the complete frames received before the pool acted on the deadline. A valid
    ``result`` for ``request_id`` among them wins and is returned; ``None`` means ``Timeout``.
    """
    if not bodies:
        return None
    try:
        return _outcome_of(decode_message(bodies[0]), request_id)
    except (ChannelError, _ChannelBroken):
        return None


async def _reap_group_orphans(pgid: int) -> None:
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


def _outcome_of(message: dict[str, Any], request_id: int) -> Outcome:
    """The outcome a ``result`` message carries; raises ``_ChannelBroken`` if it is not one."""
    if message.get("t") != "result" or message.get("id") != request_id:
        raise _ChannelBroken(
            f"unexpected message {message.get('t')!r} with id {message.get('id')!r} "
            f"(expected result {request_id})"
        )
    elapsed = message.get("us")
    if not isinstance(elapsed, int) or elapsed < 0:
        raise _ChannelBroken("result without a valid elapsed_us")
    if message.get("ok") is True:
        outputs = message.get("out")
        if not isinstance(outputs, bytes):
            raise _ChannelBroken("success result without output bytes")
        return Success(outputs, elapsed)
    error_type, text, tb = message.get("type"), message.get("msg"), message.get("tb", "")
    if not (isinstance(error_type, str) and isinstance(text, str) and isinstance(tb, str)):
        raise _ChannelBroken("failure result without type/message strings")
    return InTaskFailure(error_type, text, tb, elapsed)


@asynccontextmanager
async def open_pool(
    settings: PoolSettings,
    *,
    log_sink: LogSink | None = None,
    bin_path_for: Callable[[int], Path | None] | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[ExecutorPool]:
    """Start the pool: spawn every executor and wait for readiness; close it on exit.

    ``log_sink`` receives executor log lines (default: JSON lines on stdout). ``bin_path_for``
    (a test hook) may name, per executor id, a program to start instead of the configured one.
    Raises ``PoolInitError`` when an executor cannot start, after cleaning up; a failing log
    sink surfaces as ``PoolBroken`` from ``execute`` and from leaving the context.
    """
    try:
        async with trio.open_nursery() as nursery:
            pool = ExecutorPool(
                settings,
                nursery,
                log_sink=log_sink if log_sink is not None else JsonLinesSink(),
                bin_path_for=bin_path_for,
                rng=rng,
            )
            pool._start_background(pool._write_logs)
            try:
                await pool._start_all()
                yield pool
            finally:
                await pool.aclose()
    except BaseExceptionGroup as group:
        _raise_single(group)
        raise


def _raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the one leaf of ``group`` (our nursery's wrapping), if it has exactly one."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    if len(leaves) == 1:
        raise leaves[0]
    for leaf in leaves:
        if isinstance(leaf, PoolBroken | PoolInitError):
            raise leaf
