"""A tiny blocking HTTP client for the endpoint tests (loopback only)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, str]:
    """``(status, content type, body)`` of ``GET http://host:port/path``."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(
    port: int, host: str = "127.0.0.1"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own text parser, keyed by
    ``(sample name, sorted labels)``."""
    status, content_type, body = get(port, "/metrics", host)
    assert status == 200, body
    assert content_type.startswith("text/plain"), content_type
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
