"""The parent <-> executor channel framing (executor.md §4.1).

Every message is one frame: a 4-byte big-endian length, then that many bytes of one msgpack
map. The parent writes requests to one dedicated pipe and reads responses from another (never
stdout). Both sides enforce ``max_frame_bytes``: a header above it is a protocol error, raised
before anything of the claimed size is allocated.

Messages (``"t"`` names the kind):

* ``ready``    executor -> parent, once: ``v`` (protocol version), ``pid``.
* ``exec``     parent -> executor: ``id`` and the request fields (``job``, ``kind``, ``index``,
  ``inst``, ``rg``, ``pkg``, ``func``, ``io``, ``hard_ms``).
* ``result``   executor -> parent: ``id``, ``ok``, then ``out`` (the output frame) or ``type``,
  ``msg``, ``tb``; and ``us`` (elapsed microseconds).
* ``shutdown`` parent -> executor: exit 0.

This module runs in the executor too: standard library and ``msgpack`` only.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

__all__ = [
    "HEADER",
    "PROTOCOL_VERSION",
    "ChannelError",
    "FrameReader",
    "decode_message",
    "encode_message",
    "read_frame_blocking",
    "write_all_blocking",
]

#: Version carried by ``ready``; the parent rejects any other.
PROTOCOL_VERSION = 1

#: The length prefix of every frame.
HEADER = struct.Struct(">I")


class ChannelError(Exception):
    """The channel broke its framing: an oversized header or an undecodable message."""


def encode_message(message: dict[str, Any], max_frame_bytes: int | None = None) -> bytes:
    """One frame (header plus msgpack map) for ``message``.

    Raises ``ChannelError`` when the body exceeds ``max_frame_bytes``.
    """
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if max_frame_bytes is not None and len(body) > max_frame_bytes:
        raise ChannelError(f"frame of {len(body)} bytes exceeds the {max_frame_bytes}-byte limit")
    return HEADER.pack(len(body)) + body


def decode_message(body: bytes) -> dict[str, Any]:
    """The message map in one frame body; raises ``ChannelError`` when it is not one."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # any msgpack failure is one protocol error
        raise ChannelError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ChannelError("frame is not a message map with a string 't'")
    return message


class FrameReader:
    """Reassembles frame bodies from arbitrarily chunked bytes (sans-I/O; used by the parent)."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being assembled

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame body it completes, in order.

        Raises ``ChannelError`` for a length header above ``max_frame_bytes``; nothing of the
        claimed size is allocated first.
        """
        self._buffer += data
        bodies: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return bodies
                (length,) = HEADER.unpack_from(self._buffer, 0)
                if length > self._max:
                    raise ChannelError(
                        f"frame header claims {length} bytes, above the {self._max}-byte limit"
                    )
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return bodies
            bodies.append(bytes(self._buffer[: self._need]))
            del self._buffer[: self._need]
            self._need = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)


def read_frame_blocking(fd: int, max_frame_bytes: int) -> bytes | None:
    """Read one frame body from ``fd`` (blocking); ``None`` on EOF before a header starts.

    Raises ``ChannelError`` for an oversized header or EOF inside a frame.
    """
    header = _read_exact(fd, HEADER.size, allow_eof=True)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > max_frame_bytes:
        raise ChannelError(
            f"frame header claims {length} bytes, above the {max_frame_bytes}-byte limit"
        )
    body = _read_exact(fd, length, allow_eof=False)
    assert body is not None
    return body


def _read_exact(fd: int, size: int, *, allow_eof: bool) -> bytes | None:
    data = os.read(fd, size) if size else b""
    if not data and size:
        if allow_eof:
            return None
        raise ChannelError("EOF inside a frame")
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            raise ChannelError("EOF inside a frame")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_all_blocking(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (blocking), in as few calls as the pipe allows."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
