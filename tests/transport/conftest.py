"""Fixtures: a scripted loopback server and channel pools pointing at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.transport.scripted import ScriptedServer, scripted_server
from worker.transport.channels import ChannelOptions, ChannelPool


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A started scripted server on 127.0.0.1, stopped after the test."""
    with scripted_server() as started:
        yield started


@pytest.fixture
def channels(server: ScriptedServer) -> Iterator[ChannelPool]:
    """Two channels to ``server``, closed after the test."""
    pool = ChannelPool("127.0.0.1", server.port, 2, ChannelOptions())
    try:
        yield pool
    finally:
        pool.close()
