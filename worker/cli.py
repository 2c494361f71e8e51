"""Command-line dispatch for ``python -m worker``: argument routing and exit codes only.

Each command lives in its own module and is imported only when used, so ``--help`` and a bad
command line stay fast and a command's dependencies load only for that command:

* ``python -m worker --config FILE`` (or ``-c FILE``): run one worker against a cluster;
* ``python -m worker local [JOBFILE] [--workers N]``: the embedded default;
* ``python -m worker cluster``: the reference scheduler and storage;
* ``python -m worker submit JOBFILE [--wait]``: submit a job to a running cluster;
* ``python -m worker jobs | status JOB [--watch] | result JOB | cancel JOB | workers``: look at
  and steer a running cluster;
* ``python -m worker diagram``: regenerate the statecharts.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["COMMANDS", "EXIT_CONFIG", "main"]

EXIT_CONFIG: Final = 2

#: Subcommand name -> (``module:function`` taking the remaining argv and returning an exit code,
#: one-line summary).
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "local": ("worker.cluster.local:main", "run a job on an embedded local cluster"),
    "cluster": ("worker.cluster.serve:main", "serve the reference scheduler and storage"),
    "submit": ("worker.cluster.submit:main", "submit a job file to a running cluster"),
    "diagram": ("worker.statecharts:main", "regenerate the statecharts from the transition table"),
    "jobs": ("worker.cluster.admin_cli:jobs_main", "list a running cluster's jobs"),
    "status": ("worker.cluster.admin_cli:status_main", "show a job's tasks (--watch: follow it)"),
    "result": ("worker.cluster.admin_cli:result_main", "print a job's outputs"),
    "cancel": ("worker.cluster.admin_cli:cancel_main", "cancel a job (its cleanup task runs)"),
    "workers": ("worker.cluster.admin_cli:workers_main", "list the registered workers"),
}

#: ``python -m worker --config FILE``: the one worker process.
WORKER_COMMAND: Final = "worker.service:main"

_USAGE = """usage: python -m worker (--config FILE | --version | COMMAND [ARGS...])

Run one worker:
  python -m worker --config FILE   (or -c FILE)

Commands:
{commands}

Run `python -m worker COMMAND --help` for a command's options.
"""


def _load(target: str) -> Callable[[Sequence[str]], int]:
    module_name, _, function_name = target.partition(":")
    function: Callable[[Sequence[str]], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return function


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = "\n".join(
        f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()
    )
    return _USAGE.format(commands=lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Route ``argv`` (default ``sys.argv[1:]``) to its command and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_CONFIG
    if args[0] == "--version":
        from worker.version import version_line

        print(version_line())
        return 0
    if args[0] in COMMANDS:
        return _load(COMMANDS[args[0]][0])(args[1:])
    if args[0].startswith("-"):
        # Before the (slow) import of the service: a stop signal from now on is kept, not fatal,
        # and grpc's C core, configured at its import, keeps its plain-text lines off the log.
        from worker.logging_setup import quiet_grpc_core
        from worker.signal_latch import install_latch

        install_latch()
        quiet_grpc_core()
        return _load(WORKER_COMMAND)(args)
    print(f"worker: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
    return EXIT_CONFIG
