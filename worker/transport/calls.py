"""One worker RPC through the bridge, with the status mapped to the typed error of its ``Rpc``."""

from __future__ import annotations

from typing import Any, TypeVar

from worker.errors import Rpc, error_for
from worker.transport.bridge import CallFailed, UnaryMultiCallable, unary_call

__all__ = ["call_rpc"]

_ResponseT = TypeVar("_ResponseT")


async def call_rpc(
    rpc: Rpc, method: UnaryMultiCallable[Any, _ResponseT], request: object, deadline_sec: float
) -> _ResponseT:
    """Call ``method``; a non-OK status raises ``error_for(rpc, code, details)``."""
    try:
        return await unary_call(method, request, deadline_sec=deadline_sec)
    except CallFailed as failure:
        raise error_for(rpc, failure.code, failure.details) from None
