"""Nothing outlives the worker (executor.md §6.8): SIGKILL a real worker process, idle or busy.

The worker runs as ``python -m worker -c FILE`` against scripted storage and scheduler servers
(the harness of tests/test_service.py). Its task forks a grandchild that ignores SIGTERM (and a
busy task also blocks the usual stop signals in the executor), with and without ``run_as``.
After the worker is SIGKILLed, every process of every executor group (the executor, the
grandchild, anything else in the group) must have exited within 1 s. "Exited" is read from
``/proc/<pid>/stat``: a zombie counts, since a subreaper (this test process, for one) may hold
it unreaped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import trio

from tests.executor.conftest import (
    TEST_BOUND_SEC,
    UNPRIVILEGED,
    CollectingSink,
    executor_script,
    needs_root_and_account,
)
from tests.test_service import (
    TASKS,
    FakeCluster,
    WorkerProcess,
    running_worker,
    servers,
    write_config,
)
from tests.transport.scripted import ScriptedServer
from worker.executor.pool import open_pool
from worker.executor.settings import PoolSettings

__all__ = ["servers"]  # the fixture, used by name

pytestmark = [
    pytest.mark.pool,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]

#: executor.md §6.8: everything has exited within 1 s of the worker's death.
EXIT_BOUND_SEC = 1.0

# Only modules the executor has loaded itself (os, signal, time), so the tasks run under run_as
# too, as a user that may not be able to read the interpreter's directory.
DEATH_TASKS = """\
import os
import signal
import time

HERE = os.path.dirname(__file__)


def _start_stubborn_grandchild():
    pid = os.fork()
    if pid == 0:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        time.sleep(600)
        os._exit(0)
    with open(os.path.join(HERE, "pids.tmp"), "w") as out:
        out.write(f"{os.getpid()} {pid}")
    os.replace(os.path.join(HERE, "pids.tmp"), os.path.join(HERE, "pids"))


def leave_a_grandchild():
    _start_stubborn_grandchild()


def run_forever():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    _start_stubborn_grandchild()
    time.sleep(600)
"""


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` from ``/proc/<pid>/stat``; ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def exited(pid: int) -> bool:
    """Gone, or a zombie (dead, waiting to be reaped)."""
    return process_state(pid) in (None, "Z", "X")


def group_members(pgid: int) -> set[int]:
    """Every live (non-zombie) process whose process group is ``pgid``."""
    members: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.add(int(entry.name))
    return members


@contextmanager
def cleaned_up(pids: set[int]) -> Iterator[None]:
    """Whatever the outcome, SIGKILL and reap what is left (a failing run must not leak)."""
    try:
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            with suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # only if this test process adopted it


def read_if_there(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def wait_for_file(path: Path, within: float) -> str:
    """The text of ``path`` once it exists (written atomically by the task)."""
    with trio.fail_after(within):
        while (text := read_if_there(path)) is None:  # noqa: ASYNC110
            await trio.sleep(0.02)  # a file appearing gives no event to wait on
    return text


async def wait_for_call(server: ScriptedServer, method: str, within: float) -> None:
    with trio.fail_after(within):
        while not server.calls(method):  # noqa: ASYNC110 (the servers run in other threads)
            await trio.sleep(0.02)


async def kill_worker_and_check(worker: WorkerProcess, pids: set[int]) -> None:
    """SIGKILL the worker; every pid must have exited within ``EXIT_BOUND_SEC``."""
    worker.process.kill()
    await worker.process.wait()
    killed_at = time.monotonic()
    with trio.move_on_after(EXIT_BOUND_SEC):
        while not all(exited(pid) for pid in pids):  # noqa: ASYNC110 (polling /proc)
            await trio.sleep(0.01)
    alive = {pid: process_state(pid) for pid in pids if not exited(pid)}
    took = time.monotonic() - killed_at
    assert not alive, f"still alive {took:.2f} s after the worker's SIGKILL: {alive}"


async def _run(
    directory: Path,
    servers: tuple[ScriptedServer, ScriptedServer],
    func: str,
    run_as: str | None = None,
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, func)
    executor_keys = {} if run_as is None else {"task_executor": {"run_as": run_as}}
    config = write_config(directory, storage.port, scheduler.port, **executor_keys)
    package = directory / "package"
    (package / "tasks.py").write_text(DEATH_TASKS)
    package.chmod(0o777)  # the task writes its pids file there, as the run_as user too
    with trio.fail_after(60):
        async with running_worker(config, directory / "stdout.log") as worker:
            executor, grandchild = map(int, (await wait_for_file(package / "pids", 30)).split())
            if func == "leave_a_grandchild":
                # the task returned and was reported: the executor is idle now
                await wait_for_call(storage, TASKS + "ReportTaskSuccess", 30)
            members = group_members(executor) | {executor, grandchild}
            assert grandchild in members  # the grandchild stayed in the executor's group
            with cleaned_up(members):
                await kill_worker_and_check(worker, members)


async def test_sigkilled_worker_leaves_no_busy_executor_or_grandchild(
    tmp_path: Path, servers: tuple[ScriptedServer, ScriptedServer]
) -> None:
    await _run(tmp_path, servers, "run_forever")


async def test_sigkilled_worker_leaves_no_idle_executor_or_grandchild(
    tmp_path: Path, servers: tuple[ScriptedServer, ScriptedServer]
) -> None:
    await _run(tmp_path, servers, "leave_a_grandchild")


@needs_root_and_account
async def test_sigkilled_worker_leaves_no_run_as_executor_or_grandchild(
    shared_dir: Path, servers: tuple[ScriptedServer, ScriptedServer]
) -> None:
    # the executor switched users (which clears a parent-death signal): the watcher still acts
    assert UNPRIVILEGED is not None
    await _run(shared_dir, servers, "run_forever", run_as=UNPRIVILEGED.pw_name)


async def test_a_bin_path_executor_gets_a_group_watcher_too(
    package_dir: Path, sink: CollectingSink, tmp_path: Path
) -> None:
    # The lifeline's end-of-file is what a dead worker leaves behind: closing it by hand must
    # make the watcher kill a custom executor's whole group, under the executor's own PID.
    script = executor_script(
        tmp_path,
        "custom.py",
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(OPTS['package_dir'] + '/custom.pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
        "send({'t': 'ready', 'v': 1, 'pid': os.getpid()})\n"
        "time.sleep(600)\n",
    )
    settings = PoolSettings(package_dir=package_dir, bin_path=script)
    with trio.fail_after(TEST_BOUND_SEC):
        async with open_pool(settings, log_sink=sink) as pool:
            leader, grandchild = map(
                int, (await wait_for_file(package_dir / "custom.pids", 5)).split()
            )
            assert pool.executor_pids == [leader]
            members = group_members(leader) | {leader, grandchild}
            assert len(members) == 3  # the executor, its watcher and the grandchild
            with cleaned_up(members):
                pool._lifeline.close()
                with trio.fail_after(EXIT_BOUND_SEC):
                    while not all(exited(pid) for pid in members):  # noqa: ASYNC110
                        await trio.sleep(0.01)
