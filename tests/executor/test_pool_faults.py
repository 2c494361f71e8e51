"""Misbehaving executors (test programs via ``bin_path``): start failures and channel faults."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from tests.executor.conftest import (
    TEST_BOUND_SEC,
    CollectingSink,
    executor_script,
    group_alive,
    request,
)
from worker.core.decisions import failure_message
from worker.errors import PoolInitError
from worker.executor.pool import open_pool
from worker.executor.settings import PoolSettings
from worker.model import ExecutorCrash, Success, Timeout

pytestmark = pytest.mark.pool

READY = 'send({"t": "ready", "v": 1, "pid": os.getpid()})\n'


async def expect_init_error(settings: PoolSettings, sink: CollectingSink, match: str) -> float:
    """Open the pool expecting ``PoolInitError``; returns how long the open took."""
    started = time.perf_counter()

    async def open_it() -> None:
        async with open_pool(settings, log_sink=sink):
            raise AssertionError("the pool should not open")

    with pytest.raises(PoolInitError, match=match):
        await open_it()
    return time.perf_counter() - started


async def test_nonexistent_bin_path(package_dir: Path, sink: CollectingSink) -> None:
    settings = PoolSettings(package_dir=package_dir, bin_path=package_dir / "missing-executor")
    with trio.fail_after(TEST_BOUND_SEC):
        await expect_init_error(settings, sink, "cannot spawn")


async def test_exit_before_ready(package_dir: Path, sink: CollectingSink, tmp_path: Path) -> None:
    script = executor_script(tmp_path, "exits.py", "sys.exit(7)\n")
    settings = PoolSettings(package_dir=package_dir, bin_path=script)
    with trio.fail_after(TEST_BOUND_SEC):
        await expect_init_error(settings, sink, r"exited before ready \(exit_status = 7\)")


async def test_silent_executor_times_out_and_is_killed(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    script = executor_script(
        tmp_path,
        "silent.py",
        "open(OPTS['package_dir'] + '/silent.pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n",
    )
    settings = PoolSettings(package_dir=package_dir, bin_path=script, ready_timeout_sec=1.0)
    with trio.fail_after(TEST_BOUND_SEC):
        took = await expect_init_error(settings, sink, "not ready within")
    assert 1.0 <= took <= 1.0 + 5.0
    pid = int((package_dir / "silent.pid").read_text())
    assert not group_alive(pid)


async def test_wrong_protocol_version_is_rejected(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    script = executor_script(
        tmp_path, "v2.py", 'send({"t": "ready", "v": 2, "pid": os.getpid()})\ntime.sleep(60)\n'
    )
    settings = PoolSettings(package_dir=package_dir, bin_path=script)
    with trio.fail_after(TEST_BOUND_SEC):
        await expect_init_error(settings, sink, "version 2")


async def test_timeout_covers_the_request_write(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    script = executor_script(tmp_path, "deaf.py", READY + "time.sleep(60)\n")
    settings = PoolSettings(package_dir=package_dir, bin_path=script)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            old = pool.executor_pids[0]
            assert old is not None
            started = time.perf_counter()
            outcome = await pool.execute(request("echo", b"x" * (4 * 1024 * 1024), timeout_ms=300))
            elapsed = time.perf_counter() - started
            assert outcome == Timeout(300)
            assert 0.3 <= elapsed <= 0.3 + 0.5
            assert not group_alive(old)


CHANNEL_FAULTS = [
    (
        "closes.py",
        READY + "receive()\nos.close(OUT)\ntime.sleep(60)\n",
        "executor crashed (exit_status = unknown): closed its channel before replying",
    ),
    (
        "garbage.py",
        READY + "receive()\nsend_raw(struct.pack('>I', 3) + b'\\xc1\\xc1\\xc1')\ntime.sleep(60)\n",
        "executor crashed (exit_status = unknown): undecodable frame",
    ),
    (
        "oversized.py",
        READY + "receive()\nsend_raw(struct.pack('>I', 2**32 - 1))\ntime.sleep(60)\n",
        "executor crashed (exit_status = unknown): frame header claims 4294967295 bytes",
    ),
    (
        "wrong_id.py",
        READY
        + "receive()\nsend({'t': 'result', 'id': 99, 'ok': True, 'out': b'', 'us': 1})\n"
        + "time.sleep(60)\n",
        "executor crashed (exit_status = unknown): unexpected message 'result' with id 99",
    ),
    (
        "dies_mid_frame.py",
        READY + "receive()\nsend_raw(struct.pack('>I', 100) + b'abc')\nos._exit(6)\n",
        "executor crashed (exit_status = 6): EOF inside a frame",
    ),
]


@pytest.mark.parametrize(("name", "body", "message"), CHANNEL_FAULTS)
async def test_channel_faults_are_crashes(
    package_dir: Path, sink: CollectingSink, tmp_path: Path, name: str, body: str, message: str
) -> None:
    script = executor_script(tmp_path, name, body)
    settings = PoolSettings(package_dir=package_dir)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(
            settings, log_sink=sink, bin_path_for=lambda eid: script if eid == 0 else None
        ) as pool:
            old = pool.executor_pids[0]
            assert old is not None
            outcome = await pool.execute(request("fibonacci", 7))
            assert isinstance(outcome, ExecutorCrash), outcome
            assert failure_message(outcome).startswith(message)
            assert not group_alive(old)
            assert pool.executor_ids == [1]
            after = await pool.execute(request("fibonacci", 7))
            assert isinstance(after, Success)


async def test_failed_request_write_is_a_crash(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    # the request pipe is closed before ready, so the very first write fails
    script = executor_script(tmp_path, "no_input.py", "os.close(IN)\n" + READY + "time.sleep(60)\n")
    settings = PoolSettings(package_dir=package_dir)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(
            settings, log_sink=sink, bin_path_for=lambda eid: script if eid == 0 else None
        ) as pool:
            outcome = await pool.execute(request("fibonacci", 7))
            assert isinstance(outcome, ExecutorCrash), outcome
            assert "request write failed" in outcome.detail
            assert isinstance(await pool.execute(request("fibonacci", 7)), Success)


async def test_result_received_before_the_deadline_is_acted_on_wins(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    flag = tmp_path / "replying"
    script = executor_script(
        tmp_path,
        "late_reader.py",
        READY
        + "request = receive()\n"
        + f"open({str(flag)!r}, 'w').close()\n"
        + "time.sleep(0.05)\n"
        + "send({'t': 'result', 'id': request['id'], 'ok': True, 'out': b'\\0\\0\\0\\0',"
        + " 'us': 1})\n"
        + "time.sleep(60)\n",
    )
    settings = PoolSettings(package_dir=package_dir)
    outcomes: list[object] = []
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(
            settings, log_sink=sink, bin_path_for=lambda eid: script if eid == 0 else None
        ) as pool:
            pid = pool.executor_pids[0]
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    outcomes.append(await pool.execute(request("noop", timeout_ms=300)))

                nursery.start_soon(run)
                # polling a file the test executor writes: no event exists for it
                while not flag.exists():  # noqa: ASYNC110
                    await trio.sleep(0.001)
                # block the event loop past the deadline while the reply lands in the pipe
                time.sleep(max(0.0, started + 0.3 + 0.2 - time.perf_counter()))  # noqa: ASYNC251
            assert outcomes == [Success(b"\0\0\0\0", 1)]
            assert pool.executor_pids[0] == pid
