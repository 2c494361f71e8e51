"""Log output of ``python -m worker``: human-readable on a terminal, JSON lines otherwise.

Code logs through ``logging.getLogger("worker.<area>")`` and puts structured values (ids,
states, codes) in ``extra={"fields": {...}}``. The console format appends them as
``key=value``; the JSON format merges them into the line's object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Final, TextIO

__all__ = [
    "LOG_LEVEL_VARIABLE",
    "ConsoleFormatter",
    "FieldsFormatter",
    "JsonFormatter",
    "LogLevelError",
    "configure_logging",
    "fields_text",
    "logging_configured",
    "quiet_grpc_core",
    "resolve_format",
    "resolve_level",
    "utc_timestamp",
]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: The environment variable every command reads for its log level.
LOG_LEVEL_VARIABLE: Final = "WORKER_LOG_LEVEL"
#: Keys of every JSON line; a structured field with one of these names is prefixed ``field.``.
_JSON_KEYS: Final = frozenset({"ts", "level", "logger", "message", "exc"})
#: A console value holding one of these is JSON-quoted, so the line still splits unambiguously.
_NEEDS_QUOTES: Final = re.compile(r'[ ="\n]')


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _split_seconds(seconds: float) -> tuple[int, int]:
    """``(whole seconds, milliseconds)`` as ``datetime.fromtimestamp`` rounds: to the microsecond
    (half to even), then the milliseconds truncated, as ``isoformat(timespec="milliseconds")``."""
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        return int(whole) + 1, (micros - 1_000_000) // 1000
    return int(whole), micros // 1000


class _SecondText:
    """The text of a whole second, rendered once per second: the per-line timestamp costs one
    comparison instead of a ``datetime``. The pair is swapped as one tuple, so threads may share
    it (the executor log lines render their ``ts`` outside the logging handler's lock)."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._latest: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        cached_second, text = self._latest
        if cached_second != second:
            text = self._render(second)
            self._latest = (second, text)
        return text


_utc_second = _SecondText(lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
_local_second = _SecondText(lambda second: time.strftime("%H:%M:%S", time.localtime(second)))
# One encoder for every line: ``json.dumps`` with options builds a new encoder per call.
_JSON_ENCODER: Final = json.JSONEncoder(default=str, ensure_ascii=False)
_VALUE_ENCODER: Final = json.JSONEncoder(default=str)


def utc_timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC with milliseconds (``...T12:00:00.123Z``),
    the ``ts`` of the JSON log (the executors' forwarded lines use it too: one clock)."""
    second, millis = _split_seconds(seconds)
    return f"{_utc_second(second)}.{millis:03d}Z"


def _console_value(value: Any) -> str:
    kind = type(value)
    if kind is int:  # ids and counts, most fields of the per-task lines: no JSON needed
        return str(value)
    if kind is float and math.isfinite(value):  # JSON renders a finite float as repr does
        return repr(value)
    text = value if kind is str else _VALUE_ENCODER.encode(value)
    return json.dumps(text) if (not text or _NEEDS_QUOTES.search(text)) else text


def fields_text(record: logging.LogRecord) -> str:
    """The record's structured fields as `` key=value ...`` (empty without fields); a value with
    a space, ``=`` or quote is JSON-quoted so the line still splits unambiguously."""
    fields = _fields(record)
    return "".join([f" {key}={_console_value(value)}" for key, value in fields.items()])


class ConsoleFormatter(logging.Formatter):
    """``12:00:00.123 INFO  worker.runtime: message key=value ...`` (local time)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record on one line (a traceback follows on its own lines)."""
        second, millis = _split_seconds(record.created)
        line = (
            f"{_local_second(second)}.{millis:03d} {record.levelname:<7} "
            f"{record.name}: {record.getMessage()}{fields_text(record)}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class FieldsFormatter(logging.Formatter):
    """A classic ``%``-style format with the record's fields appended as in the console format
    (for log files such as ``local``'s cluster log)."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record followed by `` key=value`` per field."""
        return super().format(record) + fields_text(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single JSON line."""
        line: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line[f"field.{key}" if key in _JSON_KEYS else str(key)] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _JSON_ENCODER.encode(line)


class _LineStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that leaves the flushing to a line-buffered stream (``sys.stderr`` is one):
    every record ends with a newline, so writing it flushed it already, and a second flush per
    line only takes the handler's lock again."""

    def flush(self) -> None:
        """Flush unless the stream flushes itself at every newline."""
        if not getattr(self.stream, "line_buffering", False):
            super().flush()


#: What no format of ours shows, so no record collects it (the logging HOWTO's "Optimization"
#: table names these switches): the calling frame (``_srcfile``), the thread, the process and
#: the asyncio task. Finding the caller alone walks the stack on every record.
_UNSHOWN_RECORD_DETAILS: Final[Mapping[str, object]] = {
    "_srcfile": None,
    "logThreads": False,
    "logProcesses": False,
    "logMultiprocessing": False,
    "logAsyncioTasks": False,  # Python 3.12 and later
}


def resolve_format(requested: str | None, stream: TextIO) -> str:
    """``requested`` when set, else ``"console"`` on a terminal and ``"json"`` otherwise."""
    if requested is not None:
        return requested
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


class LogLevelError(ValueError):
    """``WORKER_LOG_LEVEL`` holds a level we do not know (the message names it)."""


def resolve_level(
    flag: str | None,
    configured: str = "info",
    environ: Mapping[str, str] | None = None,
) -> str:
    """The log level to use: ``--log-level`` (``flag``), else ``WORKER_LOG_LEVEL``, else the
    config file's ``log.level`` (``configured``; commands without a config: ``"info"``).

    An empty variable counts as unset; any other unknown value raises :class:`LogLevelError`.
    """
    if flag is not None:
        return flag
    variable = (os.environ if environ is None else environ).get(LOG_LEVEL_VARIABLE, "").strip()
    if variable:
        level = variable.lower()
        if level not in _LEVELS:
            raise LogLevelError(
                f"{LOG_LEVEL_VARIABLE}: must be one of {', '.join(_LEVELS)}, got {variable!r}"
            )
        return level
    return configured


def configure_logging(
    log_format: str | None, level: str = "info", stream: TextIO | None = None
) -> str:
    """Send every log record at ``level`` or above to ``stream`` (stderr); returns the format."""
    target = sys.stderr if stream is None else stream
    chosen = resolve_format(log_format, target)
    handler = _LineStreamHandler(target)
    handler.setFormatter(JsonFormatter() if chosen == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    for name, value in _UNSHOWN_RECORD_DETAILS.items():
        if hasattr(logging, name):
            setattr(logging, name, value)
    # The state-machine library narrates every callback at INFO; our machine logs transitions.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return chosen


@contextlib.contextmanager
def logging_configured(
    log_format: str | None, level: str = "info", stream: TextIO | None = None
) -> Iterator[str]:
    """:func:`configure_logging` for the span of a command, then the previous handlers, level and
    record details again (commands also run inside other programs, such as the tests)."""
    root = logging.getLogger()
    handlers, previous_level = list(root.handlers), root.level
    details = {
        name: getattr(logging, name) for name in _UNSHOWN_RECORD_DETAILS if hasattr(logging, name)
    }
    try:
        yield configure_logging(log_format, level, stream)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(previous_level)
        for name, value in details.items():
            setattr(logging, name, value)


def quiet_grpc_core(environ: MutableMapping[str, str] | None = None) -> None:
    """Limit grpc's C core to errors on stderr, unless ``GRPC_VERBOSITY`` is already set.

    The core writes its own plain-text lines straight to file descriptor 2 (for example an
    INFO line "Got goaway" whenever a server restarts), which would break the JSON-lines log.
    It reads the variable once, when ``grpc`` is imported: call this before that import.
    """
    (os.environ if environ is None else environ).setdefault("GRPC_VERBOSITY", "ERROR")
