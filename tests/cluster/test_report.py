"""The HTML run report: lanes per worker slot, bars coloured by outcome, the job graph with final
states, failures, slowest tasks; self-contained and escaped."""

from __future__ import annotations

import re

from worker.cluster.attempts import Attempt
from worker.cluster.failures import TaskFailure
from worker.cluster.jobs import JobBuilder, ref
from worker.cluster.report import OUTCOME_COLOURS, ReportData, lanes, render_report

JOB = (
    JobBuilder("demo")
    .task("a<1>", "m", "f", [1])
    .task("b", "m", "f", [2])
    .task("sum", "m", "g", [ref("a<1>"), ref("b")])
    .build()
)


def _attempt(
    instance: int, task: str, worker: int, start: float, end: float | None, outcome: str
) -> Attempt:
    return Attempt(instance, 1, task, worker, start, end, outcome)


ATTEMPTS = [
    _attempt(1, "index:0", 7, 10.0, 11.0, "failed"),
    _attempt(2, "index:1", 7, 10.5, 12.0, "succeeded"),  # overlaps 1: a second slot
    _attempt(3, "index:0", 8, 11.2, 13.5, "succeeded"),
    _attempt(4, "index:2", 7, 13.6, None, "lost"),
]


def test_lanes_pack_each_workers_attempts_without_overlap() -> None:
    packed = lanes(ATTEMPTS)
    assert [(label, [a.instance_id for a in group]) for label, group in packed] == [
        ("worker 7 · slot 1", [1, 4]),
        ("worker 7 · slot 2", [2]),
        ("worker 8 · slot 1", [3]),
    ]


def test_lanes_never_exceed_the_slot_count() -> None:
    packed = lanes(ATTEMPTS, slots_per_worker=1)
    assert [(label, [a.instance_id for a in group]) for label, group in packed] == [
        ("worker 7 · slot 1", [1, 2, 4]),
        ("worker 8 · slot 1", [3]),
    ]


def _report() -> str:
    return render_report(
        ReportData(
            job=JOB,
            job_id=3,
            state="FAILED",
            wall_sec=3.6,
            task_states={"a<1>": "failed", "b": "succeeded", "sum": "cancelled"},
            attempts=ATTEMPTS,
            failures=[TaskFailure("a<1>", "in-task failure: E: <x>", 1, ("raise E('<x>')",))],
            error="in-task failure: E: <x>",
        )
    )


def test_the_report_draws_stream_graph_failures_and_slowest_tasks() -> None:
    page = _report()
    assert page.startswith("<!DOCTYPE html>")
    bars = re.findall(r'<rect class="bar (\w+)"[^>]*fill="([^"]+)"', page)
    assert bars == [
        ("failed", OUTCOME_COLOURS["failed"]),
        ("lost", OUTCOME_COLOURS["lost"]),
        ("succeeded", OUTCOME_COLOURS["succeeded"]),
        ("succeeded", OUTCOME_COLOURS["succeeded"]),
    ]
    assert page.count('class="lane"') == 3
    nodes = re.findall(
        r'<g class="node (\w+)"><rect[^>]*fill="([^"]+)"><title>([^<]*)</title>', page
    )
    assert nodes == [
        ("failed", OUTCOME_COLOURS["failed"], "a&lt;1&gt;: failed"),
        ("succeeded", OUTCOME_COLOURS["succeeded"], "b: succeeded"),
        ("cancelled", OUTCOME_COLOURS["cancelled"], "sum: cancelled"),
    ]
    assert page.count('class="edge"') == 2
    assert "<b>a&lt;1&gt;</b>: in-task failure: E: &lt;x&gt;" in page
    assert "raise E(&#x27;&lt;x&gt;&#x27;)" in page
    slowest = re.findall(r"<tr><td>([^<]+)</td><td>(\d+) ms</td><td>(\w+)</td>", page)
    assert slowest == [
        ("a&lt;1&gt;", "2300", "succeeded"),
        ("b", "1500", "succeeded"),
        ("a&lt;1&gt;", "1000", "failed"),
    ]


def test_the_report_needs_no_network_and_runs_no_script() -> None:
    page = _report()
    assert "<script" not in page
    assert re.findall(r"(?:src|href)=", page) == []
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}
