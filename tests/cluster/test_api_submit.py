"""worker.api.submit against a running reference cluster: outputs back, failures raised."""

from __future__ import annotations

import importlib

import pytest

from tests.cluster.harness import E2E, TASKS_DIR
from worker.api import Job, JobFailedError, submit

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_submit_returns_the_outputs_and_raises_for_a_failed_job(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TASKS_DIR))
    tasks = importlib.import_module("cluster_tasks")
    e2e.start_worker()
    address = f"127.0.0.1:{e2e.cluster.storage_port}"
    job = Job("sum", package_dir=TASKS_DIR)
    job.add(tasks.add, *job.map(tasks.echo, [20, 22]))
    assert submit(job, address, timeout_sec=120) == [42]
    failing = Job("fails", package_dir=TASKS_DIR)
    failing.add(tasks.always_fail)
    with pytest.raises(JobFailedError, match="FAILED: in-task failure: ValueError") as raised:
        submit(failing, address, timeout_sec=120)
    assert raised.value.state == "FAILED"
