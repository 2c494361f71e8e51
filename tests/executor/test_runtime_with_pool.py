"""The [pool] runtime scenarios: the real runtime, the real executor pool, fake RPC services.

R1, R2 ([pool] variant), R10, R11, S7 (and its drain-deadline variant) and S8's [pool] variant,
on the real clock, each bounded by ``trio.fail_after`` (scenarios.md §2-§3).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.executor.conftest import TEST_BOUND_SEC, CollectingSink, group_alive, wait_groups_gone
from tests.runtime.harness import BOUNDED_WAIT, A, Harness, ctx, frame, rec
from worker.errors import PoolInitError, StatusCode
from worker.executor.pool import ExecutorPool, open_pool
from worker.executor.settings import PoolSettings
from worker.exit_codes import ExitCode
from worker.model import (
    ExecutionContext,
    TaskId,
    TaskInstanceId,
    TdlContext,
    TimeoutPolicy,
)
from worker.runtime import WorkerRuntime
from worker.testing import Assign, Error, Phase

pytestmark = pytest.mark.pool


class RealPool:
    """An ``ExecutorFactory`` opening the real pool and keeping a handle for inspection."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.sink = CollectingSink()
        self.pool: ExecutorPool | None = None
        self.groups: list[int] = []

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[ExecutorPool]:
        async with open_pool(self.settings, log_sink=self.sink) as pool:
            self.pool = pool
            try:
                yield pool
            finally:
                self.groups = pool.process_groups

    async def wait_busy(self) -> int:
        """Wait until the executor runs a task; its process group id."""
        with trio.fail_after(BOUNDED_WAIT * 5):
            # polling: the pool has no "task started" event to wait on
            while self.pool is None or not self.pool._slots[0].busy:  # noqa: ASYNC110
                await trio.sleep(0.005)
        pid = self.pool.executor_pids[0]
        assert pid is not None
        return pid


def with_real_pool(h: Harness, settings: PoolSettings) -> RealPool:
    """Swap the harness's FakePool for the real pool (a fresh runtime over the same fakes)."""
    real = RealPool(settings)
    h.runtime = WorkerRuntime(
        h.settings,
        scheduler=h.scheduler,
        storage=h.storage,
        liveness=h.liveness,
        open_executor=real,
    )
    return real


def spin_context() -> ExecutionContext:
    """``spin()`` with a 60 s hard timeout."""
    return ExecutionContext(
        TaskInstanceId(500),
        TdlContext("worker_testtasks", "spin"),
        TimeoutPolicy(1000, 60000),
        frame(),
    )


async def test_r1_registration_and_first_heartbeat(settings: PoolSettings) -> None:
    h = Harness()
    real = with_real_pool(h, settings)
    with trio.fail_after(TEST_BOUND_SEC):
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            h.start(nursery)
            await h.until(
                lambda: (
                    h.liveness.heartbeat_count >= 1
                    and h.scheduler.heartbeat_count >= 1
                    and h.scheduler.next_task_count >= 1
                ),
                within=TEST_BOUND_SEC,
            )
            assert trio.current_time() - started <= BOUNDED_WAIT
            assert await h.stop_and_finish() is ExitCode.OK
    assert h.liveness.register_calls == ["0.0.0.0"]
    ipaddress.ip_address(h.liveness.register_calls[0])
    rpcs = [e for e in h.journal.calls() if e.fake not in ("pool", "machine")]
    assert (rpcs[0].fake, rpcs[0].method) == ("liveness", "register")
    first = h.scheduler.calls[0]
    assert (first.em_id, first.prev, first.wait_time_ms) == (h.em_id, None, 2000)
    assert h.scheduler.shutdown_calls == [[]]
    h.check_teardown()
    assert real.groups
    assert not any(group_alive(g) for g in real.groups)


async def test_r2_missing_bin_path_is_a_pool_init_error(package_dir: Path) -> None:
    h = Harness()
    settings = PoolSettings(package_dir=package_dir, bin_path=package_dir / "no-such-executor")
    with_real_pool(h, settings)
    with trio.fail_after(TEST_BOUND_SEC), pytest.raises(PoolInitError):
        await h.runtime.run()
    assert h.scheduler.next_task_count == 0
    assert h.storage.register_calls == []
    assert h.liveness.register_calls == []
    assert h.scheduler.shutdown_calls == []


async def test_r10_success_reports_outputs(settings: PoolSettings) -> None:
    h = Harness()
    with_real_pool(h, settings)
    h.scheduler.push(Assign(A(1)))
    h.storage.push_register(ctx("fibonacci", 10, instance=11))
    with trio.fail_after(TEST_BOUND_SEC):
        async with trio.open_nursery() as nursery:
            h.start(nursery)
            await h.storage.wait_for_reports(1, TEST_BOUND_SEC)
            assert await h.stop_and_finish(TEST_BOUND_SEC) is ExitCode.OK
    [attempt] = h.storage.success_reports
    report = attempt.report
    assert (report.job_id, report.task_id, report.task_instance_id) == (7, TaskId.of_index(0), 11)
    assert (report.execution_manager_id, report.session_id) == (h.em_id, 1)
    assert report.serialized_outputs == bytes.fromhex("01 00 00 00 01 00 00 00 37")
    assert h.storage.failure_reports == []
    h.check_teardown()


async def test_r11_failure_keeps_the_loop_serving(settings: PoolSettings) -> None:
    h = Harness()
    real = with_real_pool(h, settings)
    h.scheduler.push(Assign(A(1)), Assign(A(2)))
    h.storage.push_register(ctx("always_fail"), ctx("fibonacci", 10))
    with trio.fail_after(TEST_BOUND_SEC):
        async with trio.open_nursery() as nursery:
            h.start(nursery)
            await h.storage.wait_for_reports(2, TEST_BOUND_SEC)
            assert real.pool is not None
            assert real.pool.executor_ids == [0]  # both ran on the first executor
            assert await h.stop_and_finish(TEST_BOUND_SEC) is ExitCode.OK
    [failure] = h.storage.failure_reports
    assert failure.report.error_message == (
        "in-task failure: RuntimeError: always_fail: intentional failure"
    )
    [success] = h.storage.success_reports
    assert success.report.serialized_outputs == frame(55)
    assert len(real.groups) == 1
    h.check_teardown()


async def run_until_forced(h: Harness, real: RealPool, *, force_after: float | None) -> float:
    """Run A1 = spin(); stop once it executes, force ``force_after`` s later (or never).

    Returns the real time the forced path started from (the force, or the stop).
    """
    a1 = A(1)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(spin_context())
    with trio.fail_after(TEST_BOUND_SEC):
        async with trio.open_nursery() as nursery:
            h.start(nursery)
            pgid = await real.wait_busy()
            stopped = time.perf_counter()
            heartbeats_at_stop = h.liveness.heartbeat_count
            h.stop()
            forced_from = stopped
            if force_after is not None:
                await trio.sleep(force_after)
                forced_from = time.perf_counter()
                h.force()
            await wait_groups_gone([pgid], within=TEST_BOUND_SEC)
            gone_after = time.perf_counter() - forced_from
            assert await h.finish(TEST_BOUND_SEC) is ExitCode.FORCED
    assert h.liveness.heartbeat_count > heartbeats_at_stop, "heartbeats continue while draining"
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(a1)]]
    assert not any(group_alive(g) for g in real.groups)
    h.check_teardown()
    return gone_after


async def test_s7_second_stop_forces(settings: PoolSettings) -> None:
    h = Harness()
    real = with_real_pool(h, settings)
    gone_after = await run_until_forced(h, real, force_after=0.2)
    assert gone_after <= 1.0


async def test_s7_drain_deadline_forces(settings: PoolSettings) -> None:
    h = Harness(drain_timeout_sec=0.5)
    real = with_real_pool(h, settings)
    gone_after_stop = await run_until_forced(h, real, force_after=None)
    assert 0.5 <= gone_after_stop <= 0.5 + 1.0


@pytest.mark.parametrize(
    "answer",
    [Error(StatusCode.FAILED_PRECONDITION), Error(StatusCode.INVALID_ARGUMENT), 4],
    ids=["marked-dead", "illegal-id", "lower-session"],
)
async def test_s8_eviction_kills_the_running_task(
    settings: PoolSettings, answer: Error | int
) -> None:
    h = Harness(initial_session=5)
    real = with_real_pool(h, settings)
    a1 = A(1, session=5)
    h.scheduler.push(Assign(a1))
    h.storage.push_register(spin_context())
    with trio.fail_after(TEST_BOUND_SEC):
        async with trio.open_nursery() as nursery:
            h.start(nursery)
            pgid = await real.wait_busy()
            h.liveness.push_heartbeat(answer)
            await h.until(
                lambda: any(
                    e.result in ("FAILED_PRECONDITION", "INVALID_ARGUMENT", 4)
                    for e in h.journal.calls("liveness", "heartbeat", Phase.END)
                ),
                within=TEST_BOUND_SEC,
            )
            evicted = time.perf_counter()
            await wait_groups_gone([pgid], within=TEST_BOUND_SEC)
            assert time.perf_counter() - evicted <= 1.0
            assert await h.finish(TEST_BOUND_SEC) is ExitCode.EVICTED
    evicting = next(
        e
        for e in h.journal.calls("liveness", "heartbeat", Phase.END)
        if e.result in ("FAILED_PRECONDITION", "INVALID_ARGUMENT", 4)
    )
    later = [e for e in h.journal.calls() if e.seq > evicting.seq]
    assert not [e for e in later if e.method in ("next_task", "register_task_instance")]
    assert not [e for e in later if (e.fake, e.method) == ("liveness", "heartbeat")]
    assert h.storage.reports == []
    assert h.scheduler.shutdown_calls == [[rec(a1)]]
    assert not any(group_alive(g) for g in real.groups)
    h.check_teardown()
