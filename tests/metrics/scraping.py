"""A tiny blocking HTTP client for the endpoint tests (loopback only)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

#: Samples keyed by ``(sample name, sorted labels)``.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, str]:
    """``(status, content type, body)`` of ``GET http://host:port/path``."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
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


def registry_samples(registry: CollectorRegistry) -> Samples:
    """Every sample of ``registry``, keyed as :func:`scrape` keys them (no HTTP in between)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def slot_states(samples: Samples, slots: int) -> list[str]:
    """The state whose ``worker_slot_state`` series is 1, for each slot (one state each)."""
    states = []
    for slot in range(slots):
        current = [
            dict(labels)["state"]
            for (name, labels), sample in samples.items()
            if name == "worker_slot_state" and dict(labels)["slot"] == str(slot) and sample == 1
        ]
        assert len(current) == 1, (slot, current)
        states.append(current[0])
    return states
