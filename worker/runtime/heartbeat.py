"""The scheduler heartbeat loop (protocol.md section 6.3)."""

from __future__ import annotations

import logging

import trio

from worker.core.ports import SchedulerClient
from worker.errors import ProtocolError, RpcError
from worker.model import ExecutionManagerId
from worker.runtime.warnings import RateLimitedWarner

__all__ = ["run_scheduler_heartbeats"]

logger = logging.getLogger("worker.heartbeat")


async def run_scheduler_heartbeats(
    client: SchedulerClient,
    em_id: ExecutionManagerId,
    interval_sec: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Heartbeat the scheduler at once, then every interval, until cancelled.

    Errors are logged (rate-limited) and never stop the loop; missed ticks are skipped.
    """
    warner = RateLimitedWarner(logger)
    while True:
        started = trio.current_time()
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        try:
            await client.heartbeat(em_id)
        except (RpcError, ProtocolError) as error:
            warner.warn(
                started, "scheduler heartbeat failed", {"em_id": em_id, "error": str(error)}
            )
        await trio.sleep_until(started + interval_sec)
