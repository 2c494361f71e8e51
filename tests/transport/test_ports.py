"""The gRPC clients implement the runtime's ports (checked by mypy --strict over this file)."""

from __future__ import annotations

import pytest
import trio

from tests.transport.scripted import closed_port, scripted_server
from worker.core.ports import LivenessClient, SchedulerClient, StorageClient
from worker.transport.channels import ChannelOptions, ChannelPool, StubPool
from worker.transport.connections import ClusterConnections, ConnectFailed
from worker.transport.liveness import GrpcLivenessClient
from worker.transport.scheduler import GrpcSchedulerClient
from worker.transport.storage import GrpcStorageClient


def test_clients_satisfy_the_ports() -> None:
    pool = ChannelPool("127.0.0.1", 1, 2, ChannelOptions())
    try:
        # The annotations are the check: mypy rejects a client that drifts from its port.
        scheduler: SchedulerClient = GrpcSchedulerClient(pool, 1.0)
        storage: StorageClient = GrpcStorageClient(pool, 1.0)
        liveness: LivenessClient = GrpcLivenessClient(pool, 1.0)
        assert {type(scheduler), type(storage), type(liveness)} == {
            GrpcSchedulerClient,
            GrpcStorageClient,
            GrpcLivenessClient,
        }
        assert len(pool.channels) == 2
        stubs = StubPool(pool, lambda channel: channel)
        assert [stubs.next() for _ in range(4)] == [*pool.channels, *pool.channels]  # round-robin
    finally:
        pool.close()
        pool.close()  # idempotent


def test_cluster_connections_build_clients_per_server() -> None:
    connections = ClusterConnections(
        storage=("127.0.0.1", 1001),
        scheduler=("::1", 1002),
        pool_size=3,
        options=ChannelOptions(),
        rpc_timeout_sec=1.0,
    )
    try:
        assert connections.storage_channels.target == "127.0.0.1:1001"
        assert connections.scheduler_channels.target == "[::1]:1002"
        assert len(connections.scheduler_channels.channels) == 3
    finally:
        connections.close()


async def test_wait_ready_names_the_unreachable_server() -> None:
    with scripted_server() as storage, closed_port() as scheduler_port:
        connections = ClusterConnections(
            storage=("127.0.0.1", storage.port),
            scheduler=("127.0.0.1", scheduler_port),
            pool_size=2,
            options=ChannelOptions(),
            rpc_timeout_sec=1.0,
        )
        try:
            with trio.fail_after(20), pytest.raises(ConnectFailed) as raised:
                await connections.wait_ready(0.5)
            assert list(raised.value.peers) == ["scheduler"]
            assert storage.calls() == []  # connecting sends no RPC
        finally:
            connections.close()
