"""The worker runtime: the trio shell around :class:`~worker.core.worker_state.WorkerCore`.

The core decides everything; this module keeps only time, I/O, nurseries and cancel scopes. It
feeds the core events (with ``trio.current_time()``) at ONE dispatch point, :meth:`_dispatch`,
and turns each action the core returns into a call, a timer or a cancellation. Every call a slot
makes ends in exactly one event: answered, failed, or cancelled by the scope the core cancelled.

Nursery tree (one run)::

    run()
      the executor pool (opened BEFORE registering, outside every scope of ours; closed last)
      root nursery
        RegisterExecutionManager           (its scope: CancelRegistration)
        heartbeat loops nursery            (its scope: StopHeartbeats)
          storage liveness loop, scheduler heartbeat loop
        one task per busy slot             (runs the slot's calls one after another; one scope
                                            per call: CancelCall, KillTask)
        report nursery                     (CancelReports cancels it)
          one task per report
        drain deadline timer, Shutdown attempts
      -> after an outer cancellation: a shielded, bounded Shutdown if the core asks for one
"""

from __future__ import annotations

import functools
import logging
import random as random_module
from collections.abc import Awaitable, Callable

import trio

from worker.core.actions import (
    Action,
    ArmDrainDeadline,
    CancelCall,
    CancelRegistration,
    CancelReports,
    Execute,
    Exit,
    KillTask,
    RefreshSession,
    RegisterTask,
    RegisterWorker,
    SendNextTask,
    SendShutdown,
    Sleep,
    StartHeartbeats,
    StartReport,
    StopHeartbeats,
)
from worker.core.decisions import StopCause
from worker.core.events import (
    Booted,
    CallCancelled,
    DrainDeadlinePassed,
    Event,
    Evicted,
    ExecutionFailed,
    ForceStopRequested,
    HeartbeatLoopEnded,
    HeartbeatsStarted,
    OutcomeArrived,
    PollAnswered,
    PollFailed,
    ReportSettled,
    ShellCancelled,
    ShutdownAnswered,
    ShutdownFailed,
    ShutdownTimedOut,
    StopRequested,
    TaskRegistered,
    TaskRegistrationFailed,
    TimerFired,
    WorkerRegistered,
    WorkerRegistrationCancelled,
    WorkerRegistrationFailed,
)
from worker.core.ledger import AckLedger
from worker.core.machine import WorkerMachine
from worker.core.observer import WorkerObserver
from worker.core.ports import (
    Executor,
    ExecutorFactory,
    LivenessClient,
    SchedulerClient,
    StorageClient,
)
from worker.core.settings import RuntimeSettings
from worker.core.story import AssignmentKey, StoryEntry
from worker.core.worker_state import WorkerCore
from worker.errors import ExecutorPoolError, PoolInitError, ProtocolError, RpcError
from worker.exit_codes import ExitCode
from worker.runtime.heartbeat import run_scheduler_heartbeats
from worker.runtime.liveness import LivenessLoop
from worker.runtime.reporting import Reporter

__all__ = ["WorkerRuntime"]

logger = logging.getLogger("worker.runtime")

_SlotCall = SendNextTask | RegisterTask | Execute | Sleep

#: A heartbeat loop: runs until cancelled (or evicted), reports ``started`` on its first beat.
LoopFunction = Callable[..., Awaitable[None]]


class WorkerRuntime:
    """Runs one worker: performs the core's actions until it says which exit code to return."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        scheduler: SchedulerClient,
        storage: StorageClient,
        liveness: LivenessClient,
        open_executor: ExecutorFactory,
        random: random_module.Random | None = None,
        observer: WorkerObserver | None = None,
        core: WorkerCore | None = None,
    ) -> None:
        """``core`` is the core to drive; by default a new one, built from ``settings`` (a core
        given with an ``observer`` must have been built with ``observe=True``)."""
        self._settings = settings
        self._scheduler = scheduler
        self._storage = storage
        self._liveness = liveness
        self._open_executor = open_executor
        self._rng = random if random is not None else random_module.Random()
        self._observer = observer
        self._core = (
            core
            if core is not None
            else WorkerCore(settings, random=self._rng, observe=observer is not None)
        )
        self._root: trio.Nursery | None = None
        self._executor: Executor | None = None
        self._registration_scope = trio.CancelScope()
        self._loops_scope = trio.CancelScope()
        self._slot_scopes = [trio.CancelScope() for _ in range(settings.slots)]
        self._reports: trio.Nursery | None = None
        self._liveness_loop: LivenessLoop | None = None
        self._reporter: Reporter | None = None
        self._exit_code: ExitCode | None = None
        self._exited: trio.Event | None = None

    # --- introspection -----------------------------------------------------------------------

    @property
    def machine(self) -> WorkerMachine:
        """The state machine of slot 0 (tests attach hooks to it)."""
        return self._core.machine(0)

    @property
    def ledger(self) -> AckLedger:
        """The acknowledgement ledger."""
        return self._core.ledger

    @property
    def causes(self) -> frozenset[StopCause]:
        """The stop causes that occurred so far."""
        return self._core.causes

    def story(self, key: AssignmentKey) -> tuple[StoryEntry, ...]:
        """Why is assignment ``key`` where it is? Its bounded story, oldest first."""
        return self._core.story(key)

    def explain(self, key: AssignmentKey) -> str:
        """The story of assignment ``key`` as text, one entry per line."""
        return self._core.explain(key)

    # --- stop entry points (synchronous; call them from the trio thread) ----------------------

    def request_stop(self) -> None:
        """A stop signal: the first one drains, the next one forces the stop."""
        self._dispatch(StopRequested())

    def force_stop(self) -> None:
        """Forced stop at once: kill the running tasks, abandon reports, still send Shutdown."""
        self._dispatch(ForceStopRequested())

    # --- run -------------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        """Open the pool, then perform the core's actions until it exits; the exit code.

        Raises ``PoolInitError`` when the pool cannot start (no RPC was sent).
        """
        self._exited = trio.Event()
        try:
            # The pool is entered OUTSIDE any cancel scope of ours: its context holds a nursery,
            # and a scope must never be left while a nursery opened inside it is still open.
            async with self._open_executor() as executor:
                self._executor = executor
                try:
                    async with trio.open_nursery() as root:
                        self._root = root
                        await root.start(self._report_nursery)
                        self._dispatch(Booted())
                        await self._exited.wait()
                        # What is left: the drain deadline timer, if armed, the report nursery.
                        root.cancel_scope.cancel()
                finally:
                    self._root = None
                    if self._exit_code is None:
                        with trio.CancelScope(shield=True):
                            await self._goodbye_after_outer_cancel()
        except PoolInitError as error:
            logger.error("executor pool failed to start", extra={"fields": {"error": str(error)}})
            raise
        assert self._exit_code is not None
        return self._exit_code

    # --- the one dispatch point ----------------------------------------------------------------

    def _dispatch(
        self, event: Event, claim: Callable[[Action], bool] | None = None
    ) -> Action | None:
        """Hand the core ``event`` and perform the actions it returns, in order; the first one
        ``claim`` accepts is returned instead, for the caller to carry out itself (a slot's next
        call, a Shutdown retry), and the actions after it are still performed."""
        claimed: Action | None = None
        for action in self._core.handle(event, _now()):
            if claimed is None and claim is not None and claim(action):
                claimed = action
            else:
                self._perform(action)
        if self._observer is not None:
            for notice in self._core.take_notices():
                self._observer.notice(notice)
        return claimed

    def _perform(self, action: Action) -> None:
        root = self._root
        if isinstance(action, StartReport):
            assert self._reports is not None
            self._reports.start_soon(self._report, action)
        elif isinstance(action, _SlotCall):
            assert root is not None
            root.start_soon(self._run_slot, action, self._new_slot_scope(action.slot))
        elif isinstance(action, CancelCall | KillTask):
            self._slot_scopes[action.slot].cancel()
        elif isinstance(action, CancelReports):
            if self._reports is not None:
                self._reports.cancel_scope.cancel()
        elif isinstance(action, RefreshSession):
            if self._liveness_loop is not None:
                self._liveness_loop.request_refresh()
        elif isinstance(action, RegisterWorker):
            assert root is not None
            root.start_soon(self._register_worker, action)
        elif isinstance(action, CancelRegistration):
            self._registration_scope.cancel()
        elif isinstance(action, StartHeartbeats):
            assert root is not None
            root.start_soon(self._heartbeats, action)
        elif isinstance(action, StopHeartbeats):
            self._loops_scope.cancel()
        elif isinstance(action, ArmDrainDeadline):
            assert root is not None
            root.start_soon(self._drain_timer, action.deadline)
        elif isinstance(action, SendShutdown):
            assert root is not None
            root.start_soon(self._say_goodbye, action)
        else:
            assert isinstance(action, Exit)
            self._exit_code = action.code
            if self._exited is not None:
                self._exited.set()

    # --- slots ---------------------------------------------------------------------------------

    def _new_slot_scope(self, slot: int) -> trio.CancelScope:
        scope = trio.CancelScope()
        self._slot_scopes[slot] = scope
        return scope

    async def _run_slot(self, action: _SlotCall, scope: trio.CancelScope) -> None:
        """One slot's calls, one after another, while each answer asks for the slot's next.

        Each call ends in exactly one event: its answer, its failure, or ``CallCancelled`` when
        the core cancelled the call's scope. Consecutive calls share one scope until the core
        cancels it (entering a scope per call costs more than the rest of the shell's step); a
        call the core has not cancelled never starts in a cancelled scope, because
        :meth:`_follow` gives the slot a fresh one first. (One function, not a helper per call:
        this is the hot path of every assignment.)
        """
        slot = action.slot
        call: _SlotCall | None = action
        while call is not None:
            with scope:
                while call is not None and self._slot_scopes[slot] is scope:
                    event: Event
                    if isinstance(call, SendNextTask):
                        try:
                            reply = await self._scheduler.next_task(
                                call.em_id, call.carried, call.wait_time_ms
                            )
                        except (RpcError, ProtocolError) as error:
                            event = PollFailed(slot, error)
                        else:
                            event = PollAnswered(slot, reply)
                    elif isinstance(call, RegisterTask):
                        task = call.assignment.assignment
                        try:
                            context = await self._storage.register_task_instance(
                                task.job_id, task.task_id, call.em_id, task.session_id
                            )
                        except (RpcError, ProtocolError) as error:
                            event = TaskRegistrationFailed(slot, error)
                        else:
                            event = TaskRegistered(slot, context)
                    elif isinstance(call, Execute):
                        assert self._executor is not None
                        try:
                            outcome = await self._executor.execute(call.request)
                        except ExecutorPoolError as error:
                            event = ExecutionFailed(slot, error)
                        else:
                            event = OutcomeArrived(slot, outcome)
                    else:
                        await trio.sleep_until(call.until)
                        event = TimerFired(slot)
                    call = self._follow(slot, event)
            if scope.cancelled_caught:
                call = self._follow(slot, CallCancelled(slot))
            scope = self._slot_scopes[slot]

    def _follow(self, slot: int, event: Event) -> _SlotCall | None:
        """Dispatch ``event`` of ``slot``; the slot's next call, if the core asks for one."""

        def claim(action: Action) -> bool:
            if not (isinstance(action, _SlotCall) and action.slot == slot):
                return False
            # Claimed before the actions after it run: a cancel that comes later in the same
            # list is for this call, one that came before (or after the answer) is not.
            if self._slot_scopes[slot].cancel_called:
                self._new_slot_scope(slot)
            return True

        call = self._dispatch(event, claim)
        assert call is None or isinstance(call, _SlotCall)
        return call

    # --- boot, heartbeats, reports, drain deadline, Shutdown ------------------------------------

    async def _register_worker(self, action: RegisterWorker) -> None:
        event: Event = WorkerRegistrationCancelled()
        with self._registration_scope:
            try:
                registration = await self._liveness.register(action.ip_address)
            except (RpcError, ProtocolError) as error:
                event = WorkerRegistrationFailed(error)
            else:
                event = WorkerRegistered(registration)
        self._dispatch(event)

    async def _heartbeats(self, action: StartHeartbeats) -> None:
        tracker = self._core.tracker
        assert tracker is not None
        self._reporter = Reporter(
            self._storage,
            tracker,
            self._settings.backoff,
            self._rng,
            lambda key, event, detail: self._core.note(key, event, detail, _now()),
        )
        self._liveness_loop = LivenessLoop(
            self._liveness,
            action.em_id,
            tracker,
            self._settings.storage_heartbeat_interval_sec,
            self._evicted,
        )
        scheduler_loop = functools.partial(
            run_scheduler_heartbeats,
            self._scheduler,
            action.em_id,
            self._settings.scheduler_heartbeat_interval_sec,
        )
        with self._loops_scope:
            async with trio.open_nursery() as loops:
                # Both loops send their first heartbeat before the first poll.
                await loops.start(self._heartbeat_loop, "storage", self._liveness_loop.run)
                await loops.start(self._heartbeat_loop, "scheduler", scheduler_loop)
                self._dispatch(HeartbeatsStarted())

    def _evicted(self, reason: str) -> None:
        self._dispatch(Evicted(reason))

    async def _heartbeat_loop(
        self, name: str, loop: LoopFunction, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await loop(task_status=task_status)
        finally:
            self._dispatch(HeartbeatLoopEnded(name))

    async def _report_nursery(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The nursery every report runs in; CancelReports cancels it (reports only)."""
        async with trio.open_nursery() as reports:
            self._reports = reports
            task_status.started()
            await trio.sleep_forever()

    async def _report(self, action: StartReport) -> None:
        assert self._reporter is not None
        assert self._reports is not None
        try:
            await self._reporter.deliver(action.key, action.report)
        except trio.Cancelled:
            if self._reports.cancel_scope.cancel_called:  # abandoned on the core's CancelReports
                self._dispatch(ReportSettled(action.key))
            raise
        self._dispatch(ReportSettled(action.key))

    async def _drain_timer(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        self._dispatch(DrainDeadlinePassed())

    async def _say_goodbye(self, action: SendShutdown) -> None:
        """Send Shutdown, and again while the core asks for a retry."""
        attempt: Action | None = action
        while isinstance(attempt, SendShutdown):
            attempt = self._dispatch(await self._shutdown_attempt(attempt), _is_shutdown)

    async def _shutdown_attempt(self, action: SendShutdown) -> Event:
        with trio.CancelScope(deadline=action.deadline):
            if action.not_before > trio.current_time():
                await trio.sleep_until(action.not_before)
            try:
                await self._scheduler.shutdown(action.em_id, action.records)
            except (RpcError, ProtocolError) as error:
                return ShutdownFailed(error)
            return ShutdownAnswered()
        return ShutdownTimedOut()

    async def _goodbye_after_outer_cancel(self) -> None:
        # The core ends its answer with the Shutdown, so performing the rest first keeps order.
        shutdown = self._dispatch(ShellCancelled(), _is_shutdown)
        if isinstance(shutdown, SendShutdown):
            await self._say_goodbye(shutdown)


def _is_shutdown(action: Action) -> bool:
    return isinstance(action, SendShutdown)


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0
