"""Spider's task I/O byte formats: the wire frame and ``SerializedTaskOutputs`` (executor.md §3).

A wire frame is ``count:u32le`` followed by ``count`` payloads, each ``len:u32le`` plus exactly
one msgpack value. ``SerializedTaskOutputs`` is an option byte (0: plain frame, 1: the frame as
one zstd frame) followed by the body.

This module runs inside the executor subprocess, so it imports only the standard library and
``msgpack`` (``zstandard`` lazily, on first use). Every decoder raises one documented error type
for any malformed input, never another exception.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

__all__ = [
    "EMPTY_FRAME",
    "ZSTD_THRESHOLD_BYTES",
    "FrameDecodeError",
    "GraphOutputsDecodeError",
    "OutputEncodeError",
    "decode_frame",
    "decode_graph_outputs",
    "decode_graph_payloads",
    "decode_payload",
    "decode_values",
    "encode_frame",
    "encode_graph_outputs",
    "load_zstandard",
    "encode_payload",
    "encode_return",
    "encode_values",
]

#: The frame with zero payloads.
EMPTY_FRAME = b"\x00\x00\x00\x00"

#: Spider's storage compresses job outputs whose payload bytes sum to more than this.
ZSTD_THRESHOLD_BYTES = 1024

_U32 = struct.Struct("<I")
_OPTION_WIRE = 0
_OPTION_ZSTD = 1
_ZSTD_READ_CHUNK = 1 << 16
#: ``sys.path`` when this module was imported: in an executor, before ``package_dir`` was added.
_OWN_PATH = list(sys.path)


class FrameDecodeError(ValueError):
    """A wire frame or one of its payloads is malformed (reported as ``InputDecodeError``)."""


class GraphOutputsDecodeError(ValueError):
    """A ``SerializedTaskOutputs`` buffer is malformed (empty, unknown option, bad zstd/frame)."""


class OutputEncodeError(ValueError):
    """A returned value cannot be encoded as msgpack; names the element's position and type."""


def encode_frame(payloads: Iterable[bytes]) -> bytes:
    """The wire frame holding ``payloads`` (already-encoded msgpack values), in order."""
    parts = [b""]
    count = 0
    for payload in payloads:
        parts.append(_U32.pack(len(payload)))
        parts.append(payload)
        count += 1
    parts[0] = _U32.pack(count)
    return b"".join(parts)


def decode_frame(data: bytes) -> list[bytes]:
    """The raw payloads of the wire frame ``data``; trailing bytes are ignored (as in Spider).

    Raises ``FrameDecodeError`` when ``data`` is shorter than 4 bytes or a header or payload is
    cut short. Payload contents are not checked here (see ``decode_payload``).
    """
    view = memoryview(data)
    size = len(view)
    if size < 4:
        raise FrameDecodeError(f"malformed frame: {size} bytes, need at least a 4-byte count")
    (count,) = _U32.unpack_from(view, 0)
    offset = 4
    payloads: list[bytes] = []
    for position in range(count):
        if offset + 4 > size:
            raise FrameDecodeError(f"malformed frame: length of payload {position} is cut short")
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise FrameDecodeError(
                f"malformed frame: payload {position} needs {length} bytes, {size - offset} remain"
            )
        payloads.append(bytes(view[offset : offset + length]))
        offset += length
    return payloads


def encode_payload(value: Any) -> bytes:
    """``value`` as one msgpack payload (str as str, bytes as bin)."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def decode_payload(payload: bytes, position: int = 0) -> Any:
    """The one msgpack value in ``payload`` (maps may have non-string keys; arrays are lists).

    Raises ``FrameDecodeError`` when the payload is not exactly one valid msgpack value.
    """
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types; callers get one documented error
        raise FrameDecodeError(
            f"payload {position} is not exactly one msgpack value ({type(exc).__name__}: {exc})"
        ) from None


def decode_values(data: bytes) -> list[Any]:
    """Decode the frame ``data`` into its values, one per payload."""
    return [decode_payload(p, i) for i, p in enumerate(decode_frame(data))]


def encode_values(values: Sequence[Any]) -> bytes:
    """The frame with one payload per element of ``values``.

    Raises ``OutputEncodeError`` naming the first element that msgpack cannot encode (including
    integers outside -2**63..2**64-1).
    """
    payloads = []
    for position, value in enumerate(values):
        try:
            payloads.append(encode_payload(value))
        except Exception as exc:  # TypeError, OverflowError, ValueError (depth) ...
            raise OutputEncodeError(
                f"output {position} of type {type(value).__qualname__} cannot be encoded "
                f"as msgpack ({type(exc).__name__}: {exc})"
            ) from None
    return encode_frame(payloads)


def encode_return(value: Any) -> bytes:
    """The output frame for a task's return value (executor.md §2.3).

    ``None`` gives zero payloads, any tuple (named tuples included) one payload per element, and
    anything else (a list included) exactly one payload.
    """
    if value is None:
        return EMPTY_FRAME
    if isinstance(value, tuple):
        return encode_values(value)
    return encode_values((value,))


def encode_graph_outputs(
    payloads: Sequence[bytes],
    *,
    compress: bool | None = None,
    level: int = 3,
    content_size: bool = True,
) -> bytes:
    """``SerializedTaskOutputs`` for raw ``payloads``.

    With ``compress=None`` the option follows Spider's storage: zstd (option 1) when the payload
    bytes sum to more than ``ZSTD_THRESHOLD_BYTES``, else the plain frame (option 0).
    ``content_size=False`` leaves the decompressed size out of the zstd frame header, as
    Spider's storage does (it writes with a streaming compressor).
    """
    frame = encode_frame(payloads)
    if compress is None:
        compress = sum(len(p) for p in payloads) > ZSTD_THRESHOLD_BYTES
    if not compress:
        return bytes([_OPTION_WIRE]) + frame
    compressor = _zstandard().ZstdCompressor(level=level, write_content_size=content_size)
    compressed: bytes = compressor.compress(frame)
    return bytes([_OPTION_ZSTD]) + compressed


def decode_graph_outputs(data: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> list[bytes]:
    """The raw payloads of a ``SerializedTaskOutputs`` buffer (option 0 or 1, any size).

    The zstd body is decompressed with a streaming reader capped at ``max_bytes`` of output, so
    frames without a content size work and decompression bombs stop early. Raises
    ``GraphOutputsDecodeError`` for an empty buffer, an unknown option byte, a bad zstd body, a
    body over the cap, or a malformed frame.
    """
    if not data:
        raise GraphOutputsDecodeError("empty SerializedTaskOutputs buffer (no option byte)")
    option = data[0]
    body = bytes(data[1:])
    if option == _OPTION_ZSTD:
        body = _zstd_decompress(body, max_bytes)
    elif option != _OPTION_WIRE:
        raise GraphOutputsDecodeError(f"unknown SerializedTaskOutputs option byte {option}")
    try:
        return decode_frame(body)
    except FrameDecodeError as exc:
        raise GraphOutputsDecodeError(f"graph outputs: {exc}") from None


def decode_graph_payloads(payloads: Sequence[bytes]) -> list[Any]:
    """The values of raw graph-output ``payloads``; ``GraphOutputsDecodeError`` for a bad one."""
    try:
        return [decode_payload(p, i) for i, p in enumerate(payloads)]
    except FrameDecodeError as exc:
        raise GraphOutputsDecodeError(f"graph outputs: {exc}") from None


def load_zstandard() -> None:
    """Import ``zstandard`` now (before an executor switches users); ``ImportError`` if absent."""
    _zstandard()


def _zstandard() -> Any:
    """The ``zstandard`` module, imported on first use (only commit tasks need it).

    The first import runs with ``sys.path`` as it was when this module was imported, so a task
    module in an executor's ``package_dir`` cannot shadow it or the modules it imports.
    """
    module = sys.modules.get("zstandard")
    if module is None:
        task_path = sys.path[:]
        sys.path[:] = _OWN_PATH
        try:
            import zstandard as module
        finally:
            sys.path[:] = task_path
    return module


def _zstd_decompress(body: bytes, max_bytes: int) -> bytes:
    import io

    zstandard = _zstandard()
    chunks: list[bytes] = []
    total = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
        with reader:
            while True:
                chunk = reader.read(min(_ZSTD_READ_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise GraphOutputsDecodeError(
                        f"zstd graph outputs exceed the {max_bytes}-byte cap"
                    )
                chunks.append(chunk)
    except GraphOutputsDecodeError:
        raise
    except Exception as exc:  # zstandard.ZstdError and friends
        raise GraphOutputsDecodeError(
            f"graph outputs: bad zstd body ({type(exc).__name__}: {exc})"
        ) from None
    return b"".join(chunks)
