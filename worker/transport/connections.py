"""The worker's connections to one cluster: a channel pool per server and the three clients."""

from __future__ import annotations

import trio

from worker.transport.channels import ChannelOptions, ChannelPool
from worker.transport.liveness import GrpcLivenessClient
from worker.transport.scheduler import GrpcSchedulerClient
from worker.transport.storage import GrpcStorageClient

__all__ = ["ClusterConnections", "ConnectFailed"]


class ConnectFailed(Exception):
    """Servers not reached before the connect deadline (no RPC was sent); ``peers`` names them."""

    def __init__(self, peers: dict[str, str], within_sec: float) -> None:
        self.peers = peers
        where = " and ".join(f"{peer} at {target}" for peer, target in peers.items())
        super().__init__(f"cannot connect to {where} within {within_sec:g} s")


class ClusterConnections:
    """``pool_size`` channels to storage and to the scheduler, and the port clients over them.

    Creating it opens no connection yet; ``wait_ready`` connects, ``close`` closes every channel.
    """

    def __init__(
        self,
        *,
        storage: tuple[str, int],
        scheduler: tuple[str, int],
        pool_size: int,
        options: ChannelOptions,
        rpc_timeout_sec: float,
    ) -> None:
        self.storage_channels = ChannelPool(*storage, pool_size, options)
        try:
            self.scheduler_channels = ChannelPool(*scheduler, pool_size, options)
        except BaseException:
            self.storage_channels.close()
            raise
        self.scheduler = GrpcSchedulerClient(self.scheduler_channels, rpc_timeout_sec)
        self.storage = GrpcStorageClient(self.storage_channels, rpc_timeout_sec)
        self.liveness = GrpcLivenessClient(self.storage_channels, rpc_timeout_sec)

    async def wait_ready(self, within_sec: float) -> None:
        """Connect every channel of both servers; ``ConnectFailed`` names every one missing."""
        peers = {"storage": self.storage_channels, "scheduler": self.scheduler_channels}
        missing: list[str] = []

        async def connect(peer: str, pool: ChannelPool) -> None:
            if not await pool.wait_ready(within_sec):
                missing.append(peer)

        async with trio.open_nursery() as nursery:
            for peer, pool in peers.items():
                nursery.start_soon(connect, peer, pool)
        if missing:
            raise ConnectFailed(
                {peer: pool.target for peer, pool in peers.items() if peer in missing}, within_sec
            )

    def close(self) -> None:
        """Close every channel (idempotent)."""
        self.storage_channels.close()
        self.scheduler_channels.close()
