"""The port decorators over the in-process fakes, on trio's MockClock.

Each test drives the decorated ports the way the runtime does (same calls, same order) and
reads the values back from the metrics registry; the last one runs the real runtime over them.
What needs the core's decisions (records, busy slots, slot states) is tested with the observer,
in ``test_observer.py``.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from tests.runtime.harness import A, ctx
from worker.errors import ProtocolError, StaleSessionError, StaleStateError, StatusCode
from worker.exit_codes import ExitCode
from worker.metrics import WorkerMetrics
from worker.metrics.instrumented import MALFORMED_REPLY, PortInstruments
from worker.model import (
    ExecutionManagerId,
    ExecutionRequest,
    ExecutorCrash,
    FailureReport,
    InTaskFailure,
    SchedulerAssignment,
    SessionId,
    Success,
    SuccessReport,
    Timeout,
    outcome_kind,
)
from worker.runtime import RuntimeSettings, WorkerRuntime
from worker.testing import (
    Assign,
    Error,
    FakeLiveness,
    FakePool,
    FakeScheduler,
    FakeStorage,
    Hang,
    Journal,
    Malformed,
    NoTask,
)

EM = ExecutionManagerId(5)


class Ports:
    """The four fakes, each behind its decorator, and the metrics they feed."""

    def __init__(self) -> None:
        self.journal = journal = Journal()
        self.metrics = WorkerMetrics()
        self.instruments = PortInstruments(self.metrics)
        self.fake_scheduler = FakeScheduler(journal)
        self.fake_storage = FakeStorage(journal)
        self.fake_liveness = FakeLiveness(journal, em_id=int(EM))
        self.fake_pool = FakePool(journal)
        self.scheduler = self.instruments.scheduler(self.fake_scheduler)
        self.storage = self.instruments.storage(self.fake_storage)
        self.liveness = self.instruments.liveness(self.fake_liveness)
        self.executor = self.instruments.executor(self.fake_pool)

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def rpc_errors(self) -> float:
        """Every ``worker_rpc_errors_total`` sample added up, whatever its method and code."""
        return sum(
            sample.value
            for metric in self.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "worker_rpc_errors_total"
        )

    def finished(self, outcome: str) -> float:
        return self.value("worker_tasks_finished_total", outcome=outcome)

    async def receive(self, assignment: SchedulerAssignment) -> None:
        self.fake_scheduler.push(Assign(assignment))
        assert await self.scheduler.next_task(EM, None, 100) == assignment

    async def register(self, assignment: SchedulerAssignment) -> ExecutionRequest:
        task = assignment.assignment
        context = await self.storage.register_task_instance(
            task.job_id, task.task_id, EM, task.session_id
        )
        return ExecutionRequest.for_assignment(task, context)


def success_report(request: ExecutionRequest, session: int = 1) -> SuccessReport:
    return SuccessReport(
        request.job_id, request.task_id, request.task_instance_id, EM, SessionId(session), b""
    )


def failure_report(request: ExecutionRequest, session: int = 1) -> FailureReport:
    return FailureReport(
        request.job_id, request.task_id, request.task_instance_id, EM, SessionId(session), "x"
    )


async def test_one_assignment_moves_every_counter_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    await ports.liveness.register("0.0.0.0")
    assert ports.metrics.health.ready
    assert ports.value("worker_id") == EM
    assert ports.value("worker_session") == 1

    assignment = A(1)
    await ports.receive(assignment)
    assert ports.value("worker_assignments_received_total") == 1

    ports.fake_storage.push_register(ctx("echo", 1))
    request = await ports.register(assignment)

    ports.fake_pool.push(Hang(1.5), Success(b"out"))
    outcome = await ports.executor.execute(request)
    assert outcome == Success(b"out")
    assert ports.finished("succeeded") == 1
    assert ports.value("worker_task_duration_seconds_count", outcome="succeeded") == 1
    assert ports.value("worker_task_duration_seconds_sum", outcome="succeeded") == 1.5

    await ports.storage.report_task_success(success_report(request))
    assert ports.value("worker_reports_sent_total") == 1

    ports.fake_scheduler.push(NoTask)
    assert await ports.scheduler.next_task(EM, assignment.record, 100) is None
    assert ports.value("worker_assignments_received_total") == 1  # no_task is not one
    assert ports.rpc_errors() == 0  # every call above returned OK


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        (Success(b""), "succeeded"),
        (InTaskFailure("ValueError", "no"), "failed"),
        (Timeout(700), "timed_out"),
        (ExecutorCrash(exit_code=3), "crashed"),
    ],
)
async def test_each_outcome_kind_has_its_label(
    autojump_clock: trio.testing.MockClock,
    outcome: Success | InTaskFailure | Timeout | ExecutorCrash,
    label: str,
) -> None:
    assert outcome_kind(outcome) == label
    ports = Ports()
    await ports.receive(A(1))
    ports.fake_storage.push_register(ctx("echo"))
    request = await ports.register(A(1))
    ports.fake_pool.push(outcome)
    await ports.executor.execute(request)
    assert {o: ports.finished(o) for o in ("succeeded", "failed", "timed_out", "crashed")} == {
        o: (1.0 if o == label else 0.0) for o in ("succeeded", "failed", "timed_out", "crashed")
    }


async def test_failed_polls_count_by_method_and_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    record = A(1).record
    ports.fake_scheduler.push(Error(StatusCode.UNAVAILABLE), Error(StatusCode.INTERNAL))
    for _ in range(2):
        with pytest.raises(Exception, match="NextTask failed"):
            await ports.scheduler.next_task(EM, record, 100)
    assert ports.value("worker_rpc_errors_total", method="NextTask", code="UNAVAILABLE") == 1
    assert ports.value("worker_rpc_errors_total", method="NextTask", code="INTERNAL") == 1

    # A malformed OK answer is an error too.
    ports.fake_scheduler.push(Malformed)
    with pytest.raises(ProtocolError):
        await ports.scheduler.next_task(EM, record, 100)
    assert ports.value("worker_rpc_errors_total", method="NextTask", code=MALFORMED_REPLY) == 1
    assert ports.value("worker_assignments_received_total") == 0


async def test_registration_errors_count_by_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    await ports.receive(A(1))
    ports.fake_storage.push_register(
        Error(StatusCode.UNAVAILABLE), Error(StatusCode.NOT_FOUND), ctx("echo")
    )
    with pytest.raises(Exception, match="UNAVAILABLE"):
        await ports.register(A(1))
    with pytest.raises(StaleSessionError):
        await ports.register(A(1))
    await ports.register(A(1))
    method = "RegisterTaskInstance"
    assert ports.value("worker_rpc_errors_total", method=method, code="UNAVAILABLE") == 1
    assert ports.value("worker_rpc_errors_total", method=method, code="NOT_FOUND") == 1

    # A registration cancelled by a stop is no error.
    ports.fake_storage.block_register()
    with trio.move_on_after(1):
        await ports.register(A(1))
    assert ports.value("worker_rpc_errors_total", method=method, code="CANCELLED") == 0


async def test_the_session_is_the_highest_learned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    await ports.liveness.register("0.0.0.0")
    ports.fake_liveness.push_heartbeat(3, 2)
    assert await ports.liveness.heartbeat(EM) == 3
    assert ports.value("worker_session") == 3
    assert await ports.liveness.heartbeat(EM) == 2
    assert ports.value("worker_session") == 3


async def test_reports_sent_retried_and_dropped(autojump_clock: trio.testing.MockClock) -> None:
    ports = Ports()
    await ports.liveness.register("0.0.0.0")
    requests = []
    for n in range(3):
        await ports.receive(A(n, index=n))
        ports.fake_storage.push_register(ctx("echo"))
        request = await ports.register(A(n, index=n))
        ports.fake_pool.push(InTaskFailure("E", "m"))
        await ports.executor.execute(request)
        requests.append(request)
    first, second, third = requests

    # Retried once after UNAVAILABLE, then sent.
    ports.fake_storage.failure_script.push(Error(StatusCode.UNAVAILABLE), None)
    with pytest.raises(Exception, match="UNAVAILABLE"):
        await ports.storage.report_task_failure(failure_report(first))
    await ports.storage.report_task_failure(failure_report(first))
    assert ports.value("worker_reports_sent_total") == 1
    assert ports.value("worker_report_retries_total") == 1

    # A final answer drops it.
    ports.fake_storage.failure_script.push(Error(StatusCode.FAILED_PRECONDITION))
    with pytest.raises(StaleStateError):
        await ports.storage.report_task_failure(failure_report(second))
    assert ports.value("worker_reports_dropped_total") == 1

    # A transient failure, never tried again (the core's gate 2 gave it up): dropped once
    # Shutdown starts, since no report is attempted after the drain.
    ports.fake_storage.failure_script.push(Error(StatusCode.DEADLINE_EXCEEDED))
    with pytest.raises(Exception, match="DEADLINE_EXCEEDED"):
        await ports.storage.report_task_failure(failure_report(third))
    assert ports.value("worker_reports_dropped_total") == 1
    await ports.scheduler.shutdown(EM, [])
    assert ports.value("worker_reports_dropped_total") == 2
    assert ports.value("worker_reports_sent_total") == 1
    assert ports.value("worker_report_retries_total") == 1


async def test_a_report_abandoned_by_a_forced_stop_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    await ports.receive(A(1))
    ports.fake_storage.push_register(ctx("echo"))
    request = await ports.register(A(1))
    ports.fake_pool.push(Success(b""))
    await ports.executor.execute(request)
    ports.fake_storage.success_script.push(Hang(None))
    with trio.move_on_after(1):
        await ports.storage.report_task_success(success_report(request))
    assert ports.value("worker_reports_dropped_total") == 1
    assert ports.value("worker_reports_sent_total") == 0


async def test_heartbeat_failures_count_per_loop(autojump_clock: trio.testing.MockClock) -> None:
    ports = Ports()
    ports.fake_liveness.push_heartbeat(Error(StatusCode.UNAVAILABLE))
    ports.fake_scheduler.heartbeat_script.push(Error(StatusCode.UNAVAILABLE), None)
    with pytest.raises(Exception, match="UNAVAILABLE"):
        await ports.liveness.heartbeat(EM)
    with pytest.raises(Exception, match="UNAVAILABLE"):
        await ports.scheduler.heartbeat(EM)
    await ports.scheduler.heartbeat(EM)
    assert ports.value("worker_heartbeat_failures_total", loop="storage") == 1
    assert ports.value("worker_heartbeat_failures_total", loop="scheduler") == 1
    method = "UpdateExecutionManagerHeartbeat"
    assert ports.value("worker_rpc_errors_total", method=method, code="UNAVAILABLE") == 1
    assert ports.value("worker_rpc_errors_total", method="Heartbeat", code="UNAVAILABLE") == 1


async def test_readiness_runs_from_registration_until_draining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    assert not ports.metrics.health.ready
    await ports.liveness.register("0.0.0.0")
    assert ports.metrics.health.ready
    assert ports.instruments.registered.is_set()
    ports.instruments.draining_began()
    assert not ports.metrics.health.ready
    assert ports.value("worker_ready") == 0

    # A registration answered after the signal (the stop raced it) does not make it ready.
    late = Ports()
    late.instruments.draining_began()
    await late.liveness.register("0.0.0.0")
    assert not late.metrics.health.ready


async def test_shutdown_drops_the_reports_never_attempted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = Ports()
    await ports.liveness.register("0.0.0.0")
    requests = []
    for n in range(2):
        await ports.receive(A(n, index=n))
        ports.fake_storage.push_register(ctx("echo"))
        requests.append(await ports.register(A(n, index=n)))
        ports.fake_pool.push(Success(b""))
        await ports.executor.execute(requests[-1])
    await ports.storage.report_task_success(success_report(requests[0]))
    # The second report is owed and never attempted (e.g. its outcome failed gate 2).

    await ports.scheduler.shutdown(EM, [A(0).record, A(1, index=1).record])
    assert ports.value("worker_reports_sent_total") == 1
    assert ports.value("worker_reports_dropped_total") == 1
    assert not ports.metrics.health.ready


async def test_the_runtime_over_instrumented_ports(autojump_clock: trio.testing.MockClock) -> None:
    """The real runtime takes the decorators where it took the fakes; counts add up."""
    ports = Ports()
    ports.fake_scheduler.push(Assign(A(1)))
    ports.fake_storage.push_register(ctx("echo", 1))
    ports.fake_pool.push(Hang(2.0), Success(b"out"))
    runtime = WorkerRuntime(
        RuntimeSettings(
            storage_heartbeat_interval_sec=0.1,
            scheduler_heartbeat_interval_sec=0.1,
            scheduler_poll_wait_ms=2000,
            drain_timeout_sec=5.0,
            shutdown_rpc_budget_sec=1.0,
            backoff_initial_sec=0.05,
            backoff_max_sec=0.5,
            max_send_bytes=4 * 1024 * 1024,
        ),
        scheduler=ports.scheduler,
        storage=ports.storage,
        liveness=ports.liveness,
        open_executor=ports.instruments.executor_factory(ports.fake_pool),
        random=random.Random(0),
    )
    codes: list[ExitCode] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                codes.append(await runtime.run())

            nursery.start_soon(run)
            # The report lands, and the next poll carries the record.
            while ports.value("worker_reports_sent_total") < 1 or (
                ports.fake_scheduler.next_task_count < 2
            ):
                await ports.journal.changed()
            assert ports.metrics.health.ready
            ports.instruments.draining_began()
            runtime.request_stop()
    assert codes == [ExitCode.OK]
    assert ports.value("worker_assignments_received_total") == 1
    assert ports.finished("succeeded") == 1
    assert ports.value("worker_task_duration_seconds_sum", outcome="succeeded") == 2.0
    assert ports.value("worker_reports_sent_total") == 1
    assert ports.value("worker_reports_dropped_total") == 0
    assert ports.value("worker_heartbeat_failures_total", loop="storage") == 0
    assert not ports.metrics.health.ready
