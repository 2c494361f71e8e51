"""Fixtures shared by the cluster's end-to-end test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import E2E


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    """A running cluster with fast timings; afterwards, no worker or executor may be left."""
    harness = E2E(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
        leftovers = {w.name: w.leftovers() for w in harness.workers if w.leftovers()}
        assert not leftovers, f"processes left behind: {leftovers}"
