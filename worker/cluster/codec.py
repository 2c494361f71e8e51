"""Byte formats the storage produces and checks: wire frames and SerializedTaskOutputs.

protocol.md §4: a frame is ``count:u32le`` then ``count`` times ``len:u32le bytes``; a commit
task's input is an option byte (0 = plain frame, 1 = zstd frame) chosen by the 1024-byte rule,
with the zstd frame written by a streaming compressor so it carries no content size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import zstandard

__all__ = [
    "ZSTD_THRESHOLD_BYTES",
    "FrameError",
    "decode_frame",
    "decode_output_values",
    "decode_task_outputs",
    "encode_frame",
    "encode_task_outputs",
]

#: Above this sum of payload lengths the job outputs are zstd-compressed (Spider's rule).
ZSTD_THRESHOLD_BYTES = 1024
_U32 = struct.Struct("<I")
_MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024


class FrameError(ValueError):
    """A frame or SerializedTaskOutputs buffer is malformed."""


def encode_frame(payloads: Iterable[bytes]) -> bytes:
    """The wire frame holding ``payloads`` in order."""
    items = list(payloads)
    parts = [_U32.pack(len(items))]
    for payload in items:
        parts.append(_U32.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_frame(data: bytes) -> list[bytes]:
    """The payloads of a wire frame; trailing bytes are ignored, as Spider does."""
    if len(data) < 4:
        raise FrameError(f"frame shorter than its 4-byte header ({len(data)} bytes)")
    (count,) = _U32.unpack_from(data, 0)
    offset = 4
    payloads: list[bytes] = []
    for position in range(count):
        if offset + 4 > len(data):
            raise FrameError(f"frame cut short in the header of payload {position}")
        (length,) = _U32.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise FrameError(f"frame cut short in payload {position}")
        payloads.append(data[offset : offset + length])
        offset += length
    return payloads


def encode_task_outputs(payloads: Sequence[bytes]) -> bytes:
    """SerializedTaskOutputs of ``payloads``: option 1 (zstd, streamed) above 1024 payload bytes."""
    frame = encode_frame(payloads)
    if sum(len(payload) for payload in payloads) <= ZSTD_THRESHOLD_BYTES:
        return b"\x00" + frame
    # A streaming compressor writes no content size in the frame header, like Spider's storage.
    compressor = zstandard.ZstdCompressor().compressobj()
    compressed = compressor.compress(frame) + compressor.flush()
    return b"\x01" + compressed


def decode_task_outputs(data: bytes) -> list[bytes]:
    """The payloads of a SerializedTaskOutputs buffer (either option, any size)."""
    if not data:
        raise FrameError("empty SerializedTaskOutputs")
    option, body = data[0], data[1:]
    if option == 0:
        return decode_frame(body)
    if option == 1:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        try:
            frame = decompressor.decompress(body)
        except zstandard.ZstdError as error:
            raise FrameError(f"bad zstd frame: {error}") from error
        if len(frame) > _MAX_DECOMPRESSED_BYTES:
            raise FrameError("decompressed outputs too large")
        return decode_frame(frame)
    raise FrameError(f"unknown SerializedTaskOutputs option {option}")


def decode_output_values(data: bytes) -> list[Any]:
    """The msgpack values a SerializedTaskOutputs buffer carries (one per sink output)."""
    payloads = decode_task_outputs(data)
    try:
        return [msgpack.unpackb(payload, raw=False, strict_map_key=False) for payload in payloads]
    except ValueError as error:  # msgpack's unpack errors are ValueErrors
        raise FrameError(f"an output is not one msgpack value: {error}") from error
