"""FakeLiveness: a scripted ``LivenessClient`` (registration and storage heartbeats)."""

from __future__ import annotations

import math
import random

import trio

from worker.errors import ProtocolError, Rpc, error_for
from worker.model import ExecutionManagerId, Registration, SessionId
from worker.testing.journal import Journal, Phase
from worker.testing.script import EMPTY, Always, Error, Hang, MalformedItem, Script

__all__ = ["FakeLiveness", "HeartbeatItem"]

HeartbeatItem = SessionId | int | Error
RegisterReply = Registration | Error | MalformedItem


class FakeLiveness:
    """Scripted liveness service (scenarios.md section 1)."""

    def __init__(
        self,
        journal: Journal,
        *,
        initial_session: int = 1,
        em_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.journal = journal
        chosen = em_id if em_id is not None else (rng or random.Random(0)).randint(1, 2**31)
        self.em_id = ExecutionManagerId(chosen)
        self.initial_session = SessionId(initial_session)
        self.default_session = SessionId(initial_session)
        self.register_response: RegisterReply | Hang | None = None
        self.register_calls: list[str] = []
        self.heartbeat_script: Script[HeartbeatItem] = Script()
        self.heartbeat_times: list[float] = []
        self._heartbeats_changed = trio.Event()

    @property
    def heartbeat_count(self) -> int:
        """How many storage heartbeats started."""
        return len(self.heartbeat_times)

    def set_default_session(self, session: int) -> None:
        """The session answered when the heartbeat script is empty."""
        self.default_session = SessionId(session)

    def push_heartbeat(self, *items: HeartbeatItem | Always[HeartbeatItem] | Hang) -> None:
        """Append to the heartbeat script."""
        self.heartbeat_script.push(*items)

    async def register(self, ip_address: str) -> Registration:
        """Record the ip; answer the one-shot scripted response, else ``(em_id, session)``."""
        self.register_calls.append(ip_address)
        self.journal.add("liveness", "register", Phase.START, (ip_address,))
        reply, self.register_response = self.register_response, None
        try:
            if isinstance(reply, Hang):
                if reply.seconds is None:
                    await trio.sleep_forever()
                await trio.sleep(reply.seconds)
                reply = None
        except trio.Cancelled:
            self.journal.add("liveness", "register", Phase.END, (ip_address,), "cancelled")
            raise
        if isinstance(reply, Error):
            self.journal.add("liveness", "register", Phase.END, (ip_address,), reply.code.name)
            raise error_for(Rpc.REGISTER_EXECUTION_MANAGER, reply.code)
        if isinstance(reply, MalformedItem):
            self.journal.add("liveness", "register", Phase.END, (ip_address,), "malformed")
            raise ProtocolError(Rpc.REGISTER_EXECUTION_MANAGER, "registration is unset")
        registration = reply or Registration(self.em_id, self.initial_session)
        self.journal.add("liveness", "register", Phase.END, (ip_address,), registration)
        return registration

    async def heartbeat(self, em_id: ExecutionManagerId) -> SessionId:
        """Count the call; answer from the script, else the default session."""
        self.heartbeat_times.append(trio.current_time())
        self._heartbeats_changed.set()
        self._heartbeats_changed = trio.Event()
        self.journal.add("liveness", "heartbeat", Phase.START, (em_id,))
        try:
            item = await self.heartbeat_script.take(wait_when_empty=False)
        except trio.Cancelled:
            self.journal.add("liveness", "heartbeat", Phase.END, (em_id,), "cancelled")
            raise
        if item is EMPTY:
            item = self.default_session
        if isinstance(item, Error):
            self.journal.add("liveness", "heartbeat", Phase.END, (em_id,), item.code.name)
            raise error_for(Rpc.STORAGE_HEARTBEAT, item.code)
        assert isinstance(item, int)
        self.journal.add("liveness", "heartbeat", Phase.END, (em_id,), item)
        return SessionId(item)

    async def wait_for_heartbeats(self, n: int, timeout: float = math.inf) -> None:  # noqa: ASYNC109 (scenarios.md API)
        """Wait until at least ``n`` heartbeats started."""
        with trio.fail_after(timeout):
            while self.heartbeat_count < n:
                await self._heartbeats_changed.wait()
