"""Checks a job before a cluster starts for it: one line per problem, so typos cost no boot.

* ``package_dir`` exists and is a directory;
* every task's module imports, in a subprocess started the way executors are (the same
  interpreter, ``-P``, ``package_dir`` first on ``sys.path``, and the executors' environment:
  only the ``inherited_env`` names plus what the pool sets), so a module that needs a variable
  the executors will not get fails here too;
* every task's function exists in its module and is callable;
* its signature accepts the number of inputs the job gives it (commit and cleanup get none).

``python -m worker local`` runs it first and exits 2 on any problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from worker.cluster.jobs import Job, JobError
from worker.executor.processes import build_environment
from worker.executor.settings import PoolSettings

__all__ = ["PreflightError", "check_or_raise", "preflight"]

_TIMEOUT_SEC: Final = 60.0

# Runs in the checking subprocess: argv = [worker root, package dir, JSON list of
# [label, module, function, input count]]; prints one problem per line.
_CHECK = """
import inspect, json, sys
root, package_dir, checks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report, sys.stdout = sys.stdout, sys.stderr  # what the modules print is not a problem line
sys.path.insert(0, package_dir)
sys.path.append(root)
failed = {}
for label, module_name, function_name, count in checks:
    if module_name in failed:
        continue
    try:
        module = __import__(module_name, fromlist=["_"])
    except BaseException as error:
        failed[module_name] = True
        print(f"{label}: module {module_name!r} does not import: {type(error).__name__}: {error}",
              file=report)
        continue
    function = getattr(module, function_name, None)
    if function is None:
        print(f"{label}: module {module_name!r} has no function {function_name!r}", file=report)
        continue
    if not callable(function):
        print(f"{label}: {module_name}.{function_name} is not callable", file=report)
        continue
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        continue
    try:
        signature.bind(*range(count))
    except TypeError as error:
        print(f"{label}: {module_name}.{function_name}{signature} cannot take {count} "
              f"input(s): {error}", file=report)
"""


class PreflightError(JobError):
    """The job cannot start; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        """Problems found by :func:`preflight`."""
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _checks(job: Job) -> list[tuple[str, str, str, int]]:
    checks = [(f"task {t.name!r}", t.module, t.function, len(t.inputs)) for t in job.tasks]
    for role, aux in (("commit", job.commit), ("cleanup", job.cleanup)):
        if aux is not None:
            checks.append((role, aux.module, aux.function, 0))
    return checks


def preflight(job: Job, package_dir: Path, inherited_env: Sequence[str] = ()) -> list[str]:
    """Every problem found, one line each (empty: the job can start)."""
    if not package_dir.exists():
        return [f"package_dir {str(package_dir)!r} does not exist"]
    if not package_dir.is_dir():
        return [f"package_dir {str(package_dir)!r} is not a directory"]
    environment, _ = build_environment(
        PoolSettings(package_dir=package_dir, inherited_env=tuple(inherited_env))
    )
    worker_root = str(Path(__file__).resolve().parent.parent.parent)
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-P",
                "-c",
                _CHECK,
                worker_root,
                str(package_dir.resolve()),
                json.dumps(_checks(job)),
            ],
            env={os.fsdecode(k): os.fsdecode(v) for k, v in environment.items()},
            cwd=str(package_dir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_SEC,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [f"importing the task modules took longer than {_TIMEOUT_SEC:g} s"]
    problems = [line for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 and not problems:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        problems.append(f"the import check exited with {completed.returncode}: {last}")
    return problems


def check_or_raise(job: Job, package_dir: Path, inherited_env: Sequence[str] = ()) -> None:
    """Raise :class:`PreflightError` if :func:`preflight` finds any problem."""
    problems = preflight(job, package_dir, inherited_env)
    if problems:
        raise PreflightError(problems)
