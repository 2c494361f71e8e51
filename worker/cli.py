"""Command-line dispatch for ``python -m worker`` and ``spider-worker``: routing and exit codes.

Each command lives in its own module with its own parser and is imported only when used, so
``--help``, ``--version`` and a bad command line stay fast (no trio, no grpc):

* ``python -m worker --config FILE`` (or ``-c FILE``): run one worker against a cluster;
* ``python -m worker local [JOBFILE] [--workers N]``: the embedded default;
* ``python -m worker cluster``: the reference scheduler and storage;
* ``python -m worker submit JOBFILE [--wait]``: submit a job to a running cluster;
* ``python -m worker jobs | status JOB [--watch] | result JOB | cancel JOB | workers``: look at
  and steer a running cluster;
* ``python -m worker diagram``: regenerate the statecharts.

Usage and errors go to stderr; a usage error exits 2. Output cut short by a closed pipe
(``... | head -1``) ends quietly with exit code 1: Python's documented convention, and what
rich (the tables) does on its own.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from worker.command_line import add_log_level, add_worker_options, invoked_prog, wrap

__all__ = ["COMMANDS", "EXIT_BROKEN_PIPE", "EXIT_CONFIG", "main"]

EXIT_CONFIG: Final = 2
#: The reader of our output went away (Python's documented convention for EPIPE).
EXIT_BROKEN_PIPE: Final = 1

#: Subcommand name -> (``module:function`` taking the remaining argv and returning an exit code,
#: one-line summary). Each command names itself ``<program as invoked> <command>``.
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

#: Options of the top level that take a value (to find where a command's own arguments start).
_VALUE_OPTIONS: Final = frozenset({"-c", "--config", "--log-level"})

_Command = Callable[[Sequence[str]], int]


class _VersionAction(argparse.Action):
    """``--version``: looked up only when asked (reading metadata costs time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from worker.version import version_line

        print(version_line())
        parser.exit(0)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the commands one per line, without argparse's lone ``COMMAND`` line above them
    (argparse offers no public hook for this; these private names have been stable for years)."""

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(command) for command in action._get_subactions())
        return super()._format_action(action)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [-h] [--version] [--log-level LEVEL] (-c FILE | COMMAND [ARGS ...])",
        description=wrap(
            "Run one worker (execution manager) against a Spider-protocol cluster, or one of"
            " the commands below. SIGTERM/SIGINT drains the worker (the running task finishes"
            " and is reported); a second signal forces the stop."
        ),
        epilog=f"examples:\n  {prog} --config worker.yaml\n  {prog} local\n"
        f"  {prog} jobs --json\n\nRun `{prog} COMMAND --help` for a command's options.\n\n"
        + wrap(
            "worker exit codes: 0 drained, 1 fatal, 2 bad configuration or command line,"
            " 3 forced, 4 evicted"
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    add_worker_options(parser, required=False)
    add_log_level(parser, config_file=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, summary) in COMMANDS.items():
        # Only listed here: the command's own parser reads its arguments.
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def _load(target: str) -> _Command:
    module_name, _, function_name = target.partition(":")
    function: _Command = getattr(importlib.import_module(module_name), function_name)
    return function


def _command_index(args: Sequence[str]) -> int:
    """Where the command name is: the first word that is not an option or an option's value."""
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] in _VALUE_OPTIONS else 1
    return index


def _run(target: str, argv: list[str]) -> int:
    """Import the command (only now: ``--help`` stays fast) and run it."""
    from worker.logging_setup import quiet_grpc_core

    # Before the command imports grpc: its C core, configured at that import, then keeps its
    # plain-text lines (a "Got goaway" when a server restarts) off stderr and the log.
    quiet_grpc_core()
    return _load(target)(argv)


def _dispatch(args: list[str], prog: str) -> int:
    parser = _parser(prog)
    if not args:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    at = _command_index(args)
    command = args[at] if at < len(args) else None
    if command in COMMANDS:
        top = parser.parse_args(args[: at + 1])
        if top.config is not None:
            parser.error(f"--config runs a worker; it does not go with the command {command!r}")
        rest = args[at + 1 :]
        if top.log_level is not None:  # the command's own --log-level, if any, comes later
            rest = ["--log-level", top.log_level, *rest]
        return _run(COMMANDS[command][0], rest)
    top = parser.parse_args(args)  # an unknown option or command exits 2 here
    if top.config is None:
        parser.error("give -c/--config FILE to run a worker, or a COMMAND")
    # Before the (slow) import of the service: a stop signal from now on is kept, not fatal.
    from worker.signal_latch import install_latch

    install_latch()
    return _run(WORKER_COMMAND, args)


def _exit_code(request: SystemExit) -> int:
    """The status ``sys.exit`` asked for (a message means 1, as the interpreter does)."""
    if request.code is None or isinstance(request.code, int):
        return request.code or 0
    print(request.code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Route ``argv`` (default ``sys.argv[1:]``) to its command and return the exit code."""
    try:
        try:
            code = _dispatch(list(sys.argv[1:] if argv is None else argv), invoked_prog())
        except SystemExit as request:  # --help, --version, a usage error (argparse exits)
            code = _exit_code(request)
        sys.stdout.flush()  # here, so a closed pipe is noticed while we can still handle it
    except BrokenPipeError:
        # The reader went away (`| head -1`): point stdout at /dev/null so the interpreter's
        # final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code
