"""The task I/O byte formats: executor.md §3 hex examples, H13, H14 and H17."""

from __future__ import annotations

import contextlib
from collections import namedtuple
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from worker import taskio
from worker.executor.wire import (
    EMPTY_FRAME,
    FrameDecodeError,
    GraphOutputsDecodeError,
    OutputEncodeError,
    decode_frame,
    decode_graph_outputs,
    decode_values,
    encode_frame,
    encode_graph_outputs,
    encode_return,
    encode_values,
)

RETURN_EXAMPLES: list[tuple[Any, str]] = [
    (None, "00 00 00 00"),
    ((), "00 00 00 00"),
    (55, "01 00 00 00 01 00 00 00 37"),
    ((10, "hi"), "02 00 00 00 01 00 00 00 0a 03 00 00 00 a2 68 69"),
    ((None,), "01 00 00 00 01 00 00 00 c0"),
    (-1, "01 00 00 00 01 00 00 00 ff"),
    (300, "01 00 00 00 03 00 00 00 cd 01 2c"),
    ([1, 2], "01 00 00 00 03 00 00 00 92 01 02"),
    ({"a": 1}, "01 00 00 00 04 00 00 00 81 a1 61 01"),
    (b"ab", "01 00 00 00 04 00 00 00 c4 02 61 62"),
    (1.5, "01 00 00 00 09 00 00 00 cb 3f f8 00 00 00 00 00 00"),
]


@pytest.mark.parametrize(("value", "hex_frame"), RETURN_EXAMPLES)
def test_return_examples_encode_and_decode(value: Any, hex_frame: str) -> None:
    frame = bytes.fromhex(hex_frame)
    assert encode_return(value) == frame
    decoded = decode_values(frame)
    if value is None or value == ():
        assert decoded == []
    elif isinstance(value, tuple):
        assert decoded == list(value)
    else:
        assert decoded == [value]


def test_fibonacci_input_example() -> None:
    assert taskio.encode_inputs(10) == bytes.fromhex("01 00 00 00 01 00 00 00 0a")
    assert taskio.decode_inputs(bytes.fromhex("01 00 00 00 01 00 00 00 0a")) == [10]


def test_protocol_two_payload_example() -> None:
    frame = bytes.fromhex("02 00 00 00 03 00 00 00 a2 68 69 01 00 00 00 2a")
    assert taskio.decode_outputs(frame) == ["hi", 42]
    assert taskio.encode_inputs("hi", 42) == frame


def test_graph_outputs_example_is_20_bytes() -> None:
    expected = bytes.fromhex("00 03 00 00 00 01 00 00 00 03 01 00 00 00 ff 01 00 00 00 fe")
    assert len(expected) == 20
    assert taskio.encode_graph_output_values([3, -1, -2]) == expected
    assert taskio.decode_graph_output_values(expected) == [3, -1, -2]


def test_named_tuple_gives_one_payload_per_field() -> None:
    pair = namedtuple("pair", "a b")
    assert encode_return(pair(10, "hi")) == encode_return((10, "hi"))


def test_unencodable_value_names_position_and_type() -> None:
    with pytest.raises(OutputEncodeError, match=r"output 1 of type object"):
        encode_return((1, object()))
    with pytest.raises(OutputEncodeError, match="output 0 of type int"):
        encode_return(2**64)
    assert encode_return(2**64 - 1) == encode_values([2**64 - 1])
    assert encode_return(-(2**63)) == encode_values([-(2**63)])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00\x00",
        bytes.fromhex("01 00 00 00 05 00 00 00 0a"),
        bytes.fromhex("02 00 00 00 01 00 00 00 0a"),
        bytes.fromhex("01 00 00 00 01 00"),
    ],
)
def test_malformed_frames_raise(data: bytes) -> None:
    with pytest.raises(FrameDecodeError):
        decode_frame(data)


@pytest.mark.parametrize("payload", [b"\xc1", b"", b"\x01\x02", b"\x92\x01", b"\xd9\x05ab"])
def test_bad_payloads_raise(payload: bytes) -> None:
    with pytest.raises(FrameDecodeError):
        decode_values(encode_frame([payload]))


def test_trailing_bytes_are_ignored() -> None:
    assert decode_values(bytes.fromhex("01 00 00 00 01 00 00 00 37 ff ff")) == [55]


def test_integer_map_keys_decode() -> None:
    payload = msgpack.packb({1: "a", 2: [1, 2]})
    assert decode_values(encode_frame([payload])) == [{1: "a", 2: [1, 2]}]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(msgpack_values, max_size=8))
def test_h13_frame_round_trip(values: list[Any]) -> None:
    frame = encode_values(values)
    assert decode_values(frame) == values
    assert decode_values(frame + b"\x00garbage") == values


def test_h13_empty_list_is_empty_frame() -> None:
    assert encode_values([]) == EMPTY_FRAME == b"\x00\x00\x00\x00"


@given(st.binary(max_size=64))
def test_h13_garbage_gives_the_documented_error(data: bytes) -> None:
    with contextlib.suppress(FrameDecodeError):
        decode_values(data)


@given(st.lists(st.binary(max_size=16), max_size=6), st.binary(max_size=8))
def test_h13_raw_frames_round_trip(payloads: list[bytes], trailing: bytes) -> None:
    assert decode_frame(encode_frame(payloads) + trailing) == payloads


@given(msgpack_values | st.tuples(msgpack_values, msgpack_values) | st.just(()))
def test_h14_return_rule(value: Any) -> None:
    count = int.from_bytes(encode_return(value)[:4], "little")
    if value is None:
        assert count == 0
    elif isinstance(value, tuple):
        assert count == len(value)
    else:
        assert count == 1


@given(st.lists(st.binary(max_size=40), max_size=40))
def test_h17_both_options_decode_alike(payloads: list[bytes]) -> None:
    frame = encode_frame(payloads)
    plain = b"\x00" + frame
    compressed = b"\x01" + zstandard.ZstdCompressor().compress(frame)
    assert decode_graph_outputs(plain) == payloads
    assert decode_graph_outputs(compressed) == payloads
    assert decode_graph_outputs(encode_graph_outputs(payloads)) == payloads


def test_h17_zstd_without_content_size_decodes() -> None:
    frame = encode_values(list(range(500)))
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    stream = compressor.compressobj()
    body = stream.compress(frame) + stream.flush()
    assert decode_graph_outputs(b"\x01" + body) == decode_frame(frame)


def test_storage_threshold_picks_the_option() -> None:
    small = [msgpack.packb(1)] * 1024
    assert encode_graph_outputs(small)[0] == 0
    large = [msgpack.packb(100000)] * 400  # 5-byte payloads, 2,000 bytes in all
    encoded = encode_graph_outputs(large)
    assert encoded[0] == 1
    assert decode_graph_outputs(encoded) == large
    # Spider's storage form: the zstd frame header without the decompressed size.
    streamed = encode_graph_outputs(large, content_size=False)
    assert zstandard.get_frame_parameters(streamed[1:]).content_size == (
        zstandard.CONTENTSIZE_UNKNOWN
    )
    assert zstandard.get_frame_parameters(encoded[1:]).content_size == len(encode_frame(large))
    assert decode_graph_outputs(streamed) == large


@given(st.integers(2, 255), st.binary(max_size=32))
def test_h17_unknown_option_raises(option: int, body: bytes) -> None:
    with pytest.raises(GraphOutputsDecodeError, match="option"):
        decode_graph_outputs(bytes([option]) + body)


def test_h17_empty_buffer_raises() -> None:
    with pytest.raises(GraphOutputsDecodeError, match="empty"):
        decode_graph_outputs(b"")


@given(st.binary(max_size=64))
def test_h17_garbage_zstd_body_raises_the_documented_error(body: bytes) -> None:
    with contextlib.suppress(GraphOutputsDecodeError):
        decode_graph_outputs(b"\x01" + body)


def test_decompression_bomb_stops_at_the_cap() -> None:
    bomb = b"\x01" + zstandard.ZstdCompressor().compress(b"\x00" * (4 * 1024 * 1024))
    with pytest.raises(GraphOutputsDecodeError, match="cap"):
        decode_graph_outputs(bomb, max_bytes=1024 * 1024)
