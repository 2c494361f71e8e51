"""A scripted gRPC server on loopback for transport and service tests.

Every method is served by a generic handler that sees the raw request bytes, so tests assert
exactly what went over the wire. A test scripts a method with a behaviour
``(request_bytes, context) -> response message`` (or ``bytes``); unscripted methods answer
``UNIMPLEMENTED``. Every call is recorded with its method path, raw bytes and peer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import attrs
import grpc
from google.protobuf.message import Message

__all__ = [
    "SERVER_THREADS",
    "Behaviour",
    "RecordedCall",
    "ScriptedServer",
    "abort_with",
    "closed_port",
    "scripted_server",
]

#: Name prefix of the server's handler threads (so thread counts can leave them out).
SERVER_THREADS = "scripted-server"

Behaviour = Callable[[bytes, Any], "Message | bytes"]


@attrs.frozen(slots=True)
class RecordedCall:
    """One call the server received: method path, raw request bytes, peer, arrival time."""

    method: str
    request: bytes
    peer: str
    received_at: float


def abort_with(code: grpc.StatusCode, details: str = "") -> Behaviour:
    """A behaviour that answers every call with ``code``."""

    def behaviour(_request: bytes, context: Any) -> bytes:
        context.abort(code, details)
        raise AssertionError("context.abort() returns only by raising")

    return behaviour


class ScriptedServer:
    """A grpc.server on 127.0.0.1 with a port chosen by the OS."""

    def __init__(self, max_workers: int = 16) -> None:
        self._lock = threading.Lock()
        self._behaviours: dict[str, Behaviour] = {}
        self._calls: list[RecordedCall] = []
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=SERVER_THREADS)
        )
        self._server.add_generic_rpc_handlers((_Dispatcher(self),))
        self.port: int = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> None:
        """Start serving."""
        self._server.start()

    def stop(self) -> None:
        """Stop at once and wait until the server shut down."""
        self._server.stop(grace=0).wait(10)

    def on(self, method: str, behaviour: Behaviour) -> None:
        """Serve ``method`` (a full path like ``/scheduler.SchedulerService/NextTask``)."""
        with self._lock:
            self._behaviours[method] = behaviour

    def reply(self, method: str, response: Message | bytes) -> None:
        """Answer every call of ``method`` with ``response``."""
        self.on(method, lambda _request, _context: response)

    def calls(self, method: str | None = None) -> list[RecordedCall]:
        """The calls received so far (of ``method`` only, when given), in arrival order."""
        with self._lock:
            return [call for call in self._calls if method is None or call.method == method]

    def _handle(self, method: str, request: bytes, context: Any) -> bytes:
        with self._lock:
            self._calls.append(RecordedCall(method, request, context.peer(), time.monotonic()))
            behaviour = self._behaviours.get(method)
        if behaviour is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not scripted")
        assert behaviour is not None
        response = behaviour(request, context)
        return response if isinstance(response, bytes) else response.SerializeToString()


class _Dispatcher(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, server: ScriptedServer) -> None:
        self._server = server

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method

        def handle(request: bytes, context: Any) -> bytes:
            return self._server._handle(method, request, context)

        # No (de)serializers: the behaviours see and return raw bytes.
        return grpc.unary_unary_rpc_method_handler(handle)


@contextmanager
def scripted_server(max_workers: int = 16) -> Iterator[ScriptedServer]:
    """A started ``ScriptedServer``, stopped on exit."""
    server = ScriptedServer(max_workers)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, for the block's span."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port: int = placeholder.getsockname()[1]
        yield port
