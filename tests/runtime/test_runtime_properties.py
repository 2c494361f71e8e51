"""H1-H12: the trio runtime driven by Hypothesis-drawn scripts (scenarios.md section 6).

Each example builds the fakes from drawn scripts, runs the runtime inside its own ``trio.run``
with ``MockClock(autojump_threshold=0)`` (all I/O is in-process), stops it at the drawn stop point
(graceful, graceful+force, or outer cancel; otherwise a graceful stop once everything settled),
then checks every property against the shared journal. On failure the journal is printed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import attrs
import trio
import trio.testing
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.runtime.harness import POLL_WAIT_MS, A, Harness, ctx
from worker.core.backoff import BackoffPolicy
from worker.core.decisions import StopCause
from worker.core.machine import INITIAL_STATE, TERMINAL_STATES, TRANSITIONS, State
from worker.errors import StatusCode
from worker.exit_codes import ExitCode
from worker.model import (
    ExecutionContext,
    ExecutorCrash,
    FailureReport,
    InTaskFailure,
    Outcome,
    SchedulerAssignment,
    Success,
    SuccessReport,
    TaskAssignmentRecord,
    TaskId,
    Timeout,
)
from worker.testing import Always, Assign, Error, Hang, JournalEntry, Malformed, NoTask, Phase
from worker.testing.storage import RegisterItem

SESSION = 2  # the initial session: "current - 1" is still a valid session
QUIET_STOP_AT = 6.0  # without a drawn stop point: stop gracefully once everything settled
EPS = 1e-6

_TRANSIENT = [
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.INTERNAL,
    StatusCode.UNKNOWN,
]
_RESOLVED_RESULTS = {"NOT_FOUND", "FAILED_PRECONDITION", "malformed"}
_DELIVERING = {"assignment", "no_task", "malformed"}
#: protocol.md section 6.11: when causes combine, the first of these that occurred wins.
_PRECEDENCE = [ExitCode.CONFIG, ExitCode.FATAL, ExitCode.EVICTED, ExitCode.FORCED, ExitCode.OK]


@attrs.frozen
class RegisterPlan:
    """Per assignment: transient errors, then one resolving answer (or Block)."""

    transient: tuple[StatusCode, ...]
    resolution: str  # "ok" | "NOT_FOUND" | "FAILED_PRECONDITION" | "block"


@attrs.frozen
class Scenario:
    """One drawn example."""

    items: tuple[object, ...]
    apply_acks_on_error: bool
    plans: tuple[RegisterPlan, ...]
    executions: tuple[tuple[float, Outcome], ...]
    success_replies: tuple[StatusCode, ...]
    failure_replies: tuple[StatusCode, ...]
    heartbeats: tuple[tuple[float, int | StatusCode], ...]
    stop: tuple[float, str] | None
    drain_timeout: float
    seed: int


_outcomes: st.SearchStrategy[Outcome] = st.sampled_from(
    [
        Success(b"\x00\x00\x00\x00"),
        InTaskFailure("RuntimeError", "boom"),
        Timeout(100),
        ExecutorCrash(signal=9),
    ]
)
_report_codes = st.sampled_from(
    [
        StatusCode.OK,
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.NOT_FOUND,
        StatusCode.FAILED_PRECONDITION,
    ]
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Draw one scenario (scenarios.md section 6)."""
    kinds = draw(
        st.lists(
            st.sampled_from(
                ["assign", "assign", "assign", "no_task", "malformed", "error", "always", "hang"]
            ),
            max_size=12,
        )
    )
    items: list[object] = []
    n = 0
    for kind in kinds:
        if kind == "assign":
            session = SESSION + draw(st.sampled_from([-1, 0, 0, 1]))
            items.append(Assign(A(n, session=session, index=n)))
            n += 1
        elif kind == "no_task":
            items.append(NoTask)
        elif kind == "malformed":
            items.append(Malformed)
        elif kind == "error":
            items.append(Error(draw(st.sampled_from(_TRANSIENT))))
        elif kind == "always":
            # An outage: every poll fails until the drawn virtual time, then the script goes on.
            until = draw(st.sampled_from([0.2, 0.7, 1.5]))
            items.append(Always(Error(draw(st.sampled_from(_TRANSIENT))), until=until))
        else:
            items.append(Hang(draw(st.sampled_from([0.01, 0.1, 0.3]))))
    plans = tuple(
        RegisterPlan(
            tuple(draw(st.lists(st.sampled_from(_TRANSIENT), max_size=3))),
            draw(st.sampled_from(["ok", "ok", "NOT_FOUND", "FAILED_PRECONDITION", "block"])),
        )
        for _ in range(n)
    )
    executions = tuple(
        (draw(st.sampled_from([0.0, 0.05, 0.4, 1.5])), draw(_outcomes)) for _ in range(n)
    )
    heartbeat_items = st.one_of(
        st.sampled_from([SESSION, SESSION, SESSION + 1, SESSION - 1]),
        st.sampled_from([StatusCode.FAILED_PRECONDITION, StatusCode.UNAVAILABLE]),
    )
    stop = draw(
        st.none()
        | st.tuples(
            st.floats(min_value=0.01, max_value=3.0),
            st.sampled_from(["graceful", "graceful+force", "outer"]),
        )
    )
    return Scenario(
        items=tuple(items),
        apply_acks_on_error=draw(st.booleans()),
        plans=plans,
        executions=executions,
        success_replies=tuple(draw(st.lists(_report_codes, max_size=4))),
        failure_replies=tuple(draw(st.lists(_report_codes, max_size=4))),
        heartbeats=tuple(
            sorted(
                draw(
                    st.lists(
                        st.tuples(st.floats(min_value=0.0, max_value=3.0), heartbeat_items),
                        max_size=4,
                    )
                ),
                key=lambda event: event[0],
            )
        ),
        stop=stop,
        drain_timeout=draw(st.sampled_from([0.3, 1.0, 5.0])),
        seed=draw(st.integers(0, 2**16)),
    )


def _reply(code: StatusCode) -> Error | None:
    return None if code is StatusCode.OK else Error(code)


@attrs.define
class Run:
    """What happened in one example."""

    harness: Harness
    scenario: Scenario
    assignments: dict[TaskId, SchedulerAssignment]
    exit_code: ExitCode | None = None
    outer_cancelled: bool = False
    stop_time: float | None = None
    forced: bool = False
    ended_at: float = 0.0


def _build(scenario: Scenario) -> Run:
    h = Harness(
        initial_session=SESSION,
        apply_acks_on_error=scenario.apply_acks_on_error,
        drain_timeout_sec=scenario.drain_timeout,
        seed=scenario.seed,
    )
    assignments: dict[TaskId, SchedulerAssignment] = {}
    h.scheduler.push(*scenario.items)  # type: ignore[arg-type]
    plan_index = 0
    for item in scenario.items:
        if not isinstance(item, Assign):
            continue
        a = item.assignment
        assignments[a.assignment.task_id] = a
        plan = scenario.plans[plan_index]
        plan_index += 1
        script: list[RegisterItem | Hang] = [Error(code) for code in plan.transient]
        if plan.resolution == "ok":
            script.append(ctx("noop"))
        elif plan.resolution == "block":
            script.append(Hang(None))
        else:
            script.append(Error(StatusCode[plan.resolution]))
        h.storage.script_register(a.assignment.task_id, tuple(script))
    for duration, outcome in scenario.executions:
        if duration:
            h.pool.push(Hang(duration))
        h.pool.push(outcome)
    h.storage.success_script.push(*[_reply(c) for c in scenario.success_replies])
    h.storage.failure_script.push(*[_reply(c) for c in scenario.failure_replies])
    return Run(h, scenario, assignments)


async def _drive(run: Run) -> None:
    h, scenario = run.harness, run.scenario
    kind = scenario.stop[1] if scenario.stop else "graceful"
    stop_at = scenario.stop[0] if scenario.stop else QUIET_STOP_AT
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:

            async def runner() -> None:
                run.exit_code = await h.runtime.run()
                nursery.cancel_scope.cancel()

            nursery.start_soon(runner)
            nursery.start_soon(_storage_changes, run)
            await trio.sleep(stop_at)
            run.stop_time = trio.current_time()
            if kind == "outer":
                outer.cancel()
            else:
                h.runtime.request_stop()
                if kind == "graceful+force":
                    await trio.sleep(0.05)
                    run.forced = not h.done.is_set()
                    h.runtime.request_stop()
            await trio.sleep_forever()
    run.outer_cancelled = outer.cancelled_caught
    run.ended_at = trio.current_time()


async def _storage_changes(run: Run) -> None:
    """At the drawn times: a new storage session (persistent) or a one-shot heartbeat answer."""
    for at, answer in run.scenario.heartbeats:
        await trio.sleep_until(at)
        if isinstance(answer, StatusCode):
            run.harness.liveness.push_heartbeat(Error(answer))
        elif answer > SESSION:
            run.harness.liveness.set_default_session(answer)
        else:
            run.harness.liveness.push_heartbeat(answer)


# --- journal helpers -----------------------------------------------------------------------------


def _ends(h: Harness, fake: str, method: str) -> list[JournalEntry]:
    return h.journal.calls(fake, method, Phase.END)


def _tracker_before(h: Harness, seq: int) -> int:
    """The worker's session tracker just before journal position ``seq``."""
    sessions = [
        e.result
        for e in _ends(h, "liveness", "heartbeat")
        if e.seq < seq and isinstance(e.result, int)
    ]
    return max([SESSION, *sessions])


def _pairs(entries: list[JournalEntry]) -> list[tuple[JournalEntry, JournalEntry]]:
    """Match start and end entries of one fake method (calls of one method never overlap here)."""
    starts = [e for e in entries if e.phase is Phase.START]
    ends = [e for e in entries if e.phase is Phase.END]
    return list(zip(starts, ends, strict=False))


def _check_gaps(
    pairs: list[tuple[JournalEntry, JournalEntry]], policy: BackoffPolicy, what: str
) -> None:
    """H12 for consecutive attempts: the n-th gap (end of n to start of n+1) lies in bounds(n)."""
    for n, ((_, end), (start, _)) in enumerate(itertools.pairwise(pairs)):
        low, high = policy.bounds(n)
        gap = start.time - end.time
        assert low - EPS <= gap <= high + EPS, f"{what}: gap {n} = {gap}, expected [{low}, {high}]"


def _records(entries: Iterable[JournalEntry]) -> list[TaskAssignmentRecord]:
    return [r for e in entries for r in e.args if isinstance(r, TaskAssignmentRecord)]


def _report_task(entry: JournalEntry) -> TaskId | None:
    report = entry.args[0]
    return report.task_id if isinstance(report, SuccessReport | FailureReport) else None


def _check(run: Run) -> None:
    h, scenario = run.harness, run.scenario
    j = h.journal
    policy = h.settings.backoff
    calls = h.scheduler.calls
    shutdowns = j.calls("scheduler", "shutdown")
    draining_moves = [e for e in j.calls("machine", phase=Phase.END) if e.args[1] is State.DRAINING]
    drain_seq = draining_moves[0].seq if draining_moves else math.inf
    drain_time = draining_moves[0].time if draining_moves else math.inf

    # Black-box consumption evidence per assignment.
    registers = {tid: [] for tid in run.assignments}  # type: dict[TaskId, list[JournalEntry]]
    for e in j.entries:
        if e.fake == "storage" and e.method == "register_task_instance":
            registers[e.args[1]].append(e)  # type: ignore[index]
    arrivals: dict[TaskId, JournalEntry] = {}
    for e in _ends(h, "scheduler", "next_task"):
        if e.result == "assignment":
            call = next(
                c
                for c in calls
                if c.ended == e.time
                and c.assignment is not None
                and c.assignment.assignment.task_id not in arrivals
            )
            arrivals[call.assignment.assignment.task_id] = e  # type: ignore[union-attr]
    # Consumed (A1), from the wire alone: storage resolved its registration, or it was stale at
    # arrival, or (possibly) turned stale between registration retries. ``evidence`` orders them.
    definitely: set[TaskAssignmentRecord] = set()
    possibly: set[TaskAssignmentRecord] = set()
    evidence: dict[TaskAssignmentRecord, float] = {}
    for tid, a in run.assignments.items():
        ends = [e for e in registers[tid] if e.phase is Phase.END]
        arrival = arrivals.get(tid)
        if ends and (
            isinstance(ends[-1].result, ExecutionContext) or ends[-1].result in _RESOLVED_RESULTS
        ):
            definitely.add(a.record)
            evidence[a.record] = ends[-1].seq
        elif (
            not ends
            and arrival is not None
            and arrival.seq < drain_seq
            and a.session_id < _tracker_before(h, arrival.seq)
        ):
            definitely.add(a.record)  # stale at arrival: recorded without a storage call
            evidence[a.record] = arrival.seq
        elif a.session_id < _tracker_before(h, j.entries[-1].seq + 1):
            possibly.add(a.record)
    on_the_wire = set(_records(j.calls("scheduler", "next_task")))
    on_the_wire |= {r for records in h.scheduler.shutdown_calls for r in records}
    consumed_set = definitely | (possibly & on_the_wire)
    if shutdowns and not run.outer_cancelled:
        assert definitely <= on_the_wire, "A6: a consumed record never went out"
    assert on_the_wire <= consumed_set
    consumed = sorted(consumed_set, key=lambda r: evidence.get(r, math.inf))

    # H1 / H3: only records of assignments consumed before the request started are sent.
    for request in [*j.calls("scheduler", "next_task"), *shutdowns]:
        for record in _records([request]):
            assert record in consumed_set, f"unconsumed record {record} in #{request.seq}"
            tid = next(t for t, a in run.assignments.items() if a.record == record)
            assert arrivals[tid].seq < request.seq
            resolving = [e for e in registers[tid] if e.phase is Phase.END]
            if resolving and record in definitely:
                assert resolving[-1].seq < request.seq

    # H2: exactly-once delivery (at most once after an outer cancel).
    for record in consumed:
        delivering = [c for c in calls if c.prev == record and c.outcome in _DELIVERING]
        in_shutdown = sum(1 for records in h.scheduler.shutdown_calls if record in records)
        total = len(delivering) + in_shutdown
        if run.outer_cancelled:
            assert total <= 1
        elif shutdowns:
            assert total == 1, f"{record} delivered {total} times"
        # Failed or cancelled carriers all precede the delivering one.
        if delivering:
            last_ok = delivering[0].seq
            assert all(
                c.seq < last_ok for c in calls if c.prev == record and c.outcome not in _DELIVERING
            )

    # H4: at most one record per NextTask (by type), FIFO, fixed wait time.
    assert all(c.wait_time_ms == POLL_WAIT_MS for c in calls)
    sent_order: list[TaskAssignmentRecord] = []
    for c in calls:
        if c.prev is not None and c.prev not in sent_order:
            sent_order.append(c.prev)
    for records in h.scheduler.shutdown_calls:
        sent_order += [r for r in records if r not in sent_order]
    known = [r for r in sent_order if r in evidence]  # stale between retries: order unknown
    assert known == sorted(known, key=evidence.__getitem__), "H4: records left out of FIFO order"
    # One slot consumes in one order: what went out is a prefix of it, the stale ones included.
    assert sent_order == list(h.runtime.ledger.consumption_order)[: len(sent_order)]

    # H5 / H6 / H7: storage calls per assignment.
    reports = h.storage.reports
    for tid, a in run.assignments.items():
        arrival = arrivals.get(tid)
        starts = [e for e in registers[tid] if e.phase is Phase.START]
        instance_reports = [r for r in reports if r.report.task_id == tid]
        if arrival is not None and a.session_id < _tracker_before(h, arrival.seq):
            assert starts == [], "H5: storage call for a stale assignment"
            assert instance_reports == []
        if arrival is not None and arrival.seq > drain_seq:
            assert starts == [], "H3/H9: registration after Draining"
        assert all(e.args[3] == a.session_id for e in starts)
        executions = [x for x in h.pool.executions if x.request.task_id == tid]
        assert len(executions) <= 1
        if not executions:
            assert instance_reports == []
            continue
        [execution] = executions
        assert all(r.report.session_id == a.session_id for r in instance_reports)
        assert all(
            r.report.task_instance_id == execution.request.task_instance_id
            for r in instance_reports
        )
        if execution.outcome == "cancelled":
            assert instance_reports == [], "H7: a killed instance got a report"
            continue
        end = next(
            e for e in j.calls("pool", "execute", Phase.END) if e.args[0] == execution.request
        )
        if _tracker_before(h, end.seq + 1) > a.session_id:
            assert instance_reports == [], "H6: report after the session advanced"
        kinds = {type(r.report).__name__ for r in instance_reports}
        expected = "SuccessReport" if execution.outcome == "Success" else "FailureReport"
        assert kinds <= {expected}
        for earlier, _ in itertools.pairwise(instance_reports):
            assert earlier.outcome in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), (
                "H7: retry after a final answer"
            )
        method = "report_task_success" if expected == "SuccessReport" else "report_task_failure"
        report_entries = [
            e for e in j.calls("storage", method, phase=None) if _report_task(e) == tid
        ]
        _check_gaps(_pairs(report_entries), policy, f"report {tid}")
        for attempt_start in [e for e in report_entries if e.phase is Phase.START]:
            assert _tracker_before(h, attempt_start.seq) <= a.session_id, (
                "H6: attempt after session advanced"
            )
        # H12: registration re-sends.
        _check_gaps(_pairs(registers[tid]), policy, f"register {tid}")

    # H8: declared transitions; initial and terminal states.
    declared = {(t.source, t.dest, t.trigger) for t in TRANSITIONS}
    assert all(move in declared for move in h.transitions)
    assert h.transitions[0][0] is INITIAL_STATE
    if not run.outer_cancelled:
        assert h.transitions[-1][1] in TERMINAL_STATES

    # H9: Draining is final; no NextTask or register starts after it.
    entered = False
    for _, dest, _ in h.transitions:
        if entered:
            assert dest not in (State.AWAITING, State.REGISTERING)
        entered = entered or dest is State.DRAINING
    later = [e for e in j.calls() if e.seq > drain_seq]
    assert not [e for e in later if e.method in ("next_task", "register_task_instance")]

    # H10: exactly one Shutdown, after every other scheduler call and every heartbeat started.
    if not run.outer_cancelled:
        assert len(shutdowns) == 1
        [shutdown] = shutdowns
        others = [e for e in j.calls("scheduler") if e.method != "shutdown"]
        assert all(e.seq < shutdown.seq for e in others)
        assert all(e.seq < shutdown.seq for e in j.calls("liveness", "heartbeat"))
    else:
        assert len(shutdowns) <= 1

    # H11: termination and exit code.
    if run.outer_cancelled:
        assert run.exit_code is None  # Cancelled reached the test's scope; no code
    assert (
        run.ended_at - min(drain_time, run.stop_time or math.inf)
        <= scenario.drain_timeout + 2 + EPS
    )
    if not run.outer_cancelled:
        causes = [ExitCode.OK]
        register_results = [
            e.result for es in registers.values() for e in es if e.phase is Phase.END
        ]
        if "INVALID_ARGUMENT" in register_results or "malformed" in register_results:
            causes.append(ExitCode.FATAL)
        for e in _ends(h, "liveness", "heartbeat"):
            if e.result in ("FAILED_PRECONDITION", "INVALID_ARGUMENT") or (
                isinstance(e.result, int) and e.result < _tracker_before(h, e.seq)
            ):
                causes.append(ExitCode.EVICTED)
        [shutdown] = shutdowns
        # A forced stop is exact: the test forced it, or the runtime's drain deadline fired. The
        # latter must agree with the clock: Shutdown starts exactly at the deadline, and only then.
        deadline = drain_time + scenario.drain_timeout
        deadline_fired = not run.forced and shutdown.time >= deadline - EPS
        # ... and the runtime's own account agrees, whichever cause wins the exit code.
        forced_by_deadline = StopCause.FORCED in h.runtime.causes and not run.forced
        assert forced_by_deadline == deadline_fired, (shutdown.time, deadline)
        if deadline_fired:
            assert shutdown.time <= deadline + EPS, "H11: the drain ran past its deadline"
        if run.forced or deadline_fired:
            causes.append(ExitCode.FORCED)
        wins = next(code for code in _PRECEDENCE if code in causes)
        assert run.exit_code is wins, (run.exit_code, causes)

    # H12: NextTask backoff after errors and malformed replies.
    streak = 0
    for before, after in itertools.pairwise(calls):
        if before.outcome in ("assignment", "no_task"):
            streak = 0
            continue
        if before.outcome == "cancelled" or before.ended is None:
            continue
        low, high = policy.bounds(streak)
        gap = after.started - before.ended
        assert low - EPS <= gap <= high + EPS, f"poll gap {streak} = {gap}"
        streak += 1


@settings(deadline=None)
@given(scenarios())
def test_runtime_properties(scenario: Scenario) -> None:
    run = _build(scenario)
    try:
        trio.run(_drive, run, clock=trio.testing.MockClock(autojump_threshold=0))
        _check(run)
    except BaseException:
        note(run.harness.journal.format())
        raise
