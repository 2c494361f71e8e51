"""``python -m worker -c FILE`` end to end against scripted loopback servers (real clock).

The worker runs as a subprocess with the real runtime, the real executor pool and the real gRPC
transport; storage and the scheduler are scripted in-test servers that record every request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import yaml

from tests.transport.scripted import ScriptedServer, closed_port, scripted_server
from worker.transport._generated.common import common_pb2
from worker.transport._generated.scheduler import scheduler_pb2
from worker.transport._generated.storage import storage_pb2
from worker.transport.convert import record_from_proto

pytestmark = [pytest.mark.pool, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCHEDULER = "/scheduler.SchedulerService/"
TASKS = "/storage.TaskInstanceManagementService/"
LIVENESS = "/storage.ExecutionManagerLivenessService/"

TASK_MODULE = """\
import pathlib
import time

HERE = pathlib.Path(__file__).parent


def one_second():
    (HERE / "started").write_text("yes")
    time.sleep(1.0)
    return 7


def forever():
    (HERE / "started").write_text("yes")
    time.sleep(600)


def chatty():
    print("a line for the executor-log sink", flush=True)
    time.sleep(600)
"""

# An executor command that leaves a mark when it is started (to prove none was).
MARKING_EXECUTOR = """\
#!/bin/sh
touch "$(dirname "$0")/executor-started"
exec {python} -m worker.executor.child "$@"
"""


class FakeCluster:
    """Scripted storage + scheduler: one assignment of ``task_func``, then ``no_task`` polls.

    Without a ``task_func`` the cluster is idle: every poll answers ``no_task``.
    """

    def __init__(
        self, storage: ScriptedServer, scheduler: ScriptedServer, task_func: str | None = None
    ) -> None:
        self.storage = storage
        self.scheduler = scheduler
        self._first_poll = threading.Lock()
        self._assigned = task_func is None
        storage.reply(
            LIVENESS + "RegisterExecutionManager",
            storage_pb2.RegisterExecutionManagerResponse(
                registration=storage_pb2.ExecutionManagerRegistration(
                    execution_manager_id=11, session_id=1
                )
            ),
        )
        storage.reply(
            LIVENESS + "UpdateExecutionManagerHeartbeat",
            storage_pb2.UpdateExecutionManagerHeartbeatResponse(session_id=1),
        )
        storage.reply(
            TASKS + "RegisterTaskInstance",
            storage_pb2.RegisterTaskInstanceResponse(
                execution_context=storage_pb2.ExecutionContext(
                    task_instance_id=9,
                    tdl_context=storage_pb2.TdlContext(package="tasks", task_func=task_func or ""),
                    timeout_policy=storage_pb2.TimeoutPolicy(
                        soft_timeout_ms=100_000, hard_timeout_ms=300_000
                    ),
                    serialized_task_io=bytes(4),  # a frame of zero payloads: no arguments
                )
            ),
        )
        storage.reply(TASKS + "ReportTaskSuccess", b"")
        storage.reply(TASKS + "ReportTaskFailure", b"")
        scheduler.reply(SCHEDULER + "Heartbeat", b"")
        scheduler.reply(SCHEDULER + "Shutdown", b"")
        scheduler.on(SCHEDULER + "NextTask", self._next_task)

    def _next_task(self, request: bytes, context: Any) -> scheduler_pb2.NextTaskResponse:
        with self._first_poll:
            first, self._assigned = not self._assigned, True
        if first:
            return scheduler_pb2.NextTaskResponse(
                assignment=scheduler_pb2.SchedulerAssignment(
                    id=0,
                    resource_group_id=1,
                    job_id=5,
                    task_id=common_pb2.TaskId(index=0),
                    scheduler_id=3,
                    session_id=1,
                )
            )
        # Later polls: hold for the budget (or until the worker cancels), then no_task.
        ended = threading.Event()
        context.add_callback(ended.set)
        wait_ms = scheduler_pb2.NextTaskRequest.FromString(request).wait_time_ms
        ended.wait(wait_ms / 1000)
        return scheduler_pb2.NextTaskResponse(no_task=common_pb2.Void())

    def all_calls(self) -> list[str]:
        """Every method called on either server."""
        return [c.method for c in self.storage.calls()] + [c.method for c in self.scheduler.calls()]


@pytest.fixture
def servers() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    with scripted_server() as storage, scripted_server() as scheduler:
        yield storage, scheduler


def write_config(directory: Path, storage_port: int, scheduler_port: int, **extra: Any) -> Path:
    package_dir = directory / "package"
    package_dir.mkdir(exist_ok=True)
    (package_dir / "tasks.py").write_text(TASK_MODULE)
    document: dict[str, Any] = {
        "storage": {"host": "127.0.0.1", "port": storage_port},
        "scheduler": {"host": "127.0.0.1", "port": scheduler_port},
        "connection_pool_size": 1,
        "scheduler_poll_wait_ms": 200,
        "liveness": {
            "storage_heartbeat_interval_sec": 0.2,
            "scheduler_heartbeat_interval_sec": 0.2,
        },
        "task_executor": {"package_dir": str(package_dir)},
        "shutdown": {"drain_timeout_sec": 60, "rpc_budget_sec": 5},
        "grpc": {"rpc_timeout_sec": 5},
        "log": {"format": "json", "level": "debug"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key].update(value)
        else:
            document[key] = value
    path = directory / "worker.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class WorkerProcess:
    """A running ``python -m worker -c FILE`` whose stderr JSON lines are collected."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = trio.Event()

    async def collect(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                try:
                    self.lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    self.lines.append({"message": raw.decode(errors="replace"), "unparsed": True})
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], count: int = 1
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log lines satisfy ``predicate``; return them."""
        while True:
            found = [line for line in self.lines if predicate(line)]
            if len(found) >= count:
                return found
            await self._changed.wait()

    async def wait_for_state(self, state: str, count: int = 1) -> None:
        """Wait until the runtime logged ``count`` transitions into ``state``."""
        await self.wait_for_log(lambda line: line.get("to") == state, count)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@asynccontextmanager
async def running_worker(config: Path, output: Path) -> AsyncIterator[WorkerProcess]:
    with output.open("wb") as stdout:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "worker", "-c", str(config)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        worker = WorkerProcess(process)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.collect)
                yield worker
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env=env,
    )


def messages(worker: WorkerProcess) -> list[str]:
    return [str(line.get("message")) for line in worker.lines]


# --- Configuration errors -------------------------------------------------------------------


def make_marking_executor(directory: Path) -> Path:
    script = directory / "executor.sh"
    script.write_text(MARKING_EXECUTOR.format(python=sys.executable))
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            {"scheduler": {"port": "abc"}},
            "config error: scheduler.port: must be an integer in 1..65535, got 'abc'",
        ),
        ({"connection_pool_size": 0}, "config error: connection_pool_size: must be an integer > 0"),
        (
            {"task_executor": {"protocol": "spider"}},
            'config error: task_executor.protocol: "spider" compatibility mode',
        ),
    ],
)
def test_bad_config_is_one_line_exit_2_and_nothing_contacted(
    servers: tuple[ScriptedServer, ScriptedServer],
    tmp_path: Path,
    edit: dict[str, Any],
    expected: str,
) -> None:
    storage, scheduler = servers
    executor = make_marking_executor(tmp_path)
    edit = {**edit, "task_executor": {"bin_path": str(executor), **edit.get("task_executor", {})}}
    config = write_config(tmp_path, storage.port, scheduler.port, **edit)
    completed = run_cli("-c", str(config))
    assert completed.returncode == 2
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(expected)
    assert completed.stdout == ""
    assert storage.calls() == []
    assert scheduler.calls() == []
    assert not (tmp_path / "executor-started").exists()


def test_missing_config_file_and_bad_command_line(tmp_path: Path) -> None:
    missing = run_cli("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("config error: cannot read")
    assert len(missing.stderr.splitlines()) == 1
    no_file = run_cli("--config")
    assert no_file.returncode == 2


def test_unknown_key_is_a_warning_naming_it(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    # Storage refuses registration, so the worker stops right after booting (exit 1).
    storage.on(
        LIVENESS + "RegisterExecutionManager",
        lambda _request, context: context.abort(grpc.StatusCode.UNAVAILABLE, "down"),
    )
    config = write_config(tmp_path, storage.port, scheduler.port, schedulr={"port": 1})
    completed = run_cli("-c", str(config))
    assert completed.returncode == 1
    warnings = [
        json.loads(line) for line in completed.stderr.splitlines() if '"unknown config key' in line
    ]
    assert [w["key"] for w in warnings] == ["schedulr"]
    assert warnings[0]["level"] == "warning"
    assert [c.method for c in storage.calls()] == [LIVENESS + "RegisterExecutionManager"]
    assert scheduler.calls() == []


def test_environment_override_redirects_the_endpoints(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    storage.on(
        LIVENESS + "RegisterExecutionManager",
        lambda _request, context: context.abort(grpc.StatusCode.INTERNAL, "scripted"),
    )
    # The file names closed ports; the environment points at the scripted servers.
    config = write_config(tmp_path, 1, 1)
    env = {
        **os.environ,
        "WORKER_STORAGE_PORT": str(storage.port),
        "WORKER_SCHEDULER_PORT": str(scheduler.port),
    }
    completed = run_cli("-c", str(config), env=env)
    assert completed.returncode == 1
    assert [c.method for c in storage.calls()] == [LIVENESS + "RegisterExecutionManager"]


def test_unreachable_scheduler_is_exit_1_without_any_rpc(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, _ = servers
    with closed_port() as port:
        config = write_config(tmp_path, storage.port, port, grpc={"rpc_timeout_sec": 1})
        completed = run_cli("-c", str(config))
    assert completed.returncode == 1
    assert "cannot connect to scheduler" in completed.stderr
    assert storage.calls() == []


# --- Signals ---------------------------------------------------------------------------------


async def test_sigterm_drains_reports_and_says_goodbye(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "one_second")
    config = write_config(tmp_path, storage.port, scheduler.port)
    with trio.fail_after(120):
        async with running_worker(config, tmp_path / "stdout.log") as worker:
            await worker.wait_for_state("Executing")
            worker.signal(signal.SIGTERM)
        assert worker.process.returncode == 0, messages(worker)
    reports = storage.calls(TASKS + "ReportTaskSuccess")
    assert len(reports) == 1
    report = storage_pb2.ReportTaskSuccessRequest.FromString(reports[0].request)
    assert (report.job_id, report.task_instance_id, report.execution_manager_id) == (5, 9, 11)
    assert report.task_id.WhichOneof("kind") == "index"
    assert report.serialized_outputs == bytes.fromhex("01000000 01000000 07")
    shutdowns = scheduler.calls(SCHEDULER + "Shutdown")
    assert len(shutdowns) == 1
    goodbye = scheduler_pb2.ShutdownRequest.FromString(shutdowns[0].request)
    assert goodbye.execution_manager_id == 11
    assert [str(record_from_proto(r)) for r in goodbye.prev_assignments] == ["{id: 0, from: 3}"]
    # Shutdown is the last request the scheduler saw; nothing reached storage after it either.
    assert scheduler.calls()[-1].method == SCHEDULER + "Shutdown"
    assert storage.calls()[-1].received_at <= shutdowns[0].received_at
    # The first RPC of the process was the registration.
    first = min([*storage.calls(), *scheduler.calls()], key=lambda c: c.received_at)
    assert first.method == LIVENESS + "RegisterExecutionManager"


async def test_second_sigterm_forces_the_stop(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "forever")
    config = write_config(tmp_path, storage.port, scheduler.port)
    with trio.fail_after(120):
        async with running_worker(config, tmp_path / "stdout.log") as worker:
            await worker.wait_for_state("Executing")
            worker.signal(signal.SIGTERM)
            await worker.wait_for_log(
                lambda line: line.get("message") == "stop requested: draining"
            )
            worker.signal(signal.SIGTERM)
        assert worker.process.returncode == 3, messages(worker)
    assert storage.calls(TASKS + "ReportTaskSuccess") == []
    assert storage.calls(TASKS + "ReportTaskFailure") == []
    (shutdown,) = scheduler.calls(SCHEDULER + "Shutdown")
    goodbye = scheduler_pb2.ShutdownRequest.FromString(shutdown.request)
    # Registered = consumed: the killed task's record goes out with Shutdown.
    assert [str(record_from_proto(r)) for r in goodbye.prev_assignments] == ["{id: 0, from: 3}"]


async def test_sigint_while_idle_drains_with_exit_0(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler)  # idle: every poll answers no_task
    config = write_config(tmp_path, storage.port, scheduler.port)
    with trio.fail_after(120):
        async with running_worker(config, tmp_path / "stdout.log") as worker:
            await worker.wait_for_state("Awaiting", count=2)
            worker.signal(signal.SIGINT)
        assert worker.process.returncode == 0, messages(worker)
    (shutdown,) = scheduler.calls(SCHEDULER + "Shutdown")
    assert scheduler_pb2.ShutdownRequest.FromString(shutdown.request).prev_assignments == []
    # Idle polls never carried an ack.
    for call in scheduler.calls(SCHEDULER + "NextTask"):
        assert not scheduler_pb2.NextTaskRequest.FromString(call.request).HasField(
            "prev_assignment"
        )


async def test_eviction_exits_4_after_saying_goodbye(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler)  # idle: every poll answers no_task
    heartbeats = 0
    lock = threading.Lock()

    def heartbeat(_request: bytes, context: Any) -> bytes:
        nonlocal heartbeats
        with lock:
            heartbeats += 1
            evict = heartbeats >= 3
        if evict:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "execution manager is dead")
        return storage_pb2.UpdateExecutionManagerHeartbeatResponse(session_id=1).SerializeToString()

    storage.on(LIVENESS + "UpdateExecutionManagerHeartbeat", heartbeat)
    config = write_config(tmp_path, storage.port, scheduler.port)
    with trio.fail_after(120):
        async with running_worker(config, tmp_path / "stdout.log") as worker:
            pass
        assert worker.process.returncode == 4, messages(worker)
    assert len(scheduler.calls(SCHEDULER + "Shutdown")) == 1


async def test_invalid_argument_on_registration_is_fatal(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "one_second")
    storage.on(
        TASKS + "RegisterTaskInstance",
        lambda _request, context: context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad task id"),
    )
    config = write_config(tmp_path, storage.port, scheduler.port)
    with trio.fail_after(120):
        async with running_worker(config, tmp_path / "stdout.log") as worker:
            pass
        assert worker.process.returncode == 1, messages(worker)
    (shutdown,) = scheduler.calls(SCHEDULER + "Shutdown")
    # INVALID_ARGUMENT consumes nothing: no acknowledgement for that assignment.
    assert scheduler_pb2.ShutdownRequest.FromString(shutdown.request).prev_assignments == []
    assert storage.calls(TASKS + "ReportTaskFailure") == []


def test_executor_without_handshake_names_bin_path(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    silent = tmp_path / "silent-executor"
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    config = write_config(
        tmp_path,
        storage.port,
        scheduler.port,
        task_executor={
            "bin_path": str(silent),
            "ready_timeout_sec": 2,
            "crash_loop_limit": 1,
            "respawn_backoff_initial_ms": 10,
            "respawn_backoff_max_ms": 10,
        },
    )
    completed = run_cli("-c", str(config))
    assert completed.returncode == 1
    errors = [
        json.loads(line)
        for line in completed.stderr.splitlines()
        if '"level": "error"' in line and "executor pool failed to start" in line
    ]
    assert len(errors) == 1, completed.stderr
    assert "task_executor.bin_path" in errors[0]["message"]
    assert "task_executor.protocol: spider" in errors[0]["message"]
    assert storage.calls() == []
    assert scheduler.calls() == []


# --- Signals during boot -----------------------------------------------------------------


async def test_signal_while_connecting_aborts_the_boot_with_exit_0(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, _ = servers
    with closed_port() as port:
        # The scheduler never answers, so the worker waits (up to 60 s) to connect.
        config = write_config(tmp_path, storage.port, port, grpc={"rpc_timeout_sec": 60})
        with trio.fail_after(60):
            async with running_worker(config, tmp_path / "stdout.log") as worker:
                await worker.wait_for_log(lambda line: line.get("message") == "connecting")
                worker.signal(signal.SIGTERM)
            assert worker.process.returncode == 0, messages(worker)
    assert "stopped during boot: nothing was registered" in messages(worker)
    assert storage.calls() == []


# --- Failures after boot and signals before trio ----------------------------------------------


async def test_broken_executor_log_sink_is_one_error_line_and_exit_1(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "chatty")
    config = write_config(tmp_path, storage.port, scheduler.port)
    # Executor log lines go to the worker's stdout; /dev/full fails every flush (ENOSPC).
    with trio.fail_after(120):
        async with running_worker(config, Path("/dev/full")) as worker:
            pass
        assert worker.process.returncode == 1, messages(worker)
    failures = [line for line in worker.lines if line.get("level") in {"error", "critical"}]
    pool_failures = [
        line for line in failures if str(line.get("message")).startswith("executor pool failed:")
    ]
    assert len(pool_failures) == 1, failures
    assert "log sink" in pool_failures[0]["message"]
    assert "internal error" not in messages(worker)
    assert all("exc" not in line for line in failures)
    # The task was registered before it printed: its record still goes out with Shutdown.
    (shutdown,) = scheduler.calls(SCHEDULER + "Shutdown")
    goodbye = scheduler_pb2.ShutdownRequest.FromString(shutdown.request)
    assert [str(record_from_proto(r)) for r in goodbye.prev_assignments] == ["{id: 0, from: 3}"]


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux ``SigCgt``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize(("bad_config", "expected_code"), [(False, 0), (True, 2)])
async def test_sigterm_before_trio_listens_is_kept_and_aborts_the_boot(
    servers: tuple[ScriptedServer, ScriptedServer],
    tmp_path: Path,
    bad_config: bool,
    expected_code: int,
) -> None:
    storage, scheduler = servers
    executor = make_marking_executor(tmp_path)
    written = write_config(
        tmp_path,
        storage.port,
        scheduler.port,
        task_executor={"bin_path": str(executor)},
        **({"connection_pool_size": 0} if bad_config else {}),
    )
    # The worker reads its config from a FIFO, so it is held before trio starts until we write.
    fifo = tmp_path / "held.yaml"
    os.mkfifo(fifo)
    with trio.fail_after(120):
        async with running_worker(fifo, tmp_path / "stdout.log") as worker:
            while not _catches(worker.process.pid, signal.SIGTERM):
                assert worker.process.returncode is None, messages(worker)
                await trio.sleep(0.01)  # polling a condition, bounded by fail_after
            worker.signal(signal.SIGTERM)
            # Open the FIFO without blocking the event loop: the reader is already waiting.
            await trio.to_thread.run_sync(fifo.write_text, written.read_text())
        # Never death by signal; a bad file still wins (2 > 0) and is its one line.
        assert worker.process.returncode == expected_code, messages(worker)
    if bad_config:
        assert messages(worker) == [
            "config error: connection_pool_size: must be an integer > 0, got 0"
        ]
    else:
        assert "stopped during boot: nothing was registered" in messages(worker)
        received = [line for line in worker.lines if line.get("message") == "signal received"]
        assert [(r["signal"], r["before_trio"]) for r in received] == [("SIGTERM", True)]
    assert storage.calls() == []
    assert scheduler.calls() == []
    assert not (tmp_path / "executor-started").exists()


async def test_a_server_going_away_leaves_only_json_lines_on_stderr(
    servers: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler)  # idle: every poll answers no_task
    config = write_config(tmp_path, storage.port, scheduler.port)
    with trio.fail_after(120):
        async with running_worker(config, tmp_path / "stdout.log") as worker:
            await worker.wait_for_state("Awaiting", count=2)
            # The scheduler goes away (HTTP/2 GOAWAY): grpc's C core notices before NextTask fails.
            await trio.to_thread.run_sync(scheduler.stop)
            await worker.wait_for_log(lambda line: line.get("message") == "NextTask failed")
            worker.signal(signal.SIGTERM)
        assert worker.process.returncode == 0, messages(worker)
    assert [line["message"] for line in worker.lines if line.get("unparsed")] == []
