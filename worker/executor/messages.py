"""The typed messages of the parent <-> executor channel (executor.md §4.1).

Each message travels as one msgpack map whose ``"t"`` names its kind (``worker.executor.channel``
frames it). Both sides build and read messages through these types, so the field names live in
one place: the pool (``worker.executor.pool``) and the executor (``worker.executor.child``).

* ``ReadyMessage``   executor -> parent, once: protocol version and PID.
* ``ExecuteMessage`` parent -> executor: one request.
* ``SuccessResult`` / ``FailureResult`` executor -> parent: the answer to one request.
* ``SHUTDOWN``       parent -> executor: exit 0.

This module runs in the executor too: standard library and ``msgpack`` (through ``channel``)
only; ``NamedTuple`` keeps it free of the slower ``dataclasses`` import.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from worker.executor.channel import PROTOCOL_VERSION

__all__ = [
    "SHUTDOWN",
    "ExecuteMessage",
    "FailureResult",
    "ReadyMessage",
    "SuccessResult",
    "UnexpectedMessage",
    "parse_ready",
    "parse_result",
]

#: The ``shutdown`` message: the executor exits 0.
SHUTDOWN: dict[str, Any] = {"t": "shutdown"}


class UnexpectedMessage(Exception):
    """A well-framed message that is not the one expected here; ``str()`` says what it was."""


class ReadyMessage(NamedTuple):
    """The executor's readiness handshake."""

    version: int
    pid: int

    def to_map(self) -> dict[str, Any]:
        """The message map sent on the channel."""
        return {"t": "ready", "v": self.version, "pid": self.pid}


class ExecuteMessage(NamedTuple):
    """One request: the request id and the fields of ``worker.model.ExecutionRequest``."""

    request_id: int
    job_id: int
    kind: str
    task_index: int | None
    task_instance_id: int
    resource_group_id: int
    package: str
    task_func: str
    task_io: bytes
    hard_timeout_ms: int

    def to_map(self) -> dict[str, Any]:
        """The message map sent on the channel."""
        return {
            "t": "exec",
            "id": self.request_id,
            "job": self.job_id,
            "kind": self.kind,
            "index": self.task_index,
            "inst": self.task_instance_id,
            "rg": self.resource_group_id,
            "pkg": self.package,
            "func": self.task_func,
            "io": self.task_io,
            "hard_ms": self.hard_timeout_ms,
        }

    @classmethod
    def from_map(cls, message: dict[str, Any]) -> ExecuteMessage:
        """The request in an ``exec`` map; raises ``KeyError`` for a missing field."""
        return cls(
            message["id"],
            message["job"],
            message["kind"],
            message["index"],
            message["inst"],
            message["rg"],
            message["pkg"],
            message["func"],
            message["io"],
            message["hard_ms"],
        )


class SuccessResult(NamedTuple):
    """The task returned: its encoded outputs (a task I/O wire frame)."""

    request_id: int
    outputs: bytes
    elapsed_us: int

    def to_map(self) -> dict[str, Any]:
        """The message map sent on the channel."""
        return {
            "t": "result",
            "id": self.request_id,
            "ok": True,
            "out": self.outputs,
            "us": self.elapsed_us,
        }


class FailureResult(NamedTuple):
    """The task (or the executor on its behalf) failed; the traceback is for the log only."""

    request_id: int
    error_type: str
    message: str
    traceback: str
    elapsed_us: int

    def to_map(self) -> dict[str, Any]:
        """The message map sent on the channel."""
        return {
            "t": "result",
            "id": self.request_id,
            "ok": False,
            "type": self.error_type,
            "msg": self.message,
            "tb": self.traceback,
            "us": self.elapsed_us,
        }


def parse_ready(message: dict[str, Any]) -> ReadyMessage:
    """The handshake in ``message``; ``UnexpectedMessage`` for anything else or another version."""
    version, pid = message.get("v"), message.get("pid")
    if message.get("t") != "ready" or version != PROTOCOL_VERSION:
        raise UnexpectedMessage(
            f"sent {message.get('t')!r} version {version!r} instead of "
            f"ready version {PROTOCOL_VERSION}"
        )
    return ReadyMessage(PROTOCOL_VERSION, pid if isinstance(pid, int) else -1)


def parse_result(message: dict[str, Any], request_id: int) -> SuccessResult | FailureResult:
    """The result for ``request_id`` in ``message``; ``UnexpectedMessage`` if it is not one."""
    if message.get("t") != "result" or message.get("id") != request_id:
        raise UnexpectedMessage(
            f"unexpected message {message.get('t')!r} with id {message.get('id')!r} "
            f"(expected result {request_id})"
        )
    elapsed = message.get("us")
    if not isinstance(elapsed, int) or elapsed < 0:
        raise UnexpectedMessage("result without a valid elapsed_us")
    if message.get("ok") is True:
        outputs = message.get("out")
        if not isinstance(outputs, bytes):
            raise UnexpectedMessage("success result without output bytes")
        return SuccessResult(request_id, outputs, elapsed)
    error_type, text, tb = message.get("type"), message.get("msg"), message.get("tb", "")
    if not (isinstance(error_type, str) and isinstance(text, str) and isinstance(tb, str)):
        raise UnexpectedMessage("failure result without type/message strings")
    return FailureResult(request_id, error_type, text, tb, elapsed)
