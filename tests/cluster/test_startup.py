"""Start-up: a taken port or database is refused, and every start-up failure of ``cluster``,
``local`` and ``submit`` is one line on stderr with its documented exit code."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.cluster.harness import TASKS_DIR, run_command, serve_cluster, stop_cluster
from worker.cluster import local, serve, submit
from worker.cluster.db import DatabaseLock, DatabaseUnavailable
from worker.cluster.embedded import ClusterSettings, ClusterStartError, EmbeddedCluster
from worker.cluster.servers import ListenError, listen
from worker.transport._generated.common import common_pb2
from worker.transport._generated.storage import storage_pb2_grpc

pytestmark = [pytest.mark.cluster]


def _session_of(port: int) -> int:
    """The session the storage on ``port`` answers with (proof that it still serves)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = storage_pb2_grpc.SessionManagementServiceStub(channel)
        return int(stub.GetSession(common_pb2.Void(), timeout=10).session_id)


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert stderr.endswith("\n"), repr(stderr)
    assert stderr.count("\n") == 1, repr(stderr)
    return stderr.rstrip("\n")


@contextlib.contextmanager
def _held_port() -> Iterator[int]:
    """A loopback port some other program listens on (a plain socket, no SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_second_listener_on_a_taken_port_is_refused_in_process() -> None:
    first = listen("127.0.0.1", 0, threads=4)
    try:
        with pytest.raises(ListenError) as refused:
            listen("127.0.0.1", first.port, threads=4)
        assert str(refused.value) == (
            f"cannot listen on 127.0.0.1:{first.port}: Address already in use"
        )
    finally:
        first.server.stop(None)


def test_a_second_lock_on_a_database_is_refused_in_process(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    held = DatabaseLock(database)
    try:
        with pytest.raises(DatabaseUnavailable, match="is in use by another cluster"):
            DatabaseLock(database)
        with pytest.raises(ClusterStartError, match="is in use by another cluster"):
            EmbeddedCluster(ClusterSettings(database=database))
    finally:
        held.release()
    assert not database.exists()  # the refused cluster did not even create the file
    DatabaseLock(database).release()  # released: the next one gets it


@pytest.mark.slow
def test_a_second_cluster_on_the_same_ports_or_database_fails_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    database = tmp_path / "first.db"
    server, storage_port, scheduler_port, session = serve_cluster(tmp_path, database=database)
    try:
        taken = [
            (str(storage_port), "0", storage_port),
            ("0", str(scheduler_port), scheduler_port),
        ]
        for storage, scheduler, port in taken:
            second = run_command(
                [
                    *("cluster", "--storage-port", storage, "--scheduler-port", scheduler),
                    *("--db", str(tmp_path / "second.db")),
                ],
                tmp_path,
                timeout=60,
            )
            assert second.returncode == serve.EXIT_FAILED, second.stdout + second.stderr
            assert _one_line(second.stderr) == (
                f"cluster: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
            )
            assert not (tmp_path / "second.db").exists()
        files = [database, Path(f"{database}-wal")]
        before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
        same_db = run_command(
            ["cluster", "--storage-port", "0", "--scheduler-port", "0", "--db", str(database)],
            tmp_path,
            timeout=60,
        )
        assert same_db.returncode == serve.EXIT_FAILED, same_db.stdout + same_db.stderr
        assert _one_line(same_db.stderr) == (
            f"cluster: cannot start: database {database} is in use by another cluster "
            f"(lock {database}.lock is held)"
        )
        after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
        assert after == before
        # Every call still reaches the first cluster: nothing split the port.
        for _ in range(20):
            assert _session_of(storage_port) == session
        assert server.poll() is None
    finally:
        assert stop_cluster(server) == 0


@pytest.mark.slow
def test_every_start_up_failure_is_one_line_with_its_exit_code(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    # A job that passes local's preflight check, so the start-up failures are what is left.
    job.write_text(
        f"package_dir: {TASKS_DIR}\n"
        "tasks: [{name: a, module: cluster_tasks, function: echo, inputs: [1]}]\n",
        encoding="utf-8",
    )
    locked_db = tmp_path / "locked.db"
    lock = DatabaseLock(locked_db)
    try:
        with _held_port() as busy:
            cases = [
                (
                    ["cluster", "--storage-port", str(busy), "--db", str(tmp_path / "a.db")],
                    serve.EXIT_FAILED,
                    f"cluster: cannot start: cannot listen on 127.0.0.1:{busy}: "
                    "Address already in use",
                ),
                (
                    ["cluster", "--host", "256.1.1.1", "--storage-port", "0"],
                    serve.EXIT_FAILED,
                    "cluster: cannot start: cannot listen on 256.1.1.1:0: bad address: ",
                ),
                (
                    [
                        "cluster",
                        "--storage-port",
                        "0",
                        "--scheduler-port",
                        "0",
                        "--db",
                        str(locked_db),
                    ],
                    serve.EXIT_FAILED,
                    f"cluster: cannot start: database {locked_db} is in use by another cluster",
                ),
                (
                    ["local", str(job), "--db", "/nonexistent/dir/x.db"],
                    local.EXIT_START_FAILED,
                    "local: cannot start the cluster: cannot open database "
                    "/nonexistent/dir/x.db: No such file or directory",
                ),
                (
                    ["local", str(job), "--workdir", "/proc/no/such/dir"],
                    local.EXIT_USAGE,
                    "local: cannot create --workdir /proc/no/such/dir: No such file or directory",
                ),
                (
                    ["local", str(job), "--db", str(locked_db)],
                    local.EXIT_START_FAILED,
                    f"local: cannot start the cluster: database {locked_db} is in use",
                ),
                (  # nothing listens on port 1
                    ["submit", str(job), "--port", "1"],
                    submit.EXIT_UNREACHABLE,
                    "submit: storage at 127.0.0.1:1: UNAVAILABLE: ",
                ),
            ]
            for args, code, start in cases:
                result = run_command(args, tmp_path, timeout=60)
                assert result.returncode == code, (args, result.stdout, result.stderr)
                assert _one_line(result.stderr).startswith(start), (args, result.stderr)
    finally:
        lock.release()
    assert not Path("/nonexistent/dir").exists()
    assert not locked_db.exists()
