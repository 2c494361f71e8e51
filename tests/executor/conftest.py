"""Fixtures for the executor tests: a temporary ``package_dir``, requests, a collecting sink."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from worker.executor.logs import ExecutorLogLine
from worker.executor.settings import PoolSettings
from worker.executor.wire import encode_values
from worker.model import (
    ExecutionRequest,
    JobId,
    ResourceGroupId,
    TaskId,
    TaskInstanceId,
)

TASK_SOURCES = Path(__file__).parent / "tasks"
TASK_MODULES = ("worker_testtasks.py", "broken_import.py", "flaky_import.py")

#: Generous bound for any single pool test on a loaded 2-core machine.
TEST_BOUND_SEC = 30.0


@pytest.fixture
def package_dir(tmp_path: Path) -> Path:
    """A fresh package_dir holding the test task modules."""
    target = tmp_path / "pkg"
    target.mkdir()
    for name in TASK_MODULES:
        shutil.copy(TASK_SOURCES / name, target / name)
    return target


@pytest.fixture
def settings(package_dir: Path) -> PoolSettings:
    """Default pool settings over the test package_dir (short timeouts for tests)."""
    return PoolSettings(package_dir=package_dir, ready_timeout_sec=10.0)


class CollectingSink:
    """An executor-log sink that keeps every line."""

    def __init__(self) -> None:
        self.lines: list[ExecutorLogLine] = []

    def __call__(self, line: ExecutorLogLine) -> None:
        self.lines.append(line)

    def texts(self) -> list[str]:
        """The forwarded texts, in order."""
        return [line.text for line in self.lines]

    async def wait_for(self, text: str, within: float = 5.0) -> ExecutorLogLine:
        """The first line whose text is ``text``, waiting for it up to ``within`` seconds."""
        with trio.fail_after(within):
            while True:
                for line in self.lines:
                    if line.text == text:
                        return line
                await trio.sleep(0.01)


@pytest.fixture
def sink() -> CollectingSink:
    """A collecting executor-log sink."""
    return CollectingSink()


def request(
    func: str,
    *args: Any,
    timeout_ms: int = 5000,
    task_id: TaskId | None = None,
    io: bytes | None = None,
    package: str = "worker_testtasks",
    job_id: int = 7,
    instance: int = 11,
    resource_group: int = 9,
) -> ExecutionRequest:
    """An execution request for ``package.func(*args)``."""
    return ExecutionRequest(
        job_id=JobId(job_id),
        task_id=task_id if task_id is not None else TaskId.of_index(0),
        task_instance_id=TaskInstanceId(instance),
        resource_group_id=ResourceGroupId(resource_group),
        package=package,
        task_func=func,
        serialized_task_io=encode_values(args) if io is None else io,
        hard_timeout_ms=timeout_ms,
    )


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is alive (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_groups_gone(pgids: list[int], within: float) -> None:
    """Fail unless every group in ``pgids`` is gone within ``within`` seconds."""
    with trio.fail_after(within):
        # polling: the kernel gives no event for "every process of a group is gone"
        while any(group_alive(p) for p in pgids):  # noqa: ASYNC110
            await trio.sleep(0.01)


def executor_script(directory: Path, name: str, body: str) -> Path:
    """An executable test executor (``bin_path``) running ``body`` after the channel helpers.

    Helpers available to ``body``: ``OPTS`` (the key=value args), ``IN``/``OUT`` fds,
    ``send(message)``, ``send_raw(bytes)``, ``receive()`` (one message or None).
    """
    prelude = f"""\
        #!{sys.executable}
        import os, struct, sys, time
        import msgpack
        OPTS = dict(a.split("=", 1) for a in sys.argv[1:])
        IN, OUT = int(OPTS["in_fd"]), int(OPTS["out_fd"])
        def send_raw(data):
            os.write(OUT, data)
        def send(message):
            body = msgpack.packb(message, use_bin_type=True)
            send_raw(struct.pack(">I", len(body)) + body)
        def receive():
            header = os.read(IN, 4)
            if len(header) < 4:
                return None
            (size,) = struct.unpack(">I", header)
            data = b""
            while len(data) < size:
                data += os.read(IN, size - len(data))
            return msgpack.unpackb(data)
        """
    path = directory / name
    path.write_text(textwrap.dedent(prelude) + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def unprivileged_account(
    names: tuple[str, ...] = ("nobody", "nfsnobody", "daemon"),
) -> pwd.struct_passwd | None:
    """The first existing non-root account of ``names`` (tests switch to it; none is created)."""
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry
    return None


#: The account run_as tests switch executors to, if this machine has one.
UNPRIVILEGED = unprivileged_account()

#: run_as needs a worker running as root and an account to switch to.
needs_root_and_account = pytest.mark.skipif(
    os.geteuid() != 0 or UNPRIVILEGED is None,
    reason="run_as needs a worker running as root and an existing unprivileged account"
    " (nobody, nfsnobody or daemon)",
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-readable temporary folder (pytest's own tmp_path is private to its user)."""
    directory = Path(tempfile.mkdtemp(prefix="worker-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def config_document(package_dir: Path, **task_executor: Any) -> dict[str, Any]:
    """A minimal valid worker configuration (as parsed YAML) with these ``task_executor`` keys."""
    return {
        "storage": {"host": "127.0.0.1", "port": 1},
        "scheduler": {"host": "127.0.0.1", "port": 2},
        "connection_pool_size": 1,
        "scheduler_poll_wait_ms": 0,
        "liveness": {"storage_heartbeat_interval_sec": 1, "scheduler_heartbeat_interval_sec": 1},
        "task_executor": {"package_dir": str(package_dir), **task_executor},
    }
