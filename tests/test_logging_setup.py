"""The worker's log formats: console key=value, JSON lines, and the terminal-based default."""

from __future__ import annotations

import datetime
import io
import json
import logging
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest

from worker.logging_setup import (
    ConsoleFormatter,
    FieldsFormatter,
    JsonFormatter,
    configure_logging,
    logging_configured,
    resolve_format,
    utc_timestamp,
)


def _record(fields: dict[str, Any] | None = None) -> logging.LogRecord:
    record = logging.LogRecord(
        "worker.machine", logging.INFO, __file__, 1, "moved %s", ("on",), None
    )
    if fields is not None:
        record.fields = fields
    return record


def test_console_format_renders_fields_as_key_value() -> None:
    line = ConsoleFormatter().format(
        _record({"from": "Idle", "to": "Awaiting", "assignment": "3/0", "note": "two words"})
    )
    assert "INFO    worker.machine: moved on" in line
    assert line.endswith('from=Idle to=Awaiting assignment=3/0 note="two words"')


def test_a_file_format_appends_the_fields_as_the_console_does() -> None:
    formatter = FieldsFormatter("%(levelname)s %(name)s %(message)s")
    record = _record({"em_id": 9, "reason": "stale scheduler", "empty": ""})
    assert formatter.format(record) == (
        'INFO worker.machine moved on em_id=9 reason="stale scheduler" empty=""'
    )
    assert formatter.format(_record()) == "INFO worker.machine moved on"


def test_console_values_render_as_json_scalars_quoted_only_when_needed() -> None:
    fields = {
        "count": 42,
        "negative": -7,
        "flag": True,
        "nothing": None,
        "seconds": 0.25,
        "ids": [1, 2],
        "quote": 'say "hi"',
        "key": "a=b",
        "line": "one\ntwo",
    }
    line = ConsoleFormatter().format(_record(fields))
    assert line.endswith(
        " count=42 negative=-7 flag=true nothing=null seconds=0.25"
        ' ids="[1, 2]" quote="say \\"hi\\"" key="a=b" line="one\\ntwo"'
    )


def test_json_format_merges_fields_into_one_object() -> None:
    line = JsonFormatter().format(_record({"em_id": 11, "message": "clash", "records": ["a"]}))
    assert "\n" not in line
    decoded = json.loads(line)
    assert decoded["message"] == "moved on"
    assert decoded["field.message"] == "clash"
    assert decoded["em_id"] == 11
    assert decoded["records"] == ["a"]
    assert (decoded["level"], decoded["logger"]) == ("info", "worker.machine")
    assert decoded["ts"].endswith("Z")


def test_format_follows_the_terminal_unless_asked() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format(None, Terminal()) == "console"
    assert resolve_format(None, io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"


def test_configure_logging_writes_records_at_or_above_the_level() -> None:
    root = logging.getLogger()
    transitions = logging.getLogger("transitions")
    saved = (list(root.handlers), root.level, transitions.level)
    stream = io.StringIO()
    try:
        assert configure_logging(None, "warning", stream) == "json"  # not a terminal
        logging.getLogger("worker.test").info("below the level")
        logging.getLogger("worker.test").warning("kept", extra={"fields": {"em_id": 3}})
        assert transitions.level == logging.WARNING
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        transitions.setLevel(saved[2])
    (line,) = stream.getvalue().splitlines()
    decoded = json.loads(line)
    assert (decoded["message"], decoded["level"], decoded["em_id"]) == ("kept", "warning", 3)


@hypothesis.given(seconds=st.floats(min_value=0, max_value=4e9))
def test_timestamps_render_as_datetime_does(seconds: float) -> None:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    assert utc_timestamp(seconds) == moment.isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
    record = _record()
    record.created = seconds
    local = datetime.datetime.fromtimestamp(seconds)
    assert (
        ConsoleFormatter()
        .format(record)
        .startswith(f"{local:%H:%M:%S}.{local.microsecond // 1000:03d} INFO")
    )


@hypothesis.given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_console_floats_render_as_json_does(value: float) -> None:
    line = ConsoleFormatter().format(_record({"value": value}))
    assert line.endswith(f" value={json.dumps(value)}")


@pytest.mark.parametrize("line_buffering", [True, False])
def test_every_line_is_out_once_logged(line_buffering: bool) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=line_buffering)
    with logging_configured("console", "info", stream):
        logging.getLogger("worker.test").info("first", extra={"fields": {"n": 1}})
        assert raw.getvalue().decode().endswith("first n=1\n")
        logging.getLogger("worker.test").info("second")
        assert raw.getvalue().decode().endswith("second\n")


def test_records_skip_what_no_format_shows_while_configured() -> None:
    before = (logging.logThreads, logging.logProcesses, logging._srcfile)
    with logging_configured("console", "info", io.StringIO()):
        record = logging.getLogger("worker.test").makeRecord(
            "worker.test", logging.INFO, "f.py", 1, "m", (), None
        )
        assert (logging.logThreads, logging.logProcesses) == (False, False)
        assert (record.thread, record.process) == (None, None)
    assert (logging.logThreads, logging.logProcesses, logging._srcfile) == before
