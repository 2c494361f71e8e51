"""A small HTTP endpoint on a daemon thread: fixed routes, bound at construction, 404 elsewhere.

The worker's metrics server and the reference cluster's metrics both stand on it. Binding
happens in the constructor, so a taken address is an immediate :class:`MetricsBindError`
naming ``host:port``. ``SO_REUSEPORT`` stays off, so a port that another process listens on
is refused; ``SO_REUSEADDR`` stays on, so a restart can rebind over connections in TIME_WAIT.
The thread never touches trio, so a blocked event loop cannot stop it answering.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

__all__ = ["TEXT", "HttpEndpoint", "MetricsBindError", "Reply", "Route"]

logger = logging.getLogger("worker.metrics")

TEXT: Final = "text/plain; charset=utf-8"

#: ``(status, content type, body)`` of one answer.
Reply = tuple[HTTPStatus, str, bytes]
#: Answers ``GET`` of one path; receives the request's ``Accept`` header ("" if none).
Route = Callable[[str], Reply]


class MetricsBindError(OSError):
    """The address cannot be bound; ``str()`` is the one line to print."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        super().__init__(f"cannot serve metrics on {host}:{port}: {reason}")


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    allow_reuse_port = False
    daemon_threads = True

    def __init__(self, address: tuple[str, int], routes: Mapping[str, Route]) -> None:
        self.routes = routes
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get(path)
        if route is None:
            self._send((HTTPStatus.NOT_FOUND, TEXT, f"no such path: {path}\n".encode()))
            return
        try:
            reply = route(self.headers.get("Accept", ""))
        except Exception as error:  # one bad answer must not kill the thread
            logger.warning("metrics endpoint failed: %s", error, extra={"fields": {"path": path}})
            reply = (HTTPStatus.INTERNAL_SERVER_ERROR, TEXT, b"internal error\n")
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        status, content_type, body = reply
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line."""


class HttpEndpoint:
    """Serves ``routes`` on ``host:port`` from a daemon thread; bound on construction.

    ``port`` 0 picks a free port: read the bound one from :attr:`port`. Use as a context
    manager, or call :meth:`start` and later :meth:`close`.
    """

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        try:
            self._server = _Server((host, port), routes)
        except (OSError, OverflowError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise MetricsBindError(host, port, str(reason)) from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start answering requests on the endpoint's thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name=f"metrics-{self.port}",
                daemon=True,
            )
            self._thread.start()

    def close(self) -> None:
        """Stop answering and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HttpEndpoint:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
