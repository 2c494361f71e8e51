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
* The pool holds a ``Lifeline`` for as long as it is open; every executor's group watcher
  (``worker.executor.guard``) kills its group when the lifeline ends, so no executor outlives
  the worker, however the worker dies.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from worker.errors import PoolBroken, PoolClosed, PoolInitError
from worker.executor.channel import ChannelError, decode_message, encode_message
from worker.executor.logpump import LogPump
from worker.executor.logs import JsonLinesSink, LogSink, TaskTag
from worker.executor.messages import (
    SHUTDOWN,
    ExecuteMessage,
    SuccessResult,
    UnexpectedMessage,
    parse_ready,
    parse_result,
)
from worker.executor.processes import (
    ExecutorProcess,
    Lifeline,
    StartFailed,
    become_subreaper,
    build_environment,
    describe_status,
    exit_status,
    kill_group,
    reap_group_orphans,
    spawn_executor,
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
from worker.security import first_unreadable

__all__ = ["ExecutorPool", "open_pool", "result_beats_timer"]

log = logging.getLogger("worker.executor")

_CRASH_REAP_WAIT_SEC = 1.0
_REAP_BOUND_SEC = 5.0
_BACKOFF_JITTER = 0.2
#: Tags of requests whose begin marker the log reader has not seen yet. The reader lags by at
#: most one read chunk plus a pipe buffer of marker lines (~8,000 tasks), so this never drops a
#: tag the built-in executor's markers will claim.
_MAX_PENDING_TAGS = 16384


class _ChannelBroken(Exception):
    """The channel to a busy executor broke; the message says how.

    ``eof`` marks a plain end of channel: when the process's exit status explains it, the crash
    carries no detail (``executor crashed (exit_status = 3)``).
    """

    def __init__(self, detail: str, *, eof: bool = False) -> None:
        super().__init__(detail)
        self.eof = eof


class _Slot:
    """One executor position: its current process (if started) and its failed-start count."""

    def __init__(self) -> None:
        self.process: ExecutorProcess | None = None
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
        self._bin_path_for = bin_path_for
        self._random = rng or random.Random()
        self._env, self._missing_env = build_environment(settings)
        try:
            self._lifeline = Lifeline()
        except OSError as exc:
            raise PoolInitError(f"the executor pool could not start: {exc}") from None
        self._slots = [_Slot() for _ in range(settings.slots)]
        self._idle_send, self._idle_receive = trio.open_memory_channel[_Slot](settings.slots)
        self._logs = LogPump(
            log_sink,
            max_line_bytes=settings.max_log_line_bytes,
            queue_lines=settings.log_queue_lines,
            on_sink_failure=self._sink_failed,
        )
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
        self._warn_unreadable_interpreter()
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
        except StartFailed as exc:
            raise PoolInitError(f"the executor pool could not start: {exc}") from None

    def _warn_unreadable_interpreter(self) -> None:
        user = self.settings.run_as
        if user is None:
            return
        for prefix in dict.fromkeys(Path(p) for p in (sys.prefix, sys.base_prefix)):
            blocked = first_unreadable(prefix, user.uid, user.gid)
            if blocked is not None:
                log.warning(
                    "run_as user %s cannot read the interpreter's directory %s (blocked at %s):"
                    " tasks can import only the modules the executor loaded before switching"
                    " to that user",
                    user.name,
                    prefix,
                    blocked,
                    extra={"fields": {"run_as": user.name, "path": str(prefix)}},
                )

    async def _start_executor(self) -> ExecutorProcess:
        """Spawn one executor and wait for its ``ready``; raises ``StartFailed`` after cleanup."""
        executor_id = self._next_executor_id
        self._next_executor_id += 1
        bin_path = self._bin_path_for(executor_id) if self._bin_path_for else None
        proc = await spawn_executor(
            self.settings, self._env, executor_id, secrets.token_hex(8), bin_path, self._lifeline
        )
        process = proc.process
        self._all_pgids.append(process.pid)
        self._start_background(self._logs.read, proc)
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
            raise StartFailed(f"executor {executor_id} {problem}")
        log.debug("executor %d ready", executor_id, extra={"fields": fields})
        return proc

    async def _await_ready(self, proc: ExecutorProcess) -> str | None:
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
                return f"exited before ready (exit_status = {describe_status(status)})"
            try:
                parse_ready(message)
            except UnexpectedMessage as exc:
                return str(exc)
            return None
        return f"was not ready within {self.settings.ready_timeout_sec} s"

    async def _ensure_executor(self, slot: _Slot) -> ExecutorProcess:
        """The slot's live executor, replacing a dead one and retrying failed starts."""
        proc = slot.process
        if proc is not None and proc.process.poll() is not None:
            status = proc.process.returncode
            log.warning(
                "executor %d died while idle (exit_status = %s); starting a new one",
                proc.executor_id,
                describe_status(status),
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
        except StartFailed:
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
            message = ExecuteMessage(
                request_id,
                request.job_id,
                request.task_id.kind.value,
                request.task_id.index,
                request.task_instance_id,
                request.resource_group_id,
                request.package,
                request.task_func,
                request.serialized_task_io,
                request.hard_timeout_ms,
            )
            frame = encode_message(message.to_map(), self.settings.max_frame_bytes)
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
                problem = proc.read_ready()
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

    async def _watch_exit(self, proc: ExecutorProcess) -> None:
        """Reap the executor when it exits and cut short the request it leaves in flight."""
        await proc.process.wait()
        if proc.in_flight is not None:
            proc.in_flight.cancel()

    async def _exchange(self, proc: ExecutorProcess, request_id: int, frame: bytes) -> Outcome:
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

    async def _crashed(
        self, slot: _Slot, proc: ExecutorProcess, broken: _ChannelBroken
    ) -> ExecutorCrash:
        with trio.CancelScope(shield=True):
            status = await self._status_within(proc, _CRASH_REAP_WAIT_SEC)
            await self._kill_and_reap(proc)
        exit_code, signum = exit_status(status)
        detail = "" if broken.eof and status is not None else str(broken)
        crash = ExecutorCrash(exit_code=exit_code, signal=signum, detail=detail)
        log.warning(
            "executor %d crashed (exit_status = %s): %s",
            proc.executor_id,
            describe_status(status),
            broken,
            extra={"fields": {"executor_id": proc.executor_id, "pid": proc.pid}},
        )
        await self._respawn(slot)
        return crash

    async def _timed_out(self, slot: _Slot, proc: ExecutorProcess, hard_timeout_ms: int) -> Timeout:
        with trio.CancelScope(shield=True):
            grace = self.settings.kill_grace_ms / 1000
            if grace > 0:
                kill_group(proc.pid, signal.SIGTERM)
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

    async def _status_within(self, proc: ExecutorProcess, seconds: float) -> int | None:
        """The leader's returncode if it exits within ``seconds`` (``None``: still alive)."""
        with trio.move_on_after(seconds):
            return await proc.process.wait()
        return proc.process.returncode

    async def _kill_and_reap(self, proc: ExecutorProcess) -> None:
        """SIGKILL the executor's group (group before reap: the pgid cannot be reused)."""
        with trio.CancelScope(shield=True):
            kill_group(proc.pid)
            with trio.move_on_after(_REAP_BOUND_SEC):
                await proc.process.wait()
            proc.close_streams()
            if proc.process.returncode is not None:
                await reap_group_orphans(proc.pid)

    def _sink_failed(self, reason: str) -> PoolBroken:
        self._broken = reason
        return PoolBroken(reason)

    # --- close -------------------------------------------------------------------------------

    async def _close(self) -> None:
        self._idle_send.close()
        procs = [slot.process for slot in self._slots if slot.process is not None]
        busy = {slot.process for slot in self._slots if slot.busy and slot.process is not None}
        shutdown = encode_message(SHUTDOWN)
        for proc in procs:
            if proc in busy:
                kill_group(proc.pid)
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
        self._lifeline.close()  # every watcher still alive now kills its group
        await self._logs.drain(self.settings.log_drain_timeout_sec)
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


def _exit_cause(
    proc: ExecutorProcess, request_id: int, problem: ChannelError | OSError | None
) -> _ChannelBroken:
    """Why the channel of an executor that exited mid-request ended, from what it left behind.

    ``problem`` is what stopped ``read_ready``. A bad frame, an unexpected message or a frame
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


def _outcome_of(message: dict[str, Any], request_id: int) -> Outcome:
    """The outcome a ``result`` message carries; raises ``_ChannelBroken`` if it is not one."""
    try:
        result = parse_result(message, request_id)
    except UnexpectedMessage as exc:
        raise _ChannelBroken(str(exc)) from None
    if isinstance(result, SuccessResult):
        return Success(result.outputs, result.elapsed_us)
    return InTaskFailure(result.error_type, result.message, result.traceback, result.elapsed_us)


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
            pool._start_background(pool._logs.write)
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
