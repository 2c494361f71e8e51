"""The built-in Python executor: the entry point of every executor subprocess (executor.md §2, §4).

The pool starts it as ``python -P -c BOOTSTRAP <worker_root> key=value ...`` (see
``worker.executor.processes.executor_command``). It reads ``exec`` requests from a dedicated pipe,
runs one task at a time in this process, and answers each with one ``result`` frame on another
pipe. fd 1 and fd 2 both go to the log pipe, so task output never touches the channel.

Imports: the standard library, ``msgpack`` and the stdlib-only worker modules ``wire``,
``channel``, ``messages``, ``guard`` and ``worker.task``, all before ``package_dir`` goes on
``sys.path``; zstd comes lazily, for commit tasks, through ``wire``, which keeps ``package_dir``
out of that import (eagerly with ``run_as``, before the user switch). Never trio, attrs or the
runtime: the executor starts in tens of milliseconds and stays small.

With ``run_as=uid:gid`` the executor switches to that user after its own imports and before
``package_dir`` goes on ``sys.path``: no task code ever runs as the worker's user.

Before and after each task the executor writes a marker line ``\\x1e<nonce> B|E <id>`` to fd 2;
the pool's log reader uses them to tag the lines in between with the task's ids and never
forwards them (``worker.executor.logs``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback  # eagerly: a module in package_dir must not shadow it (or linecache, ...)
import types
from collections.abc import Sequence
from typing import Any

from worker import task as task_context
from worker.executor.channel import (
    PROTOCOL_VERSION,
    ChannelError,
    decode_message,
    encode_message,
    read_frame_blocking,
    write_all_blocking,
)
from worker.executor.guard import EXIT_CANNOT_START, RunAsIds, drop_privileges
from worker.executor.messages import ExecuteMessage, FailureResult, ReadyMessage, SuccessResult
from worker.executor.wire import (
    FrameDecodeError,
    GraphOutputsDecodeError,
    OutputEncodeError,
    decode_values,
    encode_return,
    load_zstandard,
)

__all__ = ["EXIT_BAD_REQUEST", "ExecutorOptions", "main", "marker", "type_name"]

#: Exit status for an undecodable or unexpected request frame.
EXIT_BAD_REQUEST = 2

_MAX_MESSAGE_BYTES = 65536
_MAX_TYPE_BYTES = 1024
_FRAME_OVERHEAD = 1024
_UINT64_MAX = 2**64 - 1
_MISSING = object()
_UNSUPPORTED = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


class ExecutorOptions:
    """The executor's command-line settings (``key=value`` arguments; never the environment)."""

    __slots__ = (
        "in_fd",
        "max_frame_bytes",
        "nonce",
        "out_fd",
        "output_limit",
        "package_dir",
        "run_as",
    )

    def __init__(self, argv: Sequence[str]) -> None:
        values = dict(arg.split("=", 1) for arg in argv)
        self.in_fd = int(values["in_fd"])
        self.out_fd = int(values["out_fd"])
        self.package_dir = values["package_dir"]
        self.max_frame_bytes = int(values["max_frame_bytes"])
        self.output_limit = int(values["output_limit"])
        self.nonce = values["nonce"]
        self.run_as = RunAsIds(values["run_as"]) if "run_as" in values else None


def marker(nonce: str, edge: str, request_id: int) -> bytes:
    """The log marker line the executor writes at a task's begin (``B``) or end (``E``)."""
    return f"\x1e{nonce} {edge} {request_id}\n".encode()


def type_name(exc_type: type) -> str:
    """The reported type of an exception class: qualname for builtins, else module.qualname."""
    module = getattr(exc_type, "__module__", "builtins")
    qualname = getattr(exc_type, "__qualname__", exc_type.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"


def _reported_type(exc: BaseException) -> str:
    """The type a task's exception is reported as: the fixed name for the executor's own errors.

    A malformed graph-outputs buffer surfaces as an exception from the context accessor, but
    it is an executor-detected error with a fixed name (executor.md §2.6).
    """
    if isinstance(exc, GraphOutputsDecodeError):
        return "GraphOutputsDecodeError"
    return type_name(type(exc))


def _cut(text: str, limit: int) -> str:
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[: max(limit - 12, 0)].decode("utf-8", "ignore") + " [truncated]"


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # a broken __str__ must not break the executor
        return f"<unprintable {type(exc).__name__}>"


def _format_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:
        return ""


class _Executor:
    """The request loop and the task-running logic of one executor process."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    def send(self, message: ReadyMessage | SuccessResult | FailureResult) -> None:
        write_all_blocking(self.options.out_fd, encode_message(message.to_map()))

    def failure(
        self, request_id: int, error_type: str, message: str, tb: str, started: int
    ) -> FailureResult:
        budget = self.options.max_frame_bytes - _FRAME_OVERHEAD - _MAX_TYPE_BYTES
        return FailureResult(
            request_id,
            _cut(error_type, _MAX_TYPE_BYTES),
            _cut(message, _MAX_MESSAGE_BYTES),
            _cut(tb, max(budget - _MAX_MESSAGE_BYTES, 0)),
            _elapsed_us(started),
        )

    def run_task(self, request: ExecuteMessage) -> SuccessResult | FailureResult:
        """Resolve, decode, call and encode one task; always returns a result message."""
        request_id = request.request_id
        started = time.perf_counter_ns()
        package = request.package
        func_name = request.task_func
        kind = request.kind
        io = request.task_io
        try:
            module = importlib.import_module(package)
        except BaseException as exc:
            detail = _describe(exc)
            cause = type_name(type(exc)) + (f": {detail}" if detail else "")
            return self.failure(
                request_id, "PackageImportError", cause, _format_traceback(exc), started
            )
        # task_func names one attribute: no dots, so "a.b" never walks into a submodule
        func = getattr(module, func_name, _MISSING) if "." not in func_name else _MISSING
        if func is _MISSING:
            return self.failure(
                request_id,
                "TaskNotFound",
                f"module {package!r} has no function {func_name!r}",
                "",
                started,
            )
        if not callable(func):
            return self.failure(
                request_id,
                "TaskNotCallable",
                f"{package}.{func_name} is a {type(func).__qualname__}, not a callable",
                "",
                started,
            )
        args: list[Any] = []
        if kind == "index" or (kind == "cleanup" and io):
            if not io:
                return self.failure(
                    request_id,
                    "InputDecodeError",
                    "empty serialized_task_io is not a frame (only a cleanup task takes no "
                    "bytes as no arguments)",
                    "",
                    started,
                )
            try:
                args = decode_values(io)
            except FrameDecodeError as exc:
                return self.failure(request_id, "InputDecodeError", str(exc), "", started)
        context = task_context.TaskContext(
            job_id=request.job_id,
            task_id=task_context.TaskRef(kind, request.task_index),
            task_instance_id=request.task_instance_id,
            resource_group_id=request.resource_group_id,
            package=package,
            task_func=func_name,
            serialized_graph_outputs=io if kind == "commit" else None,
            max_graph_outputs_bytes=self.options.max_frame_bytes,
        )
        token = task_context._enter(context)
        try:
            result = func(*args)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the process stays
            return self.failure(
                request_id,
                _reported_type(exc),
                _describe(exc),
                _format_traceback(exc),
                started,
            )
        finally:
            task_context._leave(token)
        if isinstance(result, _UNSUPPORTED):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            return self.failure(
                request_id,
                "UnsupportedTask",
                f"{package}.{func_name} returned a {type(result).__qualname__}: async and "
                "generator tasks are not supported",
                "",
                started,
            )
        try:
            outputs = encode_return(result)
        except OutputEncodeError as exc:
            return self.failure(request_id, "OutputEncodeError", str(exc), "", started)
        if len(outputs) > self.options.output_limit:
            return self.failure(
                request_id,
                "OutputTooLarge",
                f"outputs too large ({len(outputs)} bytes > {self.options.output_limit})",
                "",
                started,
            )
        return SuccessResult(request_id, outputs, _elapsed_us(started))

    def serve(self) -> int:
        """Answer requests until ``shutdown`` or EOF (0) or a bad frame (non-zero)."""
        options = self.options
        nonce = options.nonce
        while True:
            try:
                body = read_frame_blocking(options.in_fd, options.max_frame_bytes)
                if body is None:
                    return 0
                request = decode_message(body)
            except ChannelError as exc:
                os.write(2, f"executor: bad request frame: {exc}\n".encode())
                return EXIT_BAD_REQUEST
            kind = request["t"]
            if kind == "shutdown":
                return 0
            if kind != "exec":
                os.write(2, f"executor: unexpected message {kind!r}\n".encode())
                return EXIT_BAD_REQUEST
            request_id = request.get("id")
            if not isinstance(request_id, int):
                os.write(2, b"executor: request without an integer id\n")
                return EXIT_BAD_REQUEST
            os.write(2, marker(nonce, "B", request_id))
            try:
                response = self.run_task(ExecuteMessage.from_map(request))
            except (KeyError, TypeError) as exc:  # a request missing fields: a parent bug
                os.write(2, f"executor: malformed request: {exc!r}\n".encode())
                return EXIT_BAD_REQUEST
            _flush_stdio()
            os.write(2, marker(nonce, "E", request_id))
            self.send(response)


def _elapsed_us(started_ns: int) -> int:
    return min((time.perf_counter_ns() - started_ns) // 1000, _UINT64_MAX)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # a task may have closed or replaced the streams
            pass


def _switch_user(ids: RunAsIds) -> None:
    """Become the ``run_as`` user, after loading what this executor needs (executor.md §8.1).

    The user may not be able to read the interpreter's own directories, so every module the
    executor needs is imported first, zstandard (commit tasks) included.
    """
    try:  # noqa: SIM105 (contextlib is not imported here: start-up cost)
        load_zstandard()
    except ImportError:
        pass  # not installed: a commit task that needs it fails the same way after the switch
    drop_privileges(ids)


def main(argv: Sequence[str]) -> None:
    """Run the executor: point fd 1 at fd 2, switch user (``run_as``), put ``package_dir``
    first, say ``ready``, serve."""
    options = ExecutorOptions(argv)
    os.dup2(2, 1)  # C-level writes to fd 1 land in the log pipe, never in the channel
    sys.stdout = sys.stderr  # Python-level prints too, in order with the rest of stderr
    if options.run_as is not None:
        try:
            _switch_user(options.run_as)
        except OSError as exc:
            os.write(2, f"executor: cannot switch to the run_as user: {exc}\n".encode())
            os._exit(EXIT_CANNOT_START)
    sys.path.insert(0, options.package_dir)
    executor = _Executor(options)
    code = EXIT_BAD_REQUEST
    try:
        executor.send(ReadyMessage(PROTOCOL_VERSION, os.getpid()))
        code = executor.serve()
    except OSError as exc:  # the parent went away (broken pipe): nothing left to serve
        os.write(2, f"executor: channel failed: {exc}\n".encode())
        code = 1
    finally:
        _flush_stdio()
    # os._exit: threads a task left running must not keep a shut-down executor alive
    os._exit(code)
