"""The executor pool against real subprocesses on the real clock (scenarios.md §4, P1-P13).

Every test is bounded by ``trio.fail_after``; spec deadlines are asserted with the spec's slack.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.executor.conftest import (
    TEST_BOUND_SEC,
    CollectingSink,
    executor_script,
    group_alive,
    request,
    wait_groups_gone,
)
from worker.core.decisions import failure_message
from worker.errors import PoolBroken, PoolClosed
from worker.executor.pool import ExecutorPool, open_pool
from worker.executor.processes import WORKER_SET_ENV, become_subreaper
from worker.executor.settings import PoolSettings
from worker.executor.wire import decode_values, encode_frame, encode_graph_outputs
from worker.logging_setup import utc_timestamp
from worker.model import ExecutorCrash, InTaskFailure, Outcome, Success, TaskId, Timeout
from worker.taskio import encode_graph_output_values

pytestmark = pytest.mark.pool


def values(outcome: Outcome) -> list[object]:
    """The decoded outputs of a success."""
    assert isinstance(outcome, Success), outcome
    return decode_values(outcome.outputs)


async def run_pid(pool: ExecutorPool) -> int:
    """The PID of the executor that runs the next task."""
    (pid,) = values(await pool.execute(request("pid")))
    assert isinstance(pid, int)
    return pid


async def test_p1_success_bytes_and_elapsed(settings: PoolSettings, sink: CollectingSink) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            started = time.perf_counter()
            outcome = await pool.execute(request("fibonacci", 10))
            wall_us = (time.perf_counter() - started) * 1e6
            assert isinstance(outcome, Success)
            assert outcome.outputs == bytes.fromhex("01 00 00 00 01 00 00 00 37")
            assert 0 <= outcome.elapsed_us <= wall_us


async def test_p2_in_task_failure_keeps_the_process(
    settings: PoolSettings, sink: CollectingSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.executor")
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            before = await run_pid(pool)
            outcome = await pool.execute(request("always_fail", instance=21))
            assert isinstance(outcome, InTaskFailure)
            assert (outcome.type, outcome.message) == (
                "RuntimeError",
                "always_fail: intentional failure",
            )
            assert "Traceback" in outcome.traceback
            assert failure_message(outcome) == (
                "in-task failure: RuntimeError: always_fail: intentional failure"
            )
            assert await run_pid(pool) == before
            assert values(await pool.execute(request("fibonacci", 7))) == [13]
    logged = [r for r in caplog.records if "always_fail" in r.getMessage()]
    assert logged, "the traceback reaches the worker's own log"
    record = logged[0]
    assert "Traceback" in record.getMessage()
    fields = record.__dict__["fields"]
    assert fields["job_id"] == 7
    assert fields["task_instance_id"] == 21
    assert fields["task_id"] == "Index(0)"
    assert fields["executor_id"] == 0


@pytest.mark.parametrize(
    ("func", "arg", "expected"),
    [
        ("kill_self", int(signal.SIGKILL), ExecutorCrash(signal=9)),
        ("exit_hard", 3, ExecutorCrash(exit_code=3)),
    ],
)
async def test_p3_self_kill_is_a_crash(
    settings: PoolSettings, sink: CollectingSink, func: str, arg: int, expected: ExecutorCrash
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            before_pid = await run_pid(pool)
            assert pool.executor_ids == [0]
            outcome = await pool.execute(request(func, arg))
            assert outcome == expected
            assert pool.executor_ids == [1]
            assert await run_pid(pool) != before_pid
            assert values(await pool.execute(request("fibonacci", 7))) == [13]
            await wait_pool_groups_except_current(pool)
    if expected.signal is not None:
        assert failure_message(outcome) == "executor crashed (exit_status = signal 9 (SIGKILL))"
    else:
        assert failure_message(outcome) == "executor crashed (exit_status = 3)"


async def wait_pool_groups_except_current(pool: ExecutorPool) -> None:
    """Fail unless every group the pool created, except the live executors', is gone within 1 s."""
    live = {pid for pid in pool.executor_pids if pid is not None}
    await wait_groups_gone([g for g in pool.process_groups if g not in live], within=1.0)


async def test_p4_hard_timeout_kills_the_group(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            old_pid = await run_pid(pool)
            started = time.perf_counter()
            outcome = await pool.execute(request("spin_with_child", timeout_ms=200))
            elapsed = time.perf_counter() - started
            assert outcome == Timeout(200)
            assert failure_message(outcome) == "hard timeout (200 ms) exceeded"
            assert 0.2 <= elapsed <= 0.7, elapsed
            await wait_groups_gone([old_pid], within=1.0)
            new_pid = pool.executor_pids[0]
            assert new_pid is not None
            assert new_pid != old_pid
            assert await run_pid(pool) == new_pid
            assert values(await pool.execute(request("fibonacci", 7))) == [13]


@pytest.mark.parametrize(
    ("func", "min_elapsed", "max_elapsed"),
    [
        # spin() does not handle SIGTERM, so it dies at once, well before the grace ends
        ("spin", 0.2, 0.2 + 0.3 + 0.5),
        # only the SIGKILL after the whole grace stops this one
        ("spin_ignoring_sigterm", 0.2 + 0.3, 0.2 + 0.3 + 0.7),
    ],
)
async def test_hard_timeout_with_kill_grace(
    package_dir: Path, sink: CollectingSink, func: str, min_elapsed: float, max_elapsed: float
) -> None:
    settings = PoolSettings(package_dir=package_dir, kill_grace_ms=300)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            old_pid = await run_pid(pool)
            started = time.perf_counter()
            outcome = await pool.execute(request(func, timeout_ms=200))
            elapsed = time.perf_counter() - started
            assert outcome == Timeout(200)
            assert min_elapsed <= elapsed <= max_elapsed
            await wait_groups_gone([old_pid], within=1.0)
            assert values(await pool.execute(request("fibonacci", 7))) == [13]


P5_CASES = [
    (request("fibonacci", 1, package="no_such_module"), "PackageImportError"),
    (request("no_such_function"), "TaskNotFound"),
    (request("NOT_CALLABLE"), "TaskNotCallable"),
    (request("ready", package="broken_import"), "PackageImportError"),
    (request("fibonacci", io=bytes.fromhex("01 00 00 00 05 00 00 00 0a")), "InputDecodeError"),
    (request("fibonacci", io=encode_frame([b"\xc1"])), "InputDecodeError"),
    (request("fibonacci", io=b""), "InputDecodeError"),
    (request("fibonacci", 1, 2), "TypeError"),
    (request("unencodable"), "OutputEncodeError"),
    (request("too_big_int"), "OutputEncodeError"),
    (request("exit_soft", 3), "SystemExit"),
    (request("coroutine_task"), "UnsupportedTask"),
    (request("generator_task"), "UnsupportedTask"),
]


async def test_p5_resolution_and_input_errors_are_failures(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            pid = await run_pid(pool)
            for req, expected_type in P5_CASES:
                outcome = await pool.execute(req)
                assert isinstance(outcome, InTaskFailure), (req, outcome)
                assert outcome.type == expected_type, (req, outcome)
                assert "Traceback" not in outcome.message
                assert await run_pid(pool) == pid, req
            unknown = await pool.execute(request("x", package="no_such_module"))
            assert failure_message(unknown) == (  # type: ignore[arg-type]
                "in-task failure: PackageImportError: ModuleNotFoundError: "
                "No module named 'no_such_module'"
            )
            exit3 = await pool.execute(request("exit_soft", 3))
            assert failure_message(exit3) == "in-task failure: SystemExit: 3"  # type: ignore[arg-type]


async def test_return_encoding_through_the_pool(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    cases: list[tuple[object, str]] = [
        (None, "00 00 00 00"),
        ((), "00 00 00 00"),
        ((10, "hi"), "02 00 00 00 01 00 00 00 0a 03 00 00 00 a2 68 69"),
        ([1, 2], "01 00 00 00 03 00 00 00 92 01 02"),
        ((None,), "01 00 00 00 01 00 00 00 c0"),
        (b"ab", "01 00 00 00 04 00 00 00 c4 02 61 62"),
    ]
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            for value, hex_frame in cases:
                if isinstance(value, tuple):
                    outcome = await pool.execute(request("as_tuple", *value))
                else:
                    outcome = await pool.execute(request("ret", value))
                assert isinstance(outcome, Success)
                assert outcome.outputs == bytes.fromhex(hex_frame), value
            nested = {"a": [1, {"b": b"\x00\xff"}], 5: None}
            assert values(await pool.execute(request("ret", nested))) == [nested]
            pair = await pool.execute(request("pair"))
            assert isinstance(pair, Success)
            assert pair.outputs == bytes.fromhex("02 00 00 00 01 00 00 00 0a 03 00 00 00 a2 68 69")
            assert values(await pool.execute(request("echo", "a", 2, [3]))) == ["a", 2, [3]]
            assert values(await pool.execute(request("noop"))) == []


async def test_import_caching_and_retry(
    settings: PoolSettings, sink: CollectingSink, package_dir: Path
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            assert values(await pool.execute(request("count_call"))) == [1]
            assert values(await pool.execute(request("count_call"))) == [2]
            failed = await pool.execute(request("ready", package="flaky_import"))
            assert isinstance(failed, InTaskFailure)
            assert failed.type == "PackageImportError"
            (package_dir / "flaky.ok").touch()
            assert values(await pool.execute(request("ready", package="flaky_import"))) == ["ok"]
            await pool.execute(request("exit_hard", 1))  # respawn: imports happen again
            assert values(await pool.execute(request("count_call"))) == [1]


async def test_p6_log_capture(package_dir: Path, sink: CollectingSink) -> None:
    settings = PoolSettings(package_dir=package_dir, max_log_line_bytes=8)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            started = time.time()
            outcome = await pool.execute(
                request("emit", b"short\n" + b"x" * 100 + b"\nnext\n", instance=31)
            )
            assert isinstance(outcome, Success)
            await sink.wait_for("next")
            first = [line for line in sink.lines if line.text in ("short", "next")]
            assert [line.text for line in first] == ["short", "next"]
            for line in first:
                # Stamped when the worker read it: inside this test's window, on the wall clock.
                assert started <= line.read_at <= time.time()
                record = line.as_record()
                assert record["ts"] == utc_timestamp(line.read_at)
                assert (record["job_id"], record["task_instance_id"]) == (7, 31)
                assert line.tag is not None
                assert (line.tag.job_id, line.tag.task_id, line.tag.task_instance_id) == (
                    7,
                    "Index(0)",
                    31,
                )
                assert line.executor_id == 0
            assert not any("x" * 9 in text for text in sink.texts())

            await pool.execute(request("emit", b"caf\xe9\nok\r\n", instance=32))
            await sink.wait_for("ok")
            assert "caf\ufffd" in sink.texts()

            await pool.execute(request("shout", "hi", instance=33))
            hi = await sink.wait_for("hi")
            assert hi.tag is not None
            assert hi.tag.task_instance_id == 33
            await pool.execute(request("write_fd1", b"fd-one\n", instance=34))
            assert (await sink.wait_for("fd-one")).tag is not None
            assert values(await pool.execute(request("fibonacci", 7))) == [13]

            await pool.execute(request("partial_line", "partial", instance=35))
            partial = await sink.wait_for("partial")
            assert partial.tag is not None
            assert partial.tag.task_instance_id == 35

            await pool.execute(request("later_line", "idle", 0.05))
            idle = await sink.wait_for("idle")
            assert idle.tag is None
            assert idle.executor_id == 0
            await pool.execute(request("emit", b"unterm"))
            await pool.execute(request("emit", b"\n"))
            await sink.wait_for("unterm")
        texts = sink.texts()
        assert texts.count("short") == 1
        assert texts.count("next") == 1
        assert not any(text.startswith("\x1e") for text in texts), "markers are never forwarded"


async def test_p6_overlong_line_warns_once_with_cap(
    package_dir: Path, sink: CollectingSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.executor")
    settings = PoolSettings(package_dir=package_dir, max_log_line_bytes=8)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            await pool.execute(request("emit", b"short\n" + b"x" * 100 + b"\nnext\n"))
            await sink.wait_for("next")
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1
    assert drops[0].__dict__["fields"]["cap"] == 8
    assert drops[0].__dict__["fields"]["dropped_bytes"] == 100
    assert drops[0].__dict__["fields"]["executor_id"] == 0
    assert drops[0].__dict__["fields"]["job_id"] == 7
    assert "100-byte" in drops[0].getMessage()


async def test_backpressure_loses_nothing(package_dir: Path, sink: CollectingSink) -> None:
    settings = PoolSettings(package_dir=package_dir, log_queue_lines=2)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            assert values(await pool.execute(request("chatty", 3000, 100))) == [3000]
            await sink.wait_for(f"{2999:08d} " + "y" * 100)
    numbered = [int(t[:8]) for t in sink.texts() if t.endswith("y" * 100)]
    assert numbered == list(range(3000))


async def test_p7_environment_allow_list(
    package_dir: Path,
    sink: CollectingSink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FOO", "1")
    monkeypatch.setenv("SPIDER_RESOURCE_GROUP_PASSWORD", "s3cret")
    monkeypatch.delenv("MISSING", raising=False)
    caplog.set_level(logging.WARNING, logger="worker.executor")
    settings = PoolSettings(package_dir=package_dir, inherited_env=("FOO", "MISSING"))
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            (names,) = values(await pool.execute(request("env")))
    assert names == sorted({"FOO", *WORKER_SET_ENV})
    assert "PATH" not in names
    missing = [r for r in caplog.records if "MISSING" in r.getMessage()]
    assert len(missing) == 1


async def test_environment_values_copied_as_bytes(
    package_dir: Path, sink: CollectingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environb, b"RAW_BYTES", b"caf\xe9")
    settings = PoolSettings(package_dir=package_dir, inherited_env=("RAW_BYTES",))
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            outcome = await pool.execute(request("ret", None))
            assert isinstance(outcome, Success)
            (value,) = values(await pool.execute(request("ret", 1)))
            assert value == 1
            # the value reaches the executor byte for byte (read back via surrogateescape)
            check = await pool.execute(request("env"))
            assert "RAW_BYTES" in values(check)[0]  # type: ignore[operator]


async def test_p8_commit_and_cleanup_routing(settings: PoolSettings, sink: CollectingSink) -> None:
    commit, cleanup = TaskId.commit(), TaskId.cleanup()
    big = [100000, -100000] * 200
    big_buffer = encode_graph_output_values(big)
    assert big_buffer[0] == 1
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:

            async def commit_run(buffer: bytes) -> Outcome:
                return await pool.execute(
                    request("assert_outputs_sum_zero", task_id=commit, io=buffer)
                )

            assert values(await commit_run(encode_graph_output_values([3, -1, -2]))) == []
            assert values(await commit_run(big_buffer)) == []
            not_zero = await commit_run(encode_graph_output_values([1, 2, 3]))
            assert isinstance(not_zero, InTaskFailure)
            assert "sum to zero" in not_zero.message
            empty = await commit_run(encode_graph_output_values([]))
            assert isinstance(empty, InTaskFailure)
            assert "empty" in empty.message
            as_index = await pool.execute(request("assert_outputs_sum_zero"))
            assert isinstance(as_index, InTaskFailure)
            assert "commit task" in as_index.message
            bad_option = await commit_run(b"\x07abc")
            assert isinstance(bad_option, InTaskFailure)
            assert bad_option.type == "GraphOutputsDecodeError"
            no_buffer = await commit_run(b"")
            assert isinstance(no_buffer, InTaskFailure)
            assert no_buffer.type == "GraphOutputsDecodeError"
            raw = await pool.execute(
                request("raw_outputs", task_id=commit, io=encode_graph_outputs([b"\x01"]))
            )
            assert values(raw) == [[b"\x01"]]
            clean = await pool.execute(request("noop", task_id=cleanup, io=b""))
            assert isinstance(clean, Success)
            assert clean.outputs == b"\x00\x00\x00\x00"


async def test_p9_idle_death_is_not_charged(
    settings: PoolSettings, sink: CollectingSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.executor")
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            pid = await run_pid(pool)
            os.killpg(pid, signal.SIGKILL)
            # polling: we must not reap the process the pool is supervising
            while pool._slots[0].process.process.poll() is None:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert values(await pool.execute(request("fibonacci", 7))) == [13]
            assert pool.executor_ids == [1]
    warnings = [r for r in caplog.records if "died while idle" in r.getMessage()]
    assert len(warnings) == 1
    assert "signal 9 (SIGKILL)" in warnings[0].getMessage()


@pytest.mark.parametrize("limit", [2, 4])  # 2: scenarios.md P10; 4: docs/tasks.md "Time bounds"
async def test_p10_failed_respawn_keeps_the_outcome(
    package_dir: Path, sink: CollectingSink, tmp_path: Path, limit: int
) -> None:
    # the crash is reported although its respawn failed; the next call retries the start (with
    # backoff) until crash_loop_limit consecutive starts failed
    dies = executor_script(tmp_path, "dies.py", "sys.exit(5)\n")
    settings = PoolSettings(
        package_dir=package_dir,
        crash_loop_limit=limit,
        respawn_backoff_initial_ms=50,
        respawn_backoff_max_ms=200,
    )
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(
            settings, log_sink=sink, bin_path_for=lambda eid: None if eid == 0 else dies
        ) as pool:
            crash = await pool.execute(request("kill_self", int(signal.SIGKILL)))
            assert crash == ExecutorCrash(signal=9)
            assert len(pool.process_groups) == 2  # executor 0, then one failed respawn
            started = time.perf_counter()
            with pytest.raises(PoolBroken, match=f"{limit} times in a row"):
                await pool.execute(request("fibonacci", 7))
            # backed off before each retry (50 ms doubling up to 200 ms), less at most 20 % jitter
            backoffs = sum(min(0.05 * 2**k, 0.2) for k in range(limit - 1))
            assert time.perf_counter() - started >= backoffs * (1 - 0.2)
            assert len(pool.process_groups) == 1 + limit  # this one call tried limit - 1 starts
            with pytest.raises(PoolBroken):
                await pool.execute(request("fibonacci", 7))
            groups = pool.process_groups
            assert len(groups) == 1 + limit  # broken: no more starts
        await wait_groups_gone(groups, within=1.0)


async def test_p11_cancellation_kills_the_group(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            old_pid = await run_pid(pool)
            with trio.move_on_after(0.1) as scope:
                await pool.execute(request("spin_with_child", timeout_ms=60000))
            cancelled_at = time.perf_counter()
            assert scope.cancelled_caught
            await wait_groups_gone([old_pid], within=1.0)
            assert time.perf_counter() - cancelled_at <= 1.0 + 0.5
            assert pool.executor_pids[0] not in (None, old_pid)
            assert values(await pool.execute(request("fibonacci", 7))) == [13]


async def test_p12_context(settings: PoolSettings, sink: CollectingSink) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            info = values(
                await pool.execute(request("ctx_info", job_id=70, instance=71, resource_group=72))
            )
            assert info == [70, "index", 0, 71, 72, "worker_testtasks", "ctx_info"]
            info = values(await pool.execute(request("ctx_info", task_id=TaskId.cleanup(), io=b"")))
            assert info[1:3] == ["cleanup", None]


async def test_p13_close_leaves_nothing(settings: PoolSettings, sink: CollectingSink) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            await pool.execute(request("spin", timeout_ms=100))
            await pool.execute(request("exit_hard", 4))
            with trio.move_on_after(0.1):
                await pool.execute(request("spin"))
            await pool.execute(request("emit", b"before-close\n"))
            groups = pool.process_groups
        assert "before-close" in sink.texts()
        assert not any(group_alive(g) for g in groups)


async def test_p13_close_during_a_running_task(package_dir: Path, sink: CollectingSink) -> None:
    settings = PoolSettings(package_dir=package_dir, close_grace_ms=1000, log_drain_timeout_sec=5)
    outcomes: list[Outcome] = []
    with trio.fail_after(TEST_BOUND_SEC):
        async with trio.open_nursery() as nursery, open_pool(settings, log_sink=sink) as pool:

            async def run_spin() -> None:
                outcomes.append(await pool.execute(request("spin_with_child", timeout_ms=60000)))

            await pool.execute(request("emit", b"line-before\n"))
            nursery.start_soon(run_spin)
            await sink.wait_for("forked")  # the task runs and its grandchild exists
            groups = pool.process_groups
            started = time.perf_counter()
            await pool.aclose()
            assert time.perf_counter() - started <= 1.0 + 5.0 + 1.0
        assert not any(group_alive(g) for g in groups)
        assert "line-before" in sink.texts()
        assert len(outcomes) == 1
        assert isinstance(outcomes[0], ExecutorCrash)
        with pytest.raises(PoolClosed):
            await pool.execute(request("noop"))


async def test_fifo_on_one_slot(settings: PoolSettings, sink: CollectingSink) -> None:
    order: list[int] = []
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool, trio.open_nursery() as nursery:

            async def call(n: int) -> None:
                outcome = await pool.execute(request("echo", n))
                assert values(outcome) == [n]
                order.append(n)

            async def hold() -> None:
                await pool.execute(request("sleep", 0.3))
                order.append(-1)

            # the slot is busy while the callers arrive, so they all queue for it; each one is
            # parked in the queue (every task blocked) before the next one starts
            nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(6):
                nursery.start_soon(call, n)
                await trio.testing.wait_all_tasks_blocked()
    assert order == [-1, *range(6)]


async def test_two_slots_run_concurrently(package_dir: Path, sink: CollectingSink) -> None:
    settings = PoolSettings(package_dir=package_dir, slots=2)
    pids: list[int] = []
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            assert pool.executor_ids == [0, 1]
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    await pool.execute(request("sleep", 0.5))
                    pids.append(await run_pid(pool))

                nursery.start_soon(call)
                nursery.start_soon(call)
            assert time.perf_counter() - started < 2 * 0.5 + 0.4
    assert len(pids) == 2


async def test_frame_limits(package_dir: Path, sink: CollectingSink) -> None:
    limit = 100_000
    settings = PoolSettings(
        package_dir=package_dir,
        output_limit_bytes=limit,
        max_frame_bytes=limit + 64 * 1024,
    )
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            pid = await run_pid(pool)
            too_big = await pool.execute(request("ret", b"x" * (limit + 64 * 1024)))
            assert isinstance(too_big, InTaskFailure)
            assert too_big.type == "FrameTooLarge"
            assert await run_pid(pool) == pid
            output = await pool.execute(request("big_output", limit))
            assert isinstance(output, InTaskFailure)
            size = len(encode_frame([b"\xc6" + limit.to_bytes(4, "big") + b"x" * limit]))
            assert failure_message(output) == (
                f"in-task failure: OutputTooLarge: outputs too large ({size} bytes > {limit})"
            )
            assert await run_pid(pool) == pid
            fits = await pool.execute(request("big_output", limit - 100))
            assert isinstance(fits, Success)


async def test_executor_ids_count_every_spawn(settings: PoolSettings, sink: CollectingSink) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            for k in range(1, 4):
                await pool.execute(request("exit_hard", 1))
                assert pool.executor_ids == [k]


async def test_failing_sink_breaks_the_pool(settings: PoolSettings) -> None:
    def broken_sink(line: object) -> None:
        raise OSError("disk full")

    async def use_pool() -> None:
        async with open_pool(settings, log_sink=broken_sink) as pool:
            await pool.execute(request("shout", "boom"))
            await trio.sleep(5)

    with trio.fail_after(TEST_BOUND_SEC), pytest.raises(PoolBroken, match="sink"):
        await use_pool()


async def test_log_drain_on_close_is_bounded(
    package_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.executor")
    written: list[str] = []

    def slow_sink(line: object) -> None:
        time.sleep(0.005)  # runs in the writer's thread, never on the event loop
        written.append(str(line))

    settings = PoolSettings(package_dir=package_dir, log_drain_timeout_sec=0.3)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=slow_sink) as pool:
            assert values(await pool.execute(request("chatty", 600, 10))) == [600]
            closing = time.perf_counter()
        took = time.perf_counter() - closing
    assert took <= 0.3 + 1.0 + 1.0
    assert len(written) < 600
    [warning] = [r for r in caplog.records if "not drained" in r.getMessage()]
    assert warning.__dict__["fields"]["queued_lines"] > 0


async def test_every_line_before_close_is_drained(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            assert values(await pool.execute(request("chatty", 2000, 10))) == [2000]
    numbered = [int(t[:8]) for t in sink.texts() if t.endswith("y" * 10)]
    assert numbered == list(range(2000))


async def test_long_failure_messages_are_cut_to_fit(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            pid = await run_pid(pool)
            outcome = await pool.execute(request("fail_with", 100_000))
            assert isinstance(outcome, InTaskFailure)
            assert outcome.type == "ValueError"
            assert outcome.message.endswith(" [truncated]")
            assert len(outcome.message.encode()) <= 65536
            # larger than the 8 MiB frame limit: the message and the traceback are both cut
            huge = await pool.execute(request("fail_with", 5 * 1024 * 1024))
            assert isinstance(huge, InTaskFailure)
            assert len(huge.traceback.encode()) < settings.max_frame_bytes
            assert await run_pid(pool) == pid


def test_settings_validation(package_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        PoolSettings(package_dir=package_dir, max_frame_bytes=4 * 1024 * 1024)
    with pytest.raises(ValueError, match="max_log_line_bytes"):
        PoolSettings(package_dir=package_dir, max_log_line_bytes=0)
    with pytest.raises(ValueError, match="respawn_backoff_max_ms"):
        PoolSettings(
            package_dir=package_dir, respawn_backoff_initial_ms=10, respawn_backoff_max_ms=5
        )
    settings = PoolSettings(package_dir=str(package_dir), inherited_env=["A", "B"])
    assert settings.package_dir == package_dir
    assert settings.inherited_env == ("A", "B")


async def test_crash_kills_and_reaps_the_grandchild(
    settings: PoolSettings, sink: CollectingSink
) -> None:
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            old_pid = await run_pid(pool)
            started = time.perf_counter()
            # the grandchild keeps the channel open: only the exit itself reveals the crash
            outcome = await pool.execute(request("exit_with_child", 3, timeout_ms=600_000))
            assert outcome == ExecutorCrash(exit_code=3)
            assert time.perf_counter() - started <= settings.ready_timeout_sec + 1.0
            # the grandchild outlived its parent; the pool killed the group and reaped it
            assert not group_alive(old_pid)
            assert values(await pool.execute(request("fibonacci", 7))) == [13]
            groups = pool.process_groups
        assert not any(group_alive(g) for g in groups)


def test_the_worker_becomes_a_subreaper_once() -> None:
    import ctypes

    assert become_subreaper() is True
    assert become_subreaper() is True  # cached: the prctl runs once per process
    assert become_subreaper.cache_info().misses == 1
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    assert libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
    assert flag.value == 1


async def test_task_modules_cannot_shadow_the_executors_own_imports(
    settings: PoolSettings, sink: CollectingSink, package_dir: Path
) -> None:
    # modules the executor (or zstandard) imports only on first use, shadowed by the package
    for name in ("traceback", "linecache", "zstandard", "platform"):
        (package_dir / f"{name}.py").write_text(f"raise ImportError('shadowed {name}')\n")
    commit = TaskId.commit()
    big = encode_graph_output_values([100000, -100000] * 200)
    assert big[0] == 1  # zstd
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            failed = await pool.execute(request("always_fail"))
            assert isinstance(failed, InTaskFailure)
            assert "Traceback (most recent call last)" in failed.traceback
            summed = await pool.execute(request("assert_outputs_sum_zero", task_id=commit, io=big))
            assert values(summed) == []


def test_worker_set_environment_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "tasks.md").read_text(encoding="utf-8")
    for name in WORKER_SET_ENV:
        assert f"| `{name}` |" in docs, name
