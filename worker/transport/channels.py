"""Channel pools: ``connection_pool_size`` plaintext channels per peer, used round-robin.

Spider opens several channels per server to spread load over HTTP/2 connections; the pool has no
wire meaning. Each channel gets its own subchannel pool so the channels really are separate
connections instead of sharing one, and a parked call (:mod:`.parking`) that keeps grpcio's
completion thread of the channel alive between calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

import attrs
import grpc
import trio

from worker.transport.bridge import await_future
from worker.transport.parking import ParkedCall, park

__all__ = ["ChannelOptions", "ChannelPool", "StubPool"]

_StubT = TypeVar("_StubT")


@attrs.frozen(slots=True)
class ChannelOptions:
    """Message-size limits (bytes) and reconnect delays (seconds) applied to every channel.

    grpcio waits between reconnection attempts on its own (by default 1 s growing to 120 s),
    and while it waits every call fails at once with ``UNAVAILABLE``: after a long outage a
    worker would stay cut off for up to two minutes although the server is back. The reconnect
    delays are therefore bounded like the worker's own retries (``backoff.*``).
    """

    max_send_bytes: int = 4 * 1024 * 1024
    max_receive_bytes: int = 256 * 1024 * 1024
    reconnect_initial_sec: float = 0.1
    reconnect_max_sec: float = 2.0

    def as_grpc(self) -> list[tuple[str, Any]]:
        """The grpcio channel arguments."""
        return [
            ("grpc.max_send_message_length", self.max_send_bytes),
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", _milliseconds(self.reconnect_initial_sec)),
            ("grpc.max_reconnect_backoff_ms", _milliseconds(self.reconnect_max_sec)),
        ]


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class ChannelPool:
    """``size`` insecure channels to ``host:port``; ``StubPool`` uses them round-robin."""

    def __init__(self, host: str, port: int, size: int, options: ChannelOptions) -> None:
        if size < 1:
            raise ValueError(f"a channel pool needs at least one channel, got {size}")
        self.target: Final = f"{_bracket_ipv6(host)}:{port}"
        self._channels: tuple[Any, ...] = tuple(
            grpc.insecure_channel(self.target, options=options.as_grpc()) for _ in range(size)
        )
        #: One parked call per channel (None where grpcio did not allow it); close ends them.
        self.parked: tuple[ParkedCall | None, ...] = tuple(park(c) for c in self._channels)
        self._closed = False

    @property
    def channels(self) -> tuple[Any, ...]:
        """Every ``grpc.Channel`` of the pool."""
        return self._channels

    async def wait_ready(self, within_sec: float) -> bool:
        """Wait until every channel connected; ``False`` when ``within_sec`` passed first.

        Connecting sends no RPC: it only establishes the HTTP/2 connections.
        """
        with trio.move_on_after(within_sec):
            for channel in self._channels:
                await await_future(grpc.channel_ready_future(channel))
            return True
        return False

    def close(self) -> None:
        """Close every channel (idempotent); in-flight calls end with ``CANCELLED``."""
        if not self._closed:
            self._closed = True
            for channel in self._channels:
                channel.close()


class StubPool(Generic[_StubT]):
    """One generated stub per channel of a pool, handed out in the same round-robin order."""

    def __init__(self, pool: ChannelPool, make_stub: Callable[[Any], _StubT]) -> None:
        self._stubs = tuple(make_stub(channel) for channel in pool.channels)
        self._cycle: Iterator[_StubT] = itertools.cycle(self._stubs)

    def next(self) -> _StubT:
        """The stub of the next channel in round-robin order."""
        return next(self._cycle)


def _bracket_ipv6(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
