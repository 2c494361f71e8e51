"""The storage liveness loop (protocol.md section 6.2): heartbeats, refreshes, eviction."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from worker.core.decisions import HeartbeatVerdict, classify_heartbeat_error
from worker.core.ports import LivenessClient
from worker.core.session import SessionObservation, SessionTracker
from worker.errors import ProtocolError, RpcError
from worker.model import ExecutionManagerId
from worker.runtime.warnings import RateLimitedWarner

__all__ = ["LivenessLoop"]

logger = logging.getLogger("worker.liveness")


class LivenessLoop:
    """Heartbeats storage at once, then every interval; a refresh request sends one at once.

    Refresh requests coalesce: any number of them before a heartbeat starts cause that one
    heartbeat; one arriving while a heartbeat is in flight causes exactly one more right after.
    After every heartbeat the next is a full period after its start (missed ticks are skipped).
    An eviction (MarkedDead, IllegalId, or a lower session) calls ``on_evicted`` and ends the loop.
    """

    def __init__(
        self,
        client: LivenessClient,
        em_id: ExecutionManagerId,
        tracker: SessionTracker,
        interval_sec: float,
        on_evicted: Callable[[str], None],
    ) -> None:
        self._client = client
        self._em_id = em_id
        self._tracker = tracker
        self._interval = interval_sec
        self._on_evicted = on_evicted
        self._refresh = trio.Event()
        self._warner = RateLimitedWarner(logger)

    def request_refresh(self) -> None:
        """Ask for a heartbeat now (coalesced with any other pending request)."""
        self._refresh.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat until cancelled, or until storage evicts this worker.

        Reports ``started`` as the first heartbeat goes out, so a refresh requested from then on
        is never swallowed by that first heartbeat.
        """
        while True:
            # Requests from now on are answered by the heartbeat below or by one right after it.
            self._refresh = trio.Event()
            started = trio.current_time()
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            try:
                session = await self._client.heartbeat(self._em_id)
            except (RpcError, ProtocolError) as error:
                if classify_heartbeat_error(error) is HeartbeatVerdict.EVICTED:
                    self._on_evicted(str(error))
                    return
                self._warner.warn(
                    started,
                    "storage heartbeat failed",
                    {"em_id": self._em_id, "error": str(error)},
                )
            else:
                previous = self._tracker.current
                observation = self._tracker.observe(session)
                if observation is SessionObservation.REGRESSED:
                    self._on_evicted(f"storage session went backwards ({session} < {previous})")
                    return
                if observation is SessionObservation.ADVANCED:
                    logger.info(
                        "storage session advanced",
                        extra={"fields": {"from": previous, "to": session}},
                    )
            with trio.move_on_at(started + self._interval):
                await self._refresh.wait()
