"""The plain HTTP server of the worker's metrics and probes, on a thread of its own.

It binds when constructed (synchronously, at boot, before the executor pool starts and before
registering), so a taken port is a :class:`MetricsBindError` naming ``host:port`` rather than a
surprise later. ``SO_REUSEPORT`` stays off: a second process cannot share a port that is in
use. The server thread never touches trio, so a blocked trio loop cannot stop it answering.

Paths: ``/metrics`` (Prometheus text, negotiated with ``prometheus_client``'s encoder),
``/healthz`` and ``/readyz`` (200 or 503, with a one-line reason), ``/assignments`` (JSON from
the provider callable), anything else 404.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client.exposition import choose_encoder

from worker.metrics.instruments import WorkerMetrics

__all__ = ["AssignmentsProvider", "MetricsBindError", "MetricsServer", "serve_metrics"]

logger = logging.getLogger("worker.metrics")

#: Returns what ``/assignments`` serves: a JSON-able snapshot. Called on the HTTP thread, so it
#: must only read data the trio side replaces whole (never await or touch trio objects).
AssignmentsProvider = Callable[[], Any]

_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"


def _no_assignments() -> Any:
    return {"slots": [], "recent": []}


class MetricsBindError(OSError):
    """The metrics address cannot be bound; ``str()`` is the one line to print."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        super().__init__(f"cannot serve metrics on {host}:{port}: {reason}")


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restart may rebind over TIME_WAIT; a live listener refuses
    allow_reuse_port = False
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: MetricsServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, content_type, encoder(owner.metrics.registry))
            elif path == "/healthz":
                problem = owner.metrics.health.liveness_problem()
                if problem is None:
                    self._send(HTTPStatus.OK, _TEXT, b"ok\n")
                else:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, f"{problem}\n".encode())
            elif path == "/readyz":
                if owner.metrics.health.ready:
                    self._send(HTTPStatus.OK, _TEXT, b"ready\n")
                else:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"not ready\n")
            elif path == "/assignments":
                body = json.dumps(owner.assignments(), indent=2, sort_keys=True) + "\n"
                self._send(HTTPStatus.OK, _JSON, body.encode())
            else:
                self._send(HTTPStatus.NOT_FOUND, _TEXT, f"no such path: {path}\n".encode())
        except Exception as error:  # one bad snapshot must not kill the thread
            logger.warning("metrics endpoint failed: %s", error, extra={"fields": {"path": path}})
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, b"internal error\n")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line."""


class MetricsServer:
    """Serves ``metrics`` on ``host:port`` from a daemon thread; bound on construction.

    ``port`` 0 picks a free port: read the bound one from :attr:`port`. Use as a context
    manager, or call :meth:`start` and later :meth:`close`.
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        host: str,
        port: int,
        assignments: AssignmentsProvider = _no_assignments,
    ) -> None:
        self.metrics = metrics
        self.assignments: AssignmentsProvider = assignments
        try:
            self._server = _Server((host, port), self)
        except (OSError, OverflowError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise MetricsBindError(host, port, str(reason)) from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start answering requests on the server's thread."""
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

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def serve_metrics(host: str, port: int, metrics: WorkerMetrics) -> MetricsServer:
    """Bind ``host:port`` and start serving ``metrics``; logs the INFO line with the bound
    port (``metrics_port``). Raises :class:`MetricsBindError` when the address is taken."""
    server = MetricsServer(metrics, host, port)
    server.start()
    logger.info(
        "metrics endpoint serving",
        extra={"fields": {"metrics_host": host, "metrics_port": server.port}},
    )
    return server
