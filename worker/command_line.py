"""What every ``python -m worker`` command line shares: the program name as invoked, a parser
with examples in its help, and ``--log-level``.

Standard library only: :mod:`worker.cli` imports this for ``--help``, which must stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_PROG",
    "LOG_LEVEL_CHOICES",
    "add_log_level",
    "add_worker_options",
    "command_parser",
    "invoked_prog",
    "log_level",
    "log_when_asked",
    "wrap",
]

#: The program name when it cannot be told from ``sys.argv[0]``.
DEFAULT_PROG: Final = "python -m worker"
#: Choices of ``--log-level`` (also of ``WORKER_LOG_LEVEL`` and of the config's ``log.level``).
LOG_LEVEL_CHOICES: Final = ("debug", "info", "warning", "error")
_HELP_WIDTH: Final = 79


def invoked_prog(argv0: str | None = None) -> str:
    """How the user started us: ``spider-worker`` for the console script, else
    ``python -m worker`` (``sys.argv[0]`` is then the package's ``__main__.py``)."""
    name = os.path.basename(sys.argv[0] if argv0 is None and sys.argv else argv0 or "")
    if not name or name == "__main__.py" or name.endswith(".py") or name == "-c":
        return DEFAULT_PROG
    return name


def command_parser(
    prog: str,
    description: str,
    *,
    examples: Sequence[str],
    exit_codes: str,
    config_file: bool = False,
) -> argparse.ArgumentParser:
    """A parser whose help ends with ``examples`` (each a command line after ``prog``) and the
    exit codes; it takes ``--log-level`` (``config_file``: the worker's, which a config file
    can also set)."""
    lines = "\n".join(f"  {prog} {example}".rstrip() for example in examples)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=wrap(description),
        epilog=f"example{'s' if len(examples) > 1 else ''}:\n{lines}\n\n"
        + wrap(f"exit codes: {exit_codes}"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_level(parser, config_file=config_file)
    return parser


def wrap(paragraph: str) -> str:
    """``paragraph`` wrapped for a help text whose line breaks are kept as written."""
    return textwrap.fill(paragraph, width=_HELP_WIDTH)


def add_log_level(parser: argparse.ArgumentParser, *, config_file: bool = False) -> None:
    """``--log-level``: left ``None`` when absent, so ``WORKER_LOG_LEVEL`` (and the worker's
    config file) can decide (:func:`worker.logging_setup.resolve_level`)."""
    fallback = "the config's log.level, then info" if config_file else "info"
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVEL_CHOICES,
        default=None,
        metavar="LEVEL",
        help=f"lowest level logged on stderr: {', '.join(LOG_LEVEL_CHOICES)} (default:"
        f" $WORKER_LOG_LEVEL, else {fallback})",
    )


def log_level(parser: argparse.ArgumentParser, flag: str | None, configured: str = "info") -> str:
    """The level to log at (``--log-level``, then ``WORKER_LOG_LEVEL``, then ``configured``).

    A bad variable is a usage error: one line on stderr, exit 2 (``SystemExit``, as argparse).
    """
    from worker.logging_setup import LogLevelError, resolve_level

    try:
        return resolve_level(flag, configured)
    except LogLevelError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")


def log_when_asked(parser: argparse.ArgumentParser, flag: str | None) -> None:
    """For commands without a log of their own (``submit``, the status commands, ``diagram``):
    log on stderr at the level ``--log-level`` or ``WORKER_LOG_LEVEL`` asks for; when neither
    does, leave logging alone (Python then prints only warnings and errors)."""
    from worker.logging_setup import LOG_LEVEL_VARIABLE, configure_logging

    if flag is None and not os.environ.get(LOG_LEVEL_VARIABLE, "").strip():
        return
    configure_logging(None, log_level(parser, flag))


def add_worker_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The worker's own option, ``--config FILE`` (``-c FILE``)."""
    parser.add_argument(
        "-c",
        "--config",
        required=required,
        type=Path,
        metavar="FILE",
        help="run one worker with this YAML config file",
    )
