"""The worker's metrics endpoint over real HTTP on loopback (protocol.md section 6.13)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.metrics.scraping import get, scrape
from worker.metrics import (
    OUTCOMES,
    SLOT_STATES,
    MetricsBindError,
    MetricsServer,
    WorkerMetrics,
    run_watchdog,
)


class FakeClock:
    """The documented fault hook: a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self._now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(slots=2)


@pytest.fixture
def server(metrics: WorkerMetrics) -> Iterator[MetricsServer]:
    with MetricsServer(metrics, "127.0.0.1", 0) as running:
        yield running


def test_port_zero_binds_a_free_port_and_every_metric_is_served(server: MetricsServer) -> None:
    assert server.port > 0
    samples = scrape(server.port)
    assert samples[("worker_assignments_received_total", ())] == 0
    for outcome in OUTCOMES:
        assert samples[("worker_tasks_finished_total", labels(outcome=outcome))] == 0
        assert samples[("worker_task_duration_seconds_count", labels(outcome=outcome))] == 0
    for name in (
        "worker_reports_sent_total",
        "worker_report_retries_total",
        "worker_reports_dropped_total",
        "worker_records_pending",
        "worker_records_acknowledged_total",
        "worker_slots_busy",
        "worker_session",
        "worker_id",
        "worker_ready",
    ):
        assert samples[(name, ())] == 0, name
    assert samples[("worker_slots", ())] == 2
    for loop in ("storage", "scheduler"):
        assert samples[("worker_heartbeat_failures_total", labels(loop=loop))] == 0
    # One-hot: each slot starts Idle.
    for slot in ("0", "1"):
        assert samples[("worker_slot_state", labels(slot=slot, state="Idle"))] == 1
        assert samples[("worker_slot_state", labels(slot=slot, state="Executing"))] == 0


def test_values_move_when_the_api_is_called(metrics: WorkerMetrics, server: MetricsServer) -> None:
    metrics.registered(worker_id=7, session=3)
    metrics.assignment_received()
    metrics.assignment_received()
    metrics.slot_state(1, "Registering")
    metrics.slot_state(1, "Executing")
    metrics.slots_busy(1)
    metrics.task_finished("succeeded", 0.2)
    metrics.task_finished("timed_out", 42.0)
    metrics.report_sent()
    metrics.report_retried()
    metrics.report_dropped()
    metrics.records_pending(2)
    metrics.records_acknowledged(3)
    metrics.rpc_error("NextTask", "UNAVAILABLE")
    metrics.rpc_error("NextTask", "UNAVAILABLE")
    metrics.heartbeat_failure("storage")
    metrics.session(4)
    samples = scrape(server.port)
    assert samples[("worker_id", ())] == 7
    assert samples[("worker_session", ())] == 4
    assert samples[("worker_assignments_received_total", ())] == 2
    assert samples[("worker_slot_state", labels(slot="1", state="Executing"))] == 1
    assert samples[("worker_slot_state", labels(slot="1", state="Registering"))] == 0
    assert samples[("worker_slot_state", labels(slot="1", state="Idle"))] == 0
    assert samples[("worker_slot_state", labels(slot="0", state="Idle"))] == 1
    assert samples[("worker_slots_busy", ())] == 1
    assert samples[("worker_tasks_finished_total", labels(outcome="succeeded"))] == 1
    assert samples[("worker_tasks_finished_total", labels(outcome="timed_out"))] == 1
    assert samples[("worker_tasks_finished_total", labels(outcome="failed"))] == 0
    succeeded = labels(outcome="succeeded")
    assert samples[("worker_task_duration_seconds_count", succeeded)] == 1
    assert samples[("worker_task_duration_seconds_sum", succeeded)] == pytest.approx(0.2)
    assert samples[("worker_task_duration_seconds_bucket", (("le", "0.25"), *succeeded))] == 1
    assert samples[("worker_task_duration_seconds_bucket", (("le", "0.1"), *succeeded))] == 0
    timed_out = labels(outcome="timed_out")
    assert samples[("worker_task_duration_seconds_bucket", (("le", "30.0"), *timed_out))] == 0
    assert samples[("worker_task_duration_seconds_bucket", (("le", "60.0"), *timed_out))] == 1
    assert samples[("worker_reports_sent_total", ())] == 1
    assert samples[("worker_report_retries_total", ())] == 1
    assert samples[("worker_reports_dropped_total", ())] == 1
    assert samples[("worker_records_pending", ())] == 2
    assert samples[("worker_records_acknowledged_total", ())] == 3
    assert samples[("worker_rpc_errors_total", labels(method="NextTask", code="UNAVAILABLE"))] == 2
    assert samples[("worker_heartbeat_failures_total", labels(loop="storage"))] == 1
    assert samples[("worker_heartbeat_failures_total", labels(loop="scheduler"))] == 0


def test_bad_labels_are_refused_not_invented(metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError, match="outcome 'lost'"):
        metrics.task_finished("lost", 1.0)
    with pytest.raises(ValueError, match="state 'Sleeping'"):
        metrics.slot_state(0, "Sleeping")
    with pytest.raises(ValueError, match="unknown slot 2"):
        metrics.slot_state(2, "Idle")
    with pytest.raises(ValueError, match="loop 'storag'"):
        metrics.heartbeat_failure("storag")


def test_two_workers_in_one_process_do_not_share_values() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.assignment_received()
    with MetricsServer(first, "127.0.0.1", 0) as a, MetricsServer(second, "127.0.0.1", 0) as b:
        assert scrape(a.port)[("worker_assignments_received_total", ())] == 1
        assert scrape(b.port)[("worker_assignments_received_total", ())] == 0


def test_readyz_is_503_before_registration_200_until_draining_then_503(
    metrics: WorkerMetrics, server: MetricsServer
) -> None:
    assert get(server.port, "/readyz")[0] == 503
    metrics.set_ready(True)
    assert get(server.port, "/readyz")[:1] == (200,)
    assert scrape(server.port)[("worker_ready", ())] == 1
    metrics.set_ready(False)  # draining began
    status, _, body = get(server.port, "/readyz")
    assert (status, body) == (503, "not ready\n")
    # Draining is healthy.
    assert get(server.port, "/healthz")[0] == 200


def test_healthz_flips_when_the_watchdog_stops_ticking() -> None:
    clock = FakeClock()
    metrics = WorkerMetrics(clock=clock)
    with MetricsServer(metrics, "127.0.0.1", 0) as server:
        # Not armed before the first tick: a worker still booting is not "stuck".
        clock.advance(60)
        assert get(server.port, "/healthz")[:1] == (200,)
        metrics.tick()
        clock.advance(10.0)
        assert get(server.port, "/healthz")[0] == 200  # exactly 10 s is still alive
        clock.advance(0.5)
        status, _, body = get(server.port, "/healthz")
        assert status == 503
        assert "no watchdog tick for 10.5 s" in body
        metrics.tick()
        assert get(server.port, "/healthz")[0] == 200


def test_a_heartbeat_loop_that_ended_unexpectedly_is_unhealthy_for_good(
    metrics: WorkerMetrics, server: MetricsServer
) -> None:
    metrics.heartbeat_loop_ended("scheduler", unexpected=False)  # stopping or evicted
    assert get(server.port, "/healthz")[0] == 200
    metrics.heartbeat_loop_ended("storage", unexpected=True)
    metrics.tick()
    status, _, body = get(server.port, "/healthz")
    assert status == 503
    assert body == "the storage heartbeat loop ended unexpectedly\n"


async def test_a_blocked_trio_loop_is_reported_by_the_server_thread() -> None:
    clock = FakeClock()
    metrics = WorkerMetrics(clock=clock)
    with MetricsServer(metrics, "127.0.0.1", 0) as server, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_watchdog, metrics.health, 0.01)
            await trio.sleep(0.05)
            seen: list[int] = []

            def probe_while_blocked() -> None:
                clock.advance(11)
                seen.append(get(server.port, "/healthz")[0])

            # Block the trio loop itself (a synchronous wait on the trio thread): only the
            # server's own thread can answer now.
            prober = threading.Thread(target=probe_while_blocked)
            prober.start()
            prober.join(timeout=20)
            assert seen == [503]
            # Unblocked: the watchdog ticks again and the probe recovers.
            # (another thread's HTTP answer: there is no event to wait on, so poll it)
            while (await trio.to_thread.run_sync(get, server.port, "/healthz"))[0] != 200:  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


def test_assignments_serves_the_providers_snapshot_as_json(metrics: WorkerMetrics) -> None:
    snapshot = {
        "slots": [{"slot": 0, "state": "Executing", "assignment": {"job_id": 5, "task": 0}}],
        "recent": [{"at": "2026-01-01T00:00:00Z", "event": "registered", "why": "storage OK"}],
    }
    with MetricsServer(metrics, "127.0.0.1", 0, assignments=lambda: snapshot) as server:
        status, content_type, body = get(server.port, "/assignments")
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body) == snapshot


def test_assignments_default_and_a_failing_provider(metrics: WorkerMetrics) -> None:
    def broken() -> object:
        raise RuntimeError("boom")

    with MetricsServer(metrics, "127.0.0.1", 0) as server:
        assert json.loads(get(server.port, "/assignments")[2]) == {"slots": [], "recent": []}
        server.assignments = broken
        assert get(server.port, "/assignments")[0] == 500
        assert get(server.port, "/healthz")[0] == 200  # the server thread survived


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/extra", "/healthz/", "/favicon.ico"])
def test_other_paths_are_404(server: MetricsServer, path: str) -> None:
    assert get(server.port, path)[0] == 404


def test_query_strings_are_ignored(server: MetricsServer) -> None:
    assert get(server.port, "/healthz?verbose=1")[0] == 200


def test_a_taken_port_is_a_typed_error_naming_host_and_port(metrics: WorkerMetrics) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(MetricsBindError) as caught:
            MetricsServer(metrics, "127.0.0.1", port)
    assert str(caught.value).startswith(f"cannot serve metrics on 127.0.0.1:{port}: ")
    assert "in use" in str(caught.value)


def test_a_port_taken_by_another_metrics_server_is_refused(metrics: WorkerMetrics) -> None:
    with MetricsServer(metrics, "127.0.0.1", 0) as first, pytest.raises(MetricsBindError):
        MetricsServer(WorkerMetrics(), "127.0.0.1", first.port)


def test_an_unresolvable_host_is_a_bind_error(metrics: WorkerMetrics) -> None:
    with pytest.raises(
        MetricsBindError, match=r"cannot serve metrics on no\.such\.host\.invalid:0"
    ):
        MetricsServer(metrics, "no.such.host.invalid", 0)


def test_close_releases_the_port(metrics: WorkerMetrics) -> None:
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    port = server.port
    server.close()
    with MetricsServer(WorkerMetrics(), "127.0.0.1", port) as again:
        assert get(again.port, "/healthz")[0] == 200


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = MetricsServer(WorkerMetrics(), "::1", 0)
    except MetricsBindError as error:
        pytest.skip(f"IPv6 loopback unavailable: {error}")
    with server:
        assert get(server.port, "/healthz", host="[::1]")[0] == 200


def test_openmetrics_is_served_when_the_scraper_asks_for_it(server: MetricsServer) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        content_type = response.headers["Content-Type"]
        body = response.read().decode()
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert "worker_assignments_received_total 0.0" in body


@given(
    moves=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2), st.sampled_from(SLOT_STATES)),
        max_size=30,
    )
)
def test_each_slot_is_in_exactly_the_state_it_was_last_moved_to(
    moves: list[tuple[int, str]],
) -> None:
    metrics = WorkerMetrics(slots=3)
    expected = dict.fromkeys(range(3), SLOT_STATES[0])
    for slot, state in moves:
        metrics.slot_state(slot, state)
        expected[slot] = state
    for slot in range(3):
        for state in SLOT_STATES:
            value = metrics.registry.get_sample_value(
                "worker_slot_state", {"slot": str(slot), "state": state}
            )
            assert value == (1.0 if state == expected[slot] else 0.0)
