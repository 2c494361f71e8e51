"""Every row of protocol.md section 5 over real gRPC: status code -> typed error, per RPC.

The expected kinds are written out here by hand (not read from ``worker.errors``), so a slip in
the shared table shows up as a failing row.
"""

from __future__ import annotations

import grpc
import pytest
import trio

from tests.transport.clients import METHOD_PATHS, SAMPLE_CALLS, Clients
from tests.transport.scripted import ScriptedServer, abort_with, closed_port
from worker.errors import (
    FinalReportError,
    IllegalIdError,
    InvalidInputError,
    MarkedDeadError,
    Rpc,
    RpcError,
    ServerError,
    StaleSessionError,
    StaleStateError,
    StatusCode,
    TransportError,
)
from worker.transport.channels import ChannelOptions, ChannelPool

_CODES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "INTERNAL",
    "UNKNOWN",
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
)

_SCHEDULER_LIKE = {
    "UNAVAILABLE": TransportError,
    "DEADLINE_EXCEEDED": TransportError,
    **dict.fromkeys(_CODES[2:], ServerError),
}
_REPORT = {
    "UNAVAILABLE": TransportError,
    "DEADLINE_EXCEEDED": TransportError,
    "NOT_FOUND": StaleSessionError,
    "FAILED_PRECONDITION": StaleStateError,
    "INVALID_ARGUMENT": FinalReportError,
    "INTERNAL": FinalReportError,
    "UNKNOWN": FinalReportError,
    "RESOURCE_EXHAUSTED": FinalReportError,
    "PERMISSION_DENIED": FinalReportError,
}
EXPECTED: dict[Rpc, dict[str, type[RpcError]]] = {
    # 5.1: NextTask, Heartbeat and Shutdown: transport codes, everything else "server".
    Rpc.NEXT_TASK: _SCHEDULER_LIKE,
    Rpc.SCHEDULER_HEARTBEAT: _SCHEDULER_LIKE,
    Rpc.SHUTDOWN: _SCHEDULER_LIKE,
    # 5.2: RegisterTaskInstance.
    Rpc.REGISTER_TASK_INSTANCE: {
        "UNAVAILABLE": TransportError,
        "DEADLINE_EXCEEDED": TransportError,
        "NOT_FOUND": StaleSessionError,
        "FAILED_PRECONDITION": StaleStateError,
        "INVALID_ARGUMENT": InvalidInputError,
        "INTERNAL": ServerError,
        "UNKNOWN": ServerError,
        "RESOURCE_EXHAUSTED": ServerError,
        "PERMISSION_DENIED": ServerError,
    },
    Rpc.REPORT_TASK_SUCCESS: _REPORT,
    Rpc.REPORT_TASK_FAILURE: _REPORT,
    # 5.3: liveness.
    Rpc.REGISTER_EXECUTION_MANAGER: _SCHEDULER_LIKE,
    Rpc.STORAGE_HEARTBEAT: {
        "UNAVAILABLE": TransportError,
        "DEADLINE_EXCEEDED": TransportError,
        "NOT_FOUND": TransportError,
        "FAILED_PRECONDITION": MarkedDeadError,
        "INVALID_ARGUMENT": IllegalIdError,
        "INTERNAL": TransportError,
        "UNKNOWN": TransportError,
        "RESOURCE_EXHAUSTED": TransportError,
        "PERMISSION_DENIED": TransportError,
    },
}

ROWS = [(rpc, code) for rpc in Rpc for code in _CODES]


@pytest.mark.parametrize(("rpc", "code_name"), ROWS, ids=[f"{r.name}-{c}" for r, c in ROWS])
async def test_status_code_maps_to_its_kind(
    server: ScriptedServer, channels: ChannelPool, rpc: Rpc, code_name: str
) -> None:
    server.on(METHOD_PATHS[rpc], abort_with(grpc.StatusCode[code_name], "scripted"))
    with trio.fail_after(20), pytest.raises(RpcError) as raised:
        await SAMPLE_CALLS[rpc](Clients.over(channels))
    assert type(raised.value) is EXPECTED[rpc][code_name]
    assert raised.value.rpc is rpc
    assert raised.value.code is StatusCode[code_name]
    assert raised.value.details == "scripted"
    assert len(server.calls(METHOD_PATHS[rpc])) == 1


@pytest.mark.parametrize("rpc", list(Rpc), ids=[r.name for r in Rpc])
async def test_server_side_exception_is_unknown(
    server: ScriptedServer, channels: ChannelPool, rpc: Rpc
) -> None:
    def explode(_request: bytes, _context: object) -> bytes:
        raise RuntimeError("handler bug")

    server.on(METHOD_PATHS[rpc], explode)
    with trio.fail_after(20), pytest.raises(RpcError) as raised:
        await SAMPLE_CALLS[rpc](Clients.over(channels))
    assert raised.value.code is StatusCode.UNKNOWN
    assert type(raised.value) is EXPECTED[rpc]["UNKNOWN"]


@pytest.mark.parametrize("rpc", list(Rpc), ids=[r.name for r in Rpc])
async def test_unreachable_peer_is_a_transport_error(rpc: Rpc) -> None:
    with closed_port() as port:
        pool = ChannelPool("127.0.0.1", port, 1, ChannelOptions())
        try:
            with trio.fail_after(20), pytest.raises(RpcError) as raised:
                await SAMPLE_CALLS[rpc](Clients.over(pool))
        finally:
            pool.close()
    assert raised.value.code is StatusCode.UNAVAILABLE
    assert type(raised.value) is TransportError
