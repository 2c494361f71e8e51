"""Shared set-up for the runtime scenarios: fakes, settings, helpers and the teardown checks.

Conventions are scenarios.md's: ``HEARTBEAT`` 0.1 s, ``BOUNDED_WAIT`` 2 s, ``TIGHT_WAIT`` 0.5 s,
poll wait 2000 ms, test backoff 50 ms initial / 500 ms cap, drain timeout 5 s. ``A(n)`` is an
assignment (scheduler 3, job 7, task ``Index(0)``, resource group 9) and ``rec(A)`` its record.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Protocol

import trio

from worker.core.machine import State, Trigger
from worker.core.observer import WorkerObserver
from worker.core.ports import ExecutorFactory, LivenessClient, SchedulerClient, StorageClient
from worker.core.worker_state import WorkerCore
from worker.exit_codes import ExitCode
from worker.model import (
    AssignmentId,
    ExecutionContext,
    JobId,
    ResourceGroupId,
    SchedulerAssignment,
    SchedulerId,
    SessionId,
    TaskAssignment,
    TaskAssignmentRecord,
    TaskId,
    TaskInstanceId,
    TdlContext,
    TimeoutPolicy,
)
from worker.runtime import RuntimeSettings, WorkerRuntime
from worker.taskio import encode_inputs
from worker.testing import FakeLiveness, FakePool, FakeScheduler, FakeStorage, Journal, Phase

__all__ = [
    "BOUNDED_WAIT",
    "HEARTBEAT",
    "TIGHT_WAIT",
    "A",
    "Harness",
    "ctx",
    "frame",
    "rec",
]

HEARTBEAT = 0.1
BOUNDED_WAIT = 2.0
TIGHT_WAIT = 0.5
POLL_WAIT_MS = 2000

_instance_ids = itertools.count(1000)


def A(n: int, session: int = 1, index: int = 0) -> SchedulerAssignment:
    """Assignment ``n``: scheduler 3, job 7, task ``Index(index)``, resource group 9."""
    return SchedulerAssignment(
        TaskAssignment(
            AssignmentId(n),
            ResourceGroupId(9),
            JobId(7),
            TaskId.of_index(index),
            SessionId(session),
        ),
        SchedulerId(3),
    )


def rec(assignment: SchedulerAssignment) -> TaskAssignmentRecord:
    """The acknowledgement record of ``assignment``."""
    return assignment.record


def frame(*values: object) -> bytes:
    """The wire frame (protocol.md section 4.1) of ``values``, one payload each."""
    return encode_inputs(*values)


def ctx(func: str, *args: object, instance: int | None = None) -> ExecutionContext:
    """An execution context for ``worker_testtasks.func(*args)``, hard timeout 5000 ms."""
    return ExecutionContext(
        TaskInstanceId(instance if instance is not None else next(_instance_ids)),
        TdlContext("worker_testtasks", func),
        TimeoutPolicy(1000, 5000),
        frame(*args),
    )


class PortWrappers(Protocol):
    """Wraps each port of the runtime (the metrics' port instruments do)."""

    def scheduler(self, inner: SchedulerClient) -> SchedulerClient: ...

    def storage(self, inner: StorageClient) -> StorageClient: ...

    def liveness(self, inner: LivenessClient) -> LivenessClient: ...

    def executor_factory(self, inner: ExecutorFactory) -> ExecutorFactory: ...


class Harness:
    """The four fakes, one runtime, and what the scenarios inspect."""

    def __init__(
        self,
        *,
        initial_session: int = 1,
        apply_acks_on_error: bool = True,
        drain_timeout_sec: float = 5.0,
        storage_heartbeat_sec: float = HEARTBEAT,
        scheduler_heartbeat_sec: float = HEARTBEAT,
        shutdown_budget_sec: float = 1.0,
        max_send_bytes: int = 4 * 1024 * 1024,
        poll_wait_ms: int = POLL_WAIT_MS,
        seed: int = 0,
        slots: int = 1,
    ) -> None:
        self.journal = Journal()
        self.scheduler = FakeScheduler(self.journal, apply_acks_on_error=apply_acks_on_error)
        self.storage = FakeStorage(self.journal)
        self.liveness = FakeLiveness(
            self.journal, initial_session=initial_session, rng=random.Random(seed)
        )
        self.pool = FakePool(self.journal)
        self.settings = RuntimeSettings(
            storage_heartbeat_interval_sec=storage_heartbeat_sec,
            scheduler_heartbeat_interval_sec=scheduler_heartbeat_sec,
            scheduler_poll_wait_ms=poll_wait_ms,
            drain_timeout_sec=drain_timeout_sec,
            shutdown_rpc_budget_sec=shutdown_budget_sec,
            backoff_initial_sec=0.05,
            backoff_max_sec=0.5,
            max_send_bytes=max_send_bytes,
            slots=slots,
        )
        self.seed = seed
        self.runtime = self.runtime_with()
        self.transitions: list[tuple[State, State, Trigger]] = []
        self.runtime.machine.add_hook(self._on_transition)
        self.exit_code: ExitCode | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()
        self.stopped_at: float | None = None

    def runtime_with(
        self,
        *,
        observer: WorkerObserver | None = None,
        core: WorkerCore | None = None,
        wrap: PortWrappers | None = None,
    ) -> WorkerRuntime:
        """A runtime on this harness's fakes and settings, with an observer, a core or wrappers
        around the fakes of its own (``self.runtime`` is one with none of them)."""
        return WorkerRuntime(
            self.settings,
            scheduler=self.scheduler if wrap is None else wrap.scheduler(self.scheduler),
            storage=self.storage if wrap is None else wrap.storage(self.storage),
            liveness=self.liveness if wrap is None else wrap.liveness(self.liveness),
            open_executor=self.pool if wrap is None else wrap.executor_factory(self.pool),
            random=random.Random(self.seed),
            observer=observer,
            core=core,
        )

    def _on_transition(self, source: State, dest: State, trigger: Trigger) -> None:
        self.transitions.append((source, dest, trigger))
        self.journal.add("machine", trigger.value, Phase.END, (source, dest))

    @property
    def em_id(self) -> int:
        """The id the fake liveness service hands out."""
        return self.liveness.em_id

    async def _run(self) -> None:
        try:
            self.exit_code = await self.runtime.run()
        finally:
            self.done.set()

    def start(self, nursery: trio.Nursery) -> None:
        """Start the runtime in ``nursery``."""
        nursery.start_soon(self._run)

    def stop(self) -> None:
        """The graceful stop (first signal)."""
        self.stopped_at = trio.current_time()
        self.runtime.request_stop()

    def force(self) -> None:
        """The second signal."""
        self.runtime.request_stop()

    async def until(self, predicate: Callable[[], bool], within: float = BOUNDED_WAIT) -> None:
        """Wait (virtual or real time) until ``predicate()`` holds after some journal entry."""
        with trio.fail_after(within):
            while not predicate():
                await self.journal.changed()

    async def finish(self, within: float = BOUNDED_WAIT) -> ExitCode:
        """Wait for the runtime to return; its exit code."""
        with trio.fail_after(within):
            await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code

    async def stop_and_finish(self, within: float = BOUNDED_WAIT) -> ExitCode:
        """Stop gracefully and wait for the exit code."""
        self.stop()
        return await self.finish(within)

    def check_teardown(
        self, outstanding: frozenset[TaskAssignmentRecord] = frozenset(), shutdowns: int = 1
    ) -> None:
        """scenarios.md section 1 teardown checks."""
        assert self.done.is_set(), "the runtime did not stop"
        assert self.scheduler.outstanding == set(outstanding), self.journal.format()
        assert self.storage.exhausted is False
        assert self.scheduler.unknown_acks == []
        assert len(self.scheduler.shutdown_calls) == shutdowns
        assert not self.pool.opened or self.pool.closed
        if shutdowns:
            assert self.runtime.machine.state is State.STOPPED

    def calls_started(self, fake: str, method: str, after: float) -> int:
        """How many ``fake.method`` calls started strictly after ``after``."""
        return sum(1 for e in self.journal.calls(fake, method) if e.time > after)
