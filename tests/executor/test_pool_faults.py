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
from worker.executor import pool as pool_module
from worker.executor.channel import HEADER, encode_message
from worker.executor.pool import open_pool, result_beats_timer
from worker.executor.processes import RECEIVE_CHUNK
from worker.executor.settings import PoolSettings
from worker.model import ExecutorCrash, InTaskFailure, Success, Timeout

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
            started = time.perf_counter()
            outcome = await pool.execute(request("fibonacci", 7, timeout_ms=1000))
            # executor.md §10 item 3: hard timeout + kill grace + ready timeout + 1 s
            assert time.perf_counter() - started <= 1.0 + settings.ready_timeout_sec + 1.0
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


async def test_result_in_the_pipe_when_the_deadline_fires_wins(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    # The reply is larger than one read of the pool, so reading it takes a second receive; the
    # deadline has passed by then, so only the pool's explicit "result beats timer" check (which
    # reads what is already in the pipe) can return it. The enlarged pipe holds the whole reply,
    # and the executor writes it only while the test blocks the event loop past the deadline.
    received, go, sent = tmp_path / "received", tmp_path / "go", tmp_path / "sent"
    out_size = RECEIVE_CHUNK + 64 * 1024
    script = executor_script(
        tmp_path,
        "big_late_reply.py",
        "import fcntl\n"
        + "fcntl.fcntl(OUT, fcntl.F_SETPIPE_SZ, 1024 * 1024)\n"
        + READY
        + "request = receive()\n"
        + f"open({str(received)!r}, 'w').close()\n"
        + f"while not os.path.exists({str(go)!r}):\n"
        + "    time.sleep(0.001)\n"
        + f"send({{'t': 'result', 'id': request['id'], 'ok': True, 'out': b'x' * {out_size},"
        + " 'us': 1})\n"
        + f"open({str(sent)!r}, 'w').close()\n"
        + "time.sleep(60)\n",
    )
    settings = PoolSettings(package_dir=package_dir)
    outcomes: list[object] = []
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(
            settings, log_sink=sink, bin_path_for=lambda eid: script if eid == 0 else None
        ) as pool:
            pid = pool.executor_pids[0]
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    outcomes.append(await pool.execute(request("noop", timeout_ms=300)))

                started = time.perf_counter()
                nursery.start_soon(run)
                # polling files the test executor writes: no event exists for them
                while not received.exists():  # noqa: ASYNC110
                    await trio.sleep(0.001)
                # from here on the event loop is blocked: the reply lands, the deadline passes
                go.touch()
                while not sent.exists():
                    time.sleep(0.001)  # noqa: ASYNC251
                time.sleep(max(0.0, started + 0.3 + 0.2 - time.perf_counter()))  # noqa: ASYNC251
            assert outcomes == [Success(b"x" * out_size, 1)]
            assert pool.executor_pids[0] == pid


def test_result_beats_timer_decision() -> None:
    def body(message: dict[str, object]) -> bytes:
        return encode_message(message)[HEADER.size :]

    success = body({"t": "result", "id": 3, "ok": True, "out": b"\0\0\0\0", "us": 5})
    failure = body(
        {"t": "result", "id": 3, "ok": False, "type": "ValueError", "msg": "m", "tb": "", "us": 2}
    )
    assert result_beats_timer([success], 3) == Success(b"\0\0\0\0", 5)
    assert result_beats_timer([failure], 3) == InTaskFailure("ValueError", "m", "", 2)
    # nothing complete arrived, or not this request's result: the deadline wins
    assert result_beats_timer([], 3) is None
    assert result_beats_timer([success], 4) is None
    assert result_beats_timer([b"\xc1"], 3) is None
    assert result_beats_timer([body({"t": "ready", "v": 1, "pid": 1})], 3) is None


async def test_tags_of_an_executor_without_markers_do_not_pile_up(
    package_dir: Path, sink: CollectingSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "_MAX_PENDING_TAGS", 4)
    script = executor_script(
        tmp_path,
        "no_markers.py",
        READY
        + "while (request := receive()) is not None and request['t'] == 'exec':\n"
        + "    send({'t': 'result', 'id': request['id'], 'ok': True, 'out': b'\\0\\0\\0\\0',"
        + " 'us': 1})\n",
    )
    settings = PoolSettings(package_dir=package_dir, bin_path=script)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            for _ in range(10):
                assert isinstance(await pool.execute(request("noop")), Success)
            process = pool._slots[0].process
            assert process is not None
            assert sorted(process.tags) == [6, 7, 8, 9]


async def test_a_result_sent_just_before_the_executor_exits_is_kept(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    # the exit and the result arrive together: whichever the pool notices first, the complete
    # result wins, and the dead executor is replaced before the next request
    script = executor_script(
        tmp_path,
        "reply_then_exit.py",
        READY
        + "request = receive()\n"
        + "send({'t': 'result', 'id': request['id'], 'ok': True, 'out': b'\\0\\0\\0\\0',"
        + " 'us': 1})\n"
        + "os._exit(0)\n",
    )
    settings = PoolSettings(package_dir=package_dir)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(
            settings, log_sink=sink, bin_path_for=lambda eid: script if eid % 2 == 0 else None
        ) as pool:
            for round_ in range(3):
                assert await pool.execute(request("noop")) == Success(b"\0\0\0\0", 1)
                process = pool._slots[0].process
                assert process is not None
                # polling: the pool's exit watcher reaps it; no event is exposed for that
                while process.process.returncode is None:  # noqa: ASYNC110
                    await trio.sleep(0.005)
                assert isinstance(await pool.execute(request("fibonacci", 7)), Success)
                assert pool.executor_ids == [2 * round_ + 1]
                assert isinstance(await pool.execute(request("exit_hard", 1)), ExecutorCrash)
