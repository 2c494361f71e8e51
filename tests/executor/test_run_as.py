"""What the environment allow-list does not stop, and what does (executor.md §8.1).

* the worker is non-dumpable: a process of the same non-root user cannot read its environ;
* ``task_executor.run_as`` switches executors to another user before any task code runs: the
  task's uid is that user's, and it cannot read the worker's ``/proc/<pid>/environ``;
* a ``run_as`` the worker cannot apply is a one-line configuration error (exit 2).

The end-to-end tests run a real worker (``python -m worker -c FILE``, the harness of
tests/test_service.py) as root and switch its executors to an existing unprivileged account.
That user may not be able to read the interpreter (a Python under /root, as in CI), so the task
package lives in a world-readable temporary folder and its tasks use only modules the executor
imported before the switch (``os`` and the ``open`` builtin).
"""

from __future__ import annotations

import os
import pwd
import signal
import sys
from pathlib import Path

import msgpack
import pytest
import trio

from tests.executor.conftest import (
    UNPRIVILEGED,
    config_document,
    needs_root_and_account,
    unprivileged_account,
)
from tests.executor.test_worker_death import wait_for_call
from tests.test_service import (
    TASKS,
    FakeCluster,
    WorkerProcess,
    messages,
    run_cli,
    running_worker,
    servers,
    write_config,
)
from tests.transport.scripted import ScriptedServer
from worker import security
from worker.config import ConfigError, parse_config
from worker.security import make_non_dumpable
from worker.transport._generated.storage import storage_pb2

__all__ = ["servers"]  # the fixture, used by name

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]

IS_ROOT = os.geteuid() == 0


RUN_AS_TASKS = """\
import os


def identity():
    return os.getuid(), os.geteuid(), os.getgid(), os.getgroups()


def read_worker_environ():
    with open(f"/proc/{os.getppid()}/environ", "rb") as source:
        return len(source.read())
"""


def _has_ptrace_capability() -> bool:
    """Whether this process holds CAP_SYS_PTRACE (bit 19 of CapEff), which beats non-dumpable."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 19))
    return False


def _blocked_for_others(path: Path) -> bool:
    """Whether a user that is neither owner nor group member is stopped on the way to ``path``."""
    for part in [*reversed(path.parents), path]:
        mode = part.stat().st_mode
        if part != path and not mode & 0o001:
            return True
    return not path.stat().st_mode & 0o004


def _run_as_config(directory: Path, storage: ScriptedServer, scheduler: ScriptedServer) -> Path:
    assert UNPRIVILEGED is not None
    config = write_config(
        directory, storage.port, scheduler.port, task_executor={"run_as": UNPRIVILEGED.pw_name}
    )
    package = directory / "package"
    (package / "tasks.py").write_text(RUN_AS_TASKS)
    for path in (package, package / "tasks.py"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return config


# --- Configuration ----------------------------------------------------------------------------


def test_unknown_run_as_user_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 2, task_executor={"run_as": "no-such-user-here"})
    completed = run_cli("-c", str(config))
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "config error: task_executor.run_as: no such user: 'no-such-user-here'"
    ]


@pytest.mark.parametrize("value", [True, 1.5, [], ""])
def test_run_as_of_the_wrong_type_is_refused(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"^config error: task_executor\.run_as: must be a user"):
        parse_config(config_document(tmp_path, run_as=value), environ={})


def test_run_as_needs_a_root_worker(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = unprivileged_account(("nobody", "nfsnobody", "daemon")) or pwd.getpwuid(0)
    assert other is not None
    monkeypatch.setattr(os, "geteuid", lambda: other.pw_uid + 1)
    with pytest.raises(ConfigError) as error:
        parse_config(config_document(shared_dir, run_as=other.pw_name), environ={})
    assert str(error.value) == (
        f"config error: task_executor.run_as: switching executors to user {other.pw_name!r}"
        f" needs a worker running as root (it runs as uid {other.pw_uid + 1})"
    )
    # naming the worker's own user changes nothing, so it needs no privilege
    monkeypatch.setattr(os, "geteuid", lambda: other.pw_uid)
    loaded = parse_config(config_document(shared_dir, run_as=other.pw_uid), environ={})
    assert loaded.config.task_executor.run_as is not None
    assert loaded.config.task_executor.run_as.name == other.pw_name


@needs_root_and_account
def test_run_as_user_that_cannot_reach_package_dir_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    assert UNPRIVILEGED is not None
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    config = write_config(private, 1, 2, task_executor={"run_as": UNPRIVILEGED.pw_name})
    package_dir = private / "package"
    completed = run_cli("-c", str(config))
    assert completed.returncode == 2
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(
        f"config error: task_executor.run_as: user {UNPRIVILEGED.pw_name!r} cannot read and"
        f" search {str(package_dir)!r}"
    )


# --- Non-dumpable -----------------------------------------------------------------------------


def _same_user_reads_environ(non_dumpable: bool) -> int:
    """Fork a target process and a reader of the same non-root user; the reader's verdict.

    Returns 0 when the reader could read the target's environ, 13 when it was refused
    (PermissionError), anything else for another failure. As root both switch to the
    unprivileged account first (root would pass any check).
    """
    libc = security._libc()  # loaded before the fork: the children only make system calls
    target = os.fork()
    if target == 0:
        code = 1
        try:
            if IS_ROOT:
                assert UNPRIVILEGED is not None
                os.setgroups([])
                os.setgid(UNPRIVILEGED.pw_gid)
                os.setuid(UNPRIVILEGED.pw_uid)
            if non_dumpable:
                make_non_dumpable()
            else:  # a change of user makes a process non-dumpable: the control undoes it
                libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE 1
            reader = os.fork()
            if reader == 0:
                verdict = 1
                try:
                    with open(f"/proc/{os.getppid()}/environ", "rb") as source:
                        source.read()
                    verdict = 0
                except PermissionError:
                    verdict = 13
                finally:
                    os._exit(verdict)
            _, status = os.waitpid(reader, 0)
            code = os.waitstatus_to_exitcode(status)
        finally:
            os._exit(code)
    _, status = os.waitpid(target, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(
    IS_ROOT and UNPRIVILEGED is None, reason="as root, needs an unprivileged account to switch to"
)
def test_non_dumpable_hides_the_environ_from_the_same_user() -> None:
    assert _same_user_reads_environ(non_dumpable=False) == 0  # the control: readable
    assert _same_user_reads_environ(non_dumpable=True) == 13


# --- run_as end to end --------------------------------------------------------------------------


async def _report_of_one_task(
    config: Path, storage: ScriptedServer, report: str, directory: Path
) -> tuple[WorkerProcess, bytes]:
    """Run the worker until its one task is reported as ``report``, drain it; the request."""
    with trio.fail_after(60):
        async with running_worker(config, directory / "stdout.log") as worker:
            await wait_for_call(storage, TASKS + report, 30)
            worker.signal(signal.SIGTERM)
        assert worker.process.returncode == 0, messages(worker)
    (call,) = storage.calls(TASKS + report)
    return worker, call.request


def _values(frame: bytes) -> list[object]:
    """The payloads of a task I/O wire frame (u32 LE count, then u32 LE length + msgpack)."""
    count, offset, values = int.from_bytes(frame[:4], "little"), 4, []
    for _ in range(count):
        size = int.from_bytes(frame[offset : offset + 4], "little")
        values.append(msgpack.unpackb(frame[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return values


@needs_root_and_account
async def test_task_runs_as_the_run_as_user(
    shared_dir: Path, servers: tuple[ScriptedServer, ScriptedServer]
) -> None:
    assert UNPRIVILEGED is not None
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "identity")
    config = _run_as_config(shared_dir, storage, scheduler)
    worker, request = await _report_of_one_task(config, storage, "ReportTaskSuccess", shared_dir)
    outputs = storage_pb2.ReportTaskSuccessRequest.FromString(request).serialized_outputs
    uid, gid = UNPRIVILEGED.pw_uid, UNPRIVILEGED.pw_gid
    assert _values(outputs) == [uid, uid, gid, []]
    # the interpreter under a private directory: one warning naming it, not an error
    warnings = [m for m in messages(worker) if "cannot read the interpreter's directory" in m]
    expected = {p for p in {sys.prefix, sys.base_prefix} if _blocked_for_others(Path(p))}
    assert len(warnings) == len(expected)
    for prefix in expected:
        assert any(prefix in warning for warning in warnings)


@needs_root_and_account
async def test_run_as_task_cannot_read_the_worker_environ(
    shared_dir: Path, servers: tuple[ScriptedServer, ScriptedServer]
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "read_worker_environ")
    config = _run_as_config(shared_dir, storage, scheduler)
    worker, request = await _report_of_one_task(config, storage, "ReportTaskFailure", shared_dir)
    message = storage_pb2.ReportTaskFailureRequest.FromString(request).error_message
    assert message.startswith("in-task failure: PermissionError: [Errno 13] Permission denied")
    assert f"/proc/{worker.process.pid}/environ" in message


@pytest.mark.skipif(
    IS_ROOT and _has_ptrace_capability(),
    reason="this process is root with CAP_SYS_PTRACE: a task running as root reads any"
    " process's environ, non-dumpable or not; only run_as protects the worker there",
)
async def test_task_cannot_read_the_worker_environ_without_run_as(
    tmp_path: Path, servers: tuple[ScriptedServer, ScriptedServer]
) -> None:
    storage, scheduler = servers
    FakeCluster(storage, scheduler, "read_worker_environ")
    config = write_config(tmp_path, storage.port, scheduler.port)
    (tmp_path / "package" / "tasks.py").write_text(RUN_AS_TASKS)
    worker, request = await _report_of_one_task(config, storage, "ReportTaskFailure", tmp_path)
    message = storage_pb2.ReportTaskFailureRequest.FromString(request).error_message
    assert message.startswith("in-task failure: PermissionError: [Errno 13] Permission denied")
    assert f"/proc/{worker.process.pid}/environ" in message
