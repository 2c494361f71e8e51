"""Worker subprocesses (``python -m worker -c FILE``) started and stopped by the cluster commands.

Each worker gets its own configuration file and log file in a work directory. Stopping sends
SIGTERM (a drain), waits, then SIGKILLs what is left, so no process outlives its owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml

import worker

__all__ = [
    "WorkerProcess",
    "command_line",
    "descendants",
    "is_running",
    "logged_metrics_port",
    "wait_all",
    "worker_environment",
]

_PROJECT_ROOT = Path(worker.__file__).resolve().parent.parent


def logged_metrics_port(log_text: str) -> int | None:
    """The bound port of the worker's metrics endpoint, from the JSON log line that names it
    (``metrics_port``); ``None`` while not logged (or without ``metrics``)."""
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a task's output or a traceback, not a log record
        if isinstance(record, dict) and "metrics_port" in record:
            return int(record["metrics_port"])
    return None


def worker_environment() -> dict[str, str]:
    """This environment without ``WORKER_*`` overrides, with the ``worker`` package importable."""
    # The worker's own endpoint overrides (WORKER_STORAGE_PORT, ...) must not redirect it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``; empty elsewhere), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent pid.
        fields = stat.rsplit(")", 1)[-1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child in children.get(current, []):
            found.append(child)
            frontier.append(child)
    return found


def command_line(pid: int) -> bytes:
    """The raw ``/proc`` command line of ``pid``; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is neither a zombie nor dead (Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


class WorkerProcess:
    """One ``python -m worker -c FILE`` subprocess with its config and log files."""

    def __init__(self, name: str, config: dict[str, Any], workdir: Path) -> None:
        """Write the config to ``workdir/<name>.yaml`` and start the worker (its own group)."""
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self._log: IO[bytes] = self.log_path.open("wb")
        # pid -> command line when first seen: a pid is killed only while it still runs that.
        self._children: dict[int, bytes] = {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=worker_environment(),
            cwd=str(workdir),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        return self.process.poll()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker process (not its group: executors are its business)."""
        if self.process.poll() is None:
            self._remember_children()
            self.process.send_signal(signum)

    def wait(self, timeout_sec: float) -> int | None:
        """Wait up to ``timeout_sec`` for the exit code."""
        try:
            return self.process.wait(timeout=timeout_sec)
        except subprocess.TimeoutExpired:
            return None

    def _remember_children(self) -> None:
        for pid in descendants(self.process.pid):
            if pid not in self._children:
                self._children[pid] = command_line(pid)

    def _still_ours(self, pid: int) -> bool:
        """Whether ``pid`` still runs the command it ran when seen (pids get reused)."""
        return bool(self._children.get(pid)) and command_line(pid) == self._children[pid]

    def kill_group(self) -> None:
        """SIGKILL the worker, its descendants (executors run in their own groups) and its group."""
        if self.process.poll() is None:
            self._remember_children()
        # Children remembered before the worker died were reparented; kill them by pid.
        for pid in [pid for pid in self._children if self._still_ours(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            # Still unreaped, so its pid (= its group id) cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, timeout_sec: float = 30.0) -> int | None:
        """Drain with SIGTERM, wait up to ``timeout_sec``, then kill what is left."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout_sec)
        # Executors live in their own groups under the worker; a worker that exited cleanly
        # already killed them, so this only cleans up after a worker that did not.
        self.kill_group()
        if code is None:
            code = self.wait(5)
        self._log.close()
        return code

    def leftovers(self) -> list[int]:
        """Pids of this worker and of the children seen so far that still run (zombies aside)."""
        candidates = [self.process.pid, *(p for p in self._children if self._still_ours(p))]
        return [pid for pid in candidates if is_running(pid)]

    def log_text(self) -> str:
        """What the worker wrote so far."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        """Kill the worker if it still runs and close its log."""
        self.kill_group()
        self.wait(5)
        if not self._log.closed:
            self._log.close()


def wait_all(processes: list[WorkerProcess], timeout_sec: float) -> dict[str, int | None]:
    """Wait for every process within one shared deadline; ``{name: exit code or None}``."""
    deadline = time.monotonic() + timeout_sec
    return {p.name: p.wait(max(0.0, deadline - time.monotonic())) for p in processes}
