"""Log splitting and tagging (executor.md §7, H16)."""

from __future__ import annotations

import io
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.executor.child import marker
from worker.executor.logs import (
    DroppedLine,
    ExecutorLogLine,
    JsonLinesSink,
    LineSplitter,
    LineTagger,
    SplitLine,
    TaskTag,
)
from worker.logging_setup import utc_timestamp


def split(
    data: bytes, cap: int, cuts: list[int] | None = None, prefix: bytes = b""
) -> list[SplitLine | DroppedLine]:
    splitter = LineSplitter(cap, marker_prefix=prefix)
    events: list[SplitLine | DroppedLine] = []
    position = 0
    index = 0
    while position < len(data):
        size = cuts[index % len(cuts)] if cuts else len(data)
        index += 1
        events.extend(splitter.feed(data[position : position + size]))
        position += size
    events.extend(splitter.finish())
    return events


def test_spec_example_with_cap_8() -> None:
    events = split(b"short\nfar-too-long-to-capture\nnext\n", 8)
    assert events == [SplitLine(b"short"), DroppedLine(23), SplitLine(b"next")]


def test_crlf_is_stripped_and_unterminated_last_line_is_kept() -> None:
    assert split(b"a\r\nb\r\ntail", 100) == [SplitLine(b"a"), SplitLine(b"b"), SplitLine(b"tail")]


def test_line_of_exactly_the_cap_is_kept_even_with_cr() -> None:
    assert split(b"12345678\r\n123456789\n", 8) == [SplitLine(b"12345678"), DroppedLine(9)]


def test_unterminated_overlong_tail_is_dropped() -> None:
    assert split(b"ok\n" + b"z" * 50, 8) == [SplitLine(b"ok"), DroppedLine(50)]


def test_overlong_line_is_not_buffered() -> None:
    splitter = LineSplitter(8)
    splitter.feed(b"x" * 10_000)
    assert len(splitter._buffer) == 0
    assert splitter.feed(b"y" * 10_000 + b"\nafter\n") == [DroppedLine(20_000), SplitLine(b"after")]


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        LineSplitter(0)


stream_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"a", b"bc", b"\xe9", b"\xff\xfe", b"0123456789"]),
    max_size=60,
).map(b"".join)


@given(stream_bytes, st.integers(1, 12), st.lists(st.integers(1, 7), min_size=1, max_size=10))
def test_h16_chunking_does_not_matter(data: bytes, cap: int, cuts: list[int]) -> None:
    assert split(data, cap, cuts) == split(data, cap)


@given(stream_bytes, st.integers(1, 12))
def test_h16_long_lines_dropped_short_kept(data: bytes, cap: int) -> None:
    events = split(data, cap)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    assert len(events) == len(raw_lines)
    for raw, event in zip(raw_lines, events, strict=True):
        content = raw[:-1] if raw.endswith(b"\r") else raw
        if len(content) > cap:
            assert event == DroppedLine(len(raw))
        else:
            assert event == SplitLine(content)
            content.decode("utf-8", "replace")  # any bytes decode lossily


MARK = marker("abcd", "E", 12)
PREFIX = b"\x1eabcd "


def test_marker_does_not_count_against_the_cap() -> None:
    assert split(b"12345678" + MARK, 8, prefix=PREFIX) == [SplitLine(b"12345678" + MARK[:-1])]
    assert split(MARK, 8, prefix=PREFIX) == [SplitLine(MARK[:-1])]


def test_marker_survives_an_overlong_partial_line() -> None:
    data = b"x" * 500 + MARK + b"next\n"
    expected = [DroppedLine(500), SplitLine(MARK[:-1]), SplitLine(b"next")]
    assert split(data, 8, prefix=PREFIX) == expected
    assert split(data, 8, [3], prefix=PREFIX) == expected
    assert split(b"x" * 20 + MARK, 8, prefix=PREFIX) == [DroppedLine(20), SplitLine(MARK[:-1])]


marked_stream = st.lists(
    st.sampled_from([b"\n", b"\r", b"a", b"0123456789", b"\xff", MARK, MARK[:-1]]),
    max_size=40,
).map(b"".join)


@given(marked_stream, st.integers(1, 12), st.lists(st.integers(1, 9), min_size=1, max_size=10))
def test_h16_chunking_does_not_matter_with_markers(data: bytes, cap: int, cuts: list[int]) -> None:
    assert split(data, cap, cuts, PREFIX) == split(data, cap, prefix=PREFIX)


def test_tagger_tags_lines_between_markers() -> None:
    tag = TaskTag(7, "Index(0)", 11)
    lookup = {3: tag}
    tagger = LineTagger("abcd", lookup)
    begin = marker("abcd", "B", 3).rstrip(b"\n")
    end = marker("abcd", "E", 3).rstrip(b"\n")
    # the pool hands this prefix to the splitter: it must be how the executor's markers start
    assert tagger.marker_prefix == PREFIX
    assert begin.startswith(PREFIX)
    assert tagger.process(b"idle") == ("idle", None)
    assert tagger.process(begin) == (None, None)
    assert tagger.process(b"caf\xe9") == ("caf\ufffd", tag)
    assert tagger.process(b"partial" + end) == ("partial", tag)
    assert tagger.process(b"after") == ("after", None)
    assert lookup == {}


def test_tagger_ignores_markers_with_another_nonce() -> None:
    tagger = LineTagger("abcd", {1: TaskTag(1, "Commit", 2)})
    forged = marker("ffff", "B", 1).rstrip(b"\n")
    assert tagger.process(forged) == (forged.decode(), None)
    assert tagger.current is None


def test_json_lines_sink_format() -> None:
    out = io.StringIO()
    sink = JsonLinesSink(out)
    sink(ExecutorLogLine(2, "hé", TaskTag(7, "Index(0)", 11), read_at=1_700_000_000.5))
    sink(ExecutorLogLine(3, "idle", read_at=1_700_000_000.0004))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {
        "ts": "2023-11-14T22:13:20.500Z",
        "executor_id": 2,
        "job_id": 7,
        "task_id": "Index(0)",
        "task_instance_id": 11,
        "line": "hé",
    }
    assert second == {"ts": "2023-11-14T22:13:20.000Z", "executor_id": 3, "line": "idle"}


def test_a_line_is_stamped_when_it_is_made_by_default() -> None:
    before = time.time()
    line = ExecutorLogLine(1, "x")
    assert before <= line.read_at <= time.time()
    assert utc_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(1.2345) == "1970-01-01T00:00:01.234Z"  # truncated to the millisecond
