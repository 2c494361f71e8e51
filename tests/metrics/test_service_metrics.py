"""``python -m worker -c FILE`` with ``metrics`` set: the boot-time bind (protocol.md 6.13)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from tests.metrics.scraping import get, scrape
from tests.test_service import (
    FakeCluster,
    make_marking_executor,
    run_cli,
    running_worker,
    servers,
    write_config,
)
from tests.transport.scripted import ScriptedServer

__all__ = ["servers"]  # the fixture, re-used from the service tests

pytestmark = [pytest.mark.pool, pytest.mark.slow]


def test_a_taken_metrics_port_is_one_line_exit_1_and_nothing_started(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler)
    executor = make_marking_executor(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(
            tmp_path,
            storage.port,
            scheduler.port,
            metrics={"host": "127.0.0.1", "port": port},
            task_executor={"bin_path": str(executor)},
        )
        completed = run_cli("-c", str(config))
    assert completed.returncode == 1
    errors = [json.loads(line) for line in completed.stderr.splitlines() if '"error"' in line]
    assert len(errors) == 1, completed.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in errors[0]["message"]
    assert storage.calls() == []
    assert scheduler.calls() == []
    assert not (tmp_path / "executor-started").exists()


async def test_a_running_worker_serves_its_endpoint_on_the_logged_port(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler)
    config = write_config(
        tmp_path, storage.port, scheduler.port, metrics={"host": "127.0.0.1", "port": 0}
    )
    with trio.fail_after(60):
        async with running_worker(config, tmp_path / "stdout") as worker:
            (serving,) = await worker.wait_for_log(
                lambda line: line.get("message") == "metrics endpoint serving"
            )
            port = int(serving["metrics_port"])
            assert port > 0
            await worker.wait_for_state("Awaiting")
            samples = await trio.to_thread.run_sync(scrape, port)
            assert ("worker_assignments_received_total", ()) in samples
            status = await trio.to_thread.run_sync(get, port, "/healthz")
            assert status[0] == 200
            worker.signal(2)
        assert worker.process.returncode == 0
    # The port was released with the process (a listener would refuse even SO_REUSEADDR).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
