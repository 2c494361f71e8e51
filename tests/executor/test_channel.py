"""Channel framing: H15 (arbitrary chunking, oversized headers) and the blocking reader."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.executor.channel import (
    HEADER,
    ChannelError,
    FrameReader,
    decode_message,
    encode_message,
    read_frame_blocking,
    write_all_blocking,
)

messages = st.lists(
    st.fixed_dictionaries(
        {"t": st.sampled_from(["exec", "result", "ready"]), "id": st.integers(0, 2**32)},
        optional={"io": st.binary(max_size=300), "msg": st.text(max_size=50)},
    ),
    max_size=6,
)


@given(messages, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_h15_any_chunking_reassembles(sent: list[dict[str, Any]], cuts: list[int]) -> None:
    stream = b"".join(encode_message(m) for m in sent)
    reader = FrameReader(max_frame_bytes=1 << 20)
    received: list[dict[str, Any]] = []
    position = 0
    index = 0
    while position < len(stream):
        size = cuts[index % len(cuts)]
        index += 1
        received.extend(decode_message(b) for b in reader.feed(stream[position : position + size]))
        position += size
    assert received == sent
    assert reader.pending_bytes == 0


@given(st.integers(1025, 2**32 - 1))
def test_h15_oversized_header_raises_without_allocating(claimed: int) -> None:
    reader = FrameReader(max_frame_bytes=1024)
    with pytest.raises(ChannelError, match="above the 1024-byte limit"):
        reader.feed(HEADER.pack(claimed) + b"abc")
    # nothing of the claimed size was buffered
    assert reader.pending_bytes <= HEADER.size + 3


@given(st.binary(max_size=64))
def test_h15_garbage_bodies_give_channel_error(body: bytes) -> None:
    try:
        message = decode_message(body)
    except ChannelError:
        return
    assert isinstance(message, dict)
    assert isinstance(message["t"], str)


def test_encode_refuses_oversized_frames() -> None:
    with pytest.raises(ChannelError, match="exceeds"):
        encode_message({"t": "exec", "io": b"x" * 2000}, max_frame_bytes=1000)


def test_blocking_reader_over_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        write_all_blocking(write_fd, encode_message({"t": "ready", "v": 1}))
        write_all_blocking(write_fd, HEADER.pack(10) + b"abc")
        os.close(write_fd)
        write_fd = -1
        body = read_frame_blocking(read_fd, 1024)
        assert body is not None
        assert decode_message(body) == {"t": "ready", "v": 1}
        with pytest.raises(ChannelError, match="EOF inside a frame"):
            read_frame_blocking(read_fd, 1024)
        assert read_frame_blocking(read_fd, 1024) is None
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_blocking_reader_rejects_oversized_header() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, HEADER.pack(5000))
        with pytest.raises(ChannelError, match="above the 100-byte limit"):
            read_frame_blocking(read_fd, 100)
    finally:
        os.close(read_fd)
        os.close(write_fd)
