"""Keep grpcio's per-channel completion thread alive between calls.

grpcio completes the call futures the bridge uses on one thread per channel, and that thread lives
only while the channel has a call in flight: the call that finds the channel idle starts a new
thread (``Thread.start`` waits until the thread runs), and the completion that leaves it idle ends
the thread. A worker's calls are sequential at ``slots: 1`` (poll, register, report), so nearly
every call paid for a thread start, about a tenth of the worker's CPU per task.

A *parked* call keeps the channel busy: a client call that starts no batch but "receive the
status", so nothing reaches the wire (no stream is opened, the server sees nothing) and nothing
completes it but the channel's ``close`` (which cancels every call of the channel, so the thread
ends with it) or the channel's destruction. grpcio counts it as a call in flight, so its
completion thread stays up for the channel's lifetime.

This uses grpcio's private call factory (``grpc._channel``). Parking is an optimisation only:
where grpcio's internals differ (another version), :func:`park` returns ``None`` and every call
works as before, only slower.
"""

from __future__ import annotations

import logging
from typing import Any, Final

__all__ = ["ParkedCall", "park"]

log = logging.getLogger("worker.transport.parking")

#: The method name the parked call is created with; it is never sent.
PARKED_METHOD: Final = b"/worker.transport.Parked/Never"


class ParkedCall:
    """One parked call on one channel; ``done`` once the channel cancelled it (close)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def _on_event(self, _event: object) -> bool:
        # Runs on grpcio's completion thread; True tells it the call is over.
        self.done = True
        return True


def park(channel: Any) -> ParkedCall | None:
    """Park one call on ``channel`` (a ``grpc.insecure_channel``); ``None`` when not possible."""
    try:
        from grpc._channel import _channel_managed_call_management
        from grpc._cython import cygrpc

        create = _channel_managed_call_management(channel._call_state)
        parked = ParkedCall()
        create(
            0,  # no flags
            PARKED_METHOD,
            None,  # host
            None,  # no deadline: it lasts until the channel closes
            None,  # metadata
            None,  # credentials
            ((cygrpc.ReceiveStatusOnClientOperation(0),),),
            parked._on_event,
            None,  # tracing context
            None,  # unregistered method
        )
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        # ValueError: the channel is closed already.
        log.debug("cannot park a call: %s", error)
        return None
    return parked
