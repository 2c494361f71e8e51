"""``python -m worker local --metrics``: each worker serves its own endpoint on a free port."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import TASKS_DIR, wait_for
from tests.metrics.scraping import get, scrape
from worker.cluster.processes import worker_environment

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ANNOUNCED = re.compile(r"^(worker-\d+) metrics: http://127\.0\.0\.1:(\d+)/metrics$")


def test_each_worker_gets_its_own_port_and_local_prints_it(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    naps = [
        {"name": f"nap{n}", "module": "cluster_tasks", "function": "sleepy", "inputs": [2.0, n]}
        for n in range(4)
    ]
    job.write_text(yaml.safe_dump({"name": "naps", "package_dir": str(TASKS_DIR), "tasks": naps}))
    local = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "local", str(job)),
            *("--workers", "2", "--metrics", "--no-progress", "--quiet"),
            *("--workdir", str(tmp_path / "wd"), "--heartbeat-sec", "0.2"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_environment(),
        cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert local.stderr is not None
    stderr = local.stderr

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    ports: dict[str, int] = {}

    def announced() -> bool:
        while not lines.empty():
            line = lines.get().rstrip("\n")
            seen.append(line)
            if match := ANNOUNCED.match(line):
                ports[match[1]] = int(match[2])
        return len(ports) == 2 or local.poll() is not None

    try:
        wait_for(announced, 90, "both workers' metrics ports")
        assert set(ports) == {"worker-1", "worker-2"}, seen
        assert len(set(ports.values())) == 2
        for port in ports.values():
            assert get(port, "/readyz")[0] == 200
            assert ("worker_assignments_received_total", ()) in scrape(port)
        # The ports were announced before the job was submitted; the job still runs to the end.
        assert local.wait(120) == 0, "\n".join(seen)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait(10)
        reader.join(10)
    logged = (tmp_path / "wd" / "cluster.log").read_text()
    assert "worker metrics endpoint" in logged
    assert all(f"metrics_port={port}" in logged for port in ports.values()), logged


def test_without_the_option_no_worker_serves_metrics(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    task = {"name": "one", "module": "cluster_tasks", "function": "echo", "inputs": [1]}
    job.write_text(yaml.safe_dump({"name": "one", "package_dir": str(TASKS_DIR), "tasks": [task]}))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "worker", "local", str(job), "--workers", "1"),
            *("--no-progress", "--workdir", str(tmp_path / "wd")),
        ],
        capture_output=True,
        text=True,
        env=worker_environment(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "metrics:" not in done.stderr
    config = yaml.safe_load((tmp_path / "wd" / "worker-1.yaml").read_text())
    assert "metrics" not in config
