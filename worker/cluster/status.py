"""The reference cluster's status call: one small gRPC method of ours on the storage port.

Spider's services have no way for a client to learn whether any worker is asking for work, so
``submit --wait`` could not tell "the job is slow" from "nobody will ever run it". The reference
cluster therefore serves one extra unary method, ``/worker.cluster.ClusterStatus/Get``, next to
the storage services. Request: empty bytes. Response: a UTF-8 JSON object with the fields of
:class:`ClusterStatus`. A storage that does not serve it (Spider's) answers ``UNIMPLEMENTED``;
clients then go without.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

import attrs
import cattrs
import grpc

__all__ = ["STATUS_METHOD", "ClusterStatus", "fetch_status", "status_handler"]

STATUS_SERVICE: Final = "worker.cluster.ClusterStatus"
#: The full method name clients call.
STATUS_METHOD: Final = f"/{STATUS_SERVICE}/Get"


@attrs.frozen(slots=True)
class ClusterStatus:
    """What the cluster tells a client about itself."""

    #: The storage's current session.
    session_id: int
    #: Seconds since any ``NextTask`` call arrived at the scheduler or ended; 0 while one waits.
    idle_poll_sec: float
    #: Assignments the scheduler handed out that no worker has acknowledged yet (busy workers).
    outstanding: int


#: Unknown keys are ignored, so a newer cluster may add fields without breaking older clients.
_converter = cattrs.Converter(forbid_extra_keys=False)


def _serialize(status: ClusterStatus) -> bytes:
    return json.dumps(_converter.unstructure(status)).encode()


def status_handler(provider: Callable[[], ClusterStatus]) -> grpc.GenericRpcHandler:
    """A handler serving :data:`STATUS_METHOD` from ``provider`` (add it to a server)."""

    def get(request: bytes, context: grpc.ServicerContext) -> ClusterStatus:
        return provider()

    return grpc.method_handlers_generic_handler(
        STATUS_SERVICE,
        {
            "Get": grpc.unary_unary_rpc_method_handler(
                get, request_deserializer=None, response_serializer=_serialize
            )
        },
    )


def fetch_status(channel: grpc.Channel, timeout_sec: float) -> ClusterStatus | None:
    """The cluster's status, or None when the server does not serve the method.

    Raises :class:`grpc.RpcError` for any other failure (the caller decides about transport).
    """
    call = channel.unary_unary(STATUS_METHOD)
    try:
        raw = call(b"", timeout=timeout_sec)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise
    try:
        return _converter.structure(json.loads(raw), ClusterStatus)
    except (ValueError, cattrs.BaseValidationError):
        return None
