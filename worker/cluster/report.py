"""``local --report run.html``: one self-contained HTML file (inline CSS and SVG, no script, no
network) showing how a local run went.

* **Task stream**: one lane per worker slot, each task attempt a bar from its registration to
  its report, coloured by outcome (succeeded, failed, lost, still running), in the spirit of
  Dask's task stream. Storage records who ran what when (:mod:`worker.cluster.attempts`); lanes
  are the concurrent attempts of one worker, packed greedily (a worker running one task at a time
  has one lane; a worker with several slots gets one lane per slot in use).
* **Job graph**: the tasks by depth, left to right, each box coloured by its final state, with an
  edge from each parent.
* **Summary**, the **failed tasks** with their traceback tails, and the **slowest** attempts.

Every text from the run is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from worker.cluster.attempts import Attempt
from worker.cluster.failures import TaskFailure, task_name
from worker.cluster.jobs import Job, Ref

__all__ = ["OUTCOME_COLOURS", "ReportData", "lanes", "render_report", "write_report"]

#: Outcome or task state -> fill colour (shared by the stream and the graph).
OUTCOME_COLOURS: Final = {
    "succeeded": "#3a9d5d",
    "failed": "#d64545",
    "lost": "#9a9a9a",
    "running": "#e0a030",
    "waiting": "#b58be0",
    "ready": "#7fb3e6",
    "pending": "#d9d9d9",
    "cancelled": "#bdbdbd",
}
_SLOWEST: Final = 10
_LANE_HEIGHT: Final = 22
_STREAM_WIDTH: Final = 1000
_LABEL_WIDTH: Final = 130
_NODE_W: Final = 120
_NODE_H: Final = 22
_COLUMN_GAP: Final = 60
_ROW_GAP: Final = 6
_MAX_ROWS: Final = 20


@attrs.frozen(slots=True)
class ReportData:
    """What the report shows: the job, its final state and the records of the run."""

    job: Job
    job_id: int
    state: str
    wall_sec: float
    task_states: dict[str, str]
    attempts: list[Attempt]
    failures: list[TaskFailure]
    error: str = ""
    sink_outputs: str = ""
    #: Task slots per worker (lanes per worker in the stream); None: as the attempts overlap.
    slots_per_worker: int | None = None


def lanes(
    attempts: Sequence[Attempt], slots_per_worker: int | None = None
) -> list[tuple[str, list[Attempt]]]:
    """``[(lane label, attempts)]``: per worker, attempts packed into lanes so that attempts in
    one lane do not overlap, at most ``slots_per_worker`` lanes (None: as many as needed).

    Storage sees an attempt from registration to report, and a worker may register its next
    task just before the report of the previous one arrives; with the lanes capped at the slot
    count such an attempt joins the lane that frees first (the bars then touch or overlap a
    little) instead of opening a lane the worker does not have."""
    result: list[tuple[str, list[Attempt]]] = []
    for worker_id in sorted({a.worker_id for a in attempts}):
        worker_lanes: list[list[Attempt]] = []
        for attempt in sorted(
            (a for a in attempts if a.worker_id == worker_id), key=lambda a: a.started
        ):
            free = [
                lane
                for lane in worker_lanes
                if lane[-1].ended is not None and lane[-1].ended <= attempt.started
            ]
            if free:
                free[0].append(attempt)
            elif slots_per_worker is None or len(worker_lanes) < slots_per_worker:
                worker_lanes.append([attempt])
            else:
                min(worker_lanes, key=_lane_end).append(attempt)
        result.extend(
            (f"worker {worker_id} · slot {n + 1}", lane) for n, lane in enumerate(worker_lanes)
        )
    return result


def _lane_end(lane: list[Attempt]) -> float:
    last = lane[-1]
    return last.ended if last.ended is not None else float("inf")


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _stream_svg(data: ReportData) -> str:
    rows = lanes(data.attempts, data.slots_per_worker)
    if not rows:
        return "<p>No task ran.</p>"
    origin = min(a.started for a in data.attempts)
    end = max((a.ended if a.ended is not None else a.started) for a in data.attempts)
    span = max(end - origin, 1e-3)
    scale = (_STREAM_WIDTH - _LABEL_WIDTH - 50) / span
    height = len(rows) * _LANE_HEIGHT + 30
    parts = [
        f'<svg class="stream" width="{_STREAM_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_STREAM_WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for row, (label, attempts) in enumerate(rows):
        y = row * _LANE_HEIGHT
        parts.append(f'<text x="0" y="{y + 15}" class="lane">{_esc(label)}</text>')
        for attempt in attempts:
            stop = attempt.ended if attempt.ended is not None else end
            x = _LABEL_WIDTH + (attempt.started - origin) * scale
            width = max((stop - attempt.started) * scale, 1.5)
            name = task_name(data.job, attempt.task)
            tip = f"{name}: {attempt.outcome}, {(stop - attempt.started) * 1000:.0f} ms"
            colour = OUTCOME_COLOURS.get(attempt.outcome, "#444")
            parts.append(
                f'<rect class="bar {_esc(attempt.outcome)}" x="{x:.1f}" y="{y + 3}" '
                f'width="{width:.1f}" height="{_LANE_HEIGHT - 6}" fill="{colour}">'
                f"<title>{_esc(tip)}</title></rect>"
            )
    axis_y = len(rows) * _LANE_HEIGHT + 18
    for step in range(6):
        seconds = span * step / 5
        x = _LABEL_WIDTH + seconds * scale
        parts.append(f'<text x="{x:.1f}" y="{axis_y}" class="tick">{seconds:.2f} s</text>')
    parts.append("</svg>")
    return "".join(parts)


def _depths(job: Job) -> list[int]:
    depth: dict[str, int] = {}
    for task in job.tasks:  # parents come first
        parents = [depth[i.task] for i in task.inputs if isinstance(i, Ref)]
        depth[task.name] = 1 + max(parents, default=-1)
    return [depth[task.name] for task in job.tasks]


def _graph_svg(data: ReportData) -> str:
    job = data.job
    depths = _depths(job)
    # A wide level (a fan-out) is folded into several columns of at most _MAX_ROWS boxes.
    levels: dict[int, list[int]] = {}
    for index, depth in enumerate(depths):
        levels.setdefault(depth, []).append(index)
    columns: dict[int, list[int]] = {}
    for depth in sorted(levels):
        members = levels[depth]
        for start in range(0, len(members), _MAX_ROWS):
            columns[len(columns)] = members[start : start + _MAX_ROWS]
    position: dict[str, tuple[float, float]] = {}
    for depth, members in columns.items():
        for row, index in enumerate(members):
            position[job.tasks[index].name] = (
                depth * (_NODE_W + _COLUMN_GAP) + 5,
                row * (_NODE_H + _ROW_GAP) + 5,
            )
    width = (max(columns) + 1) * (_NODE_W + _COLUMN_GAP)
    height = max(len(m) for m in columns.values()) * (_NODE_H + _ROW_GAP) + 10
    parts = [
        f'<svg class="graph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for task in job.tasks:
        x2, y2 = position[task.name]
        for item in task.inputs:
            if isinstance(item, Ref):
                x1, y1 = position[item.task]
                parts.append(
                    f'<line x1="{x1 + _NODE_W:.0f}" y1="{y1 + _NODE_H / 2:.0f}" '
                    f'x2="{x2:.0f}" y2="{y2 + _NODE_H / 2:.0f}" class="edge"/>'
                )
    for task in job.tasks:
        x, y = position[task.name]
        state = data.task_states.get(task.name, "pending")
        colour = OUTCOME_COLOURS.get(state, "#444")
        label = task.name if len(task.name) <= 16 else task.name[:15] + "…"
        parts.append(
            f'<g class="node {_esc(state)}"><rect x="{x:.0f}" y="{y:.0f}" width="{_NODE_W}" '
            f'height="{_NODE_H}" rx="4" fill="{colour}"><title>{_esc(task.name)}: '
            f"{_esc(state)}</title></rect>"
            f'<text x="{x + 6:.0f}" y="{y + 15:.0f}" class="node-label">{_esc(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _summary_rows(data: ReportData) -> str:
    counts: dict[str, int] = {}
    for state in data.task_states.values():
        counts[state] = counts.get(state, 0) + 1
    rows = [
        ("job", f"{data.job.name} (id {data.job_id})"),
        ("state", data.state),
        ("wall time", f"{data.wall_sec:.2f} s"),
        ("tasks", ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))),
        ("attempts", str(len(data.attempts))),
    ]
    if data.sink_outputs:
        rows.append(("outputs", data.sink_outputs))
    if data.error:
        rows.append(("error", data.error))
    return "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)


def _failures(data: ReportData) -> str:
    if not data.failures:
        return ""
    items = []
    for failure in data.failures:
        tail = "\n".join(failure.traceback_tail)
        items.append(
            f"<li><b>{_esc(failure.name)}</b>: {_esc(failure.error)}"
            + (f"<pre>{_esc(tail)}</pre>" if tail else "")
            + "</li>"
        )
    return f'<h2>Failed tasks</h2><ul class="failures">{"".join(items)}</ul>'


def _slowest(data: ReportData) -> str:
    finished = [a for a in data.attempts if a.ended is not None]
    finished.sort(key=lambda a: (a.ended or 0) - a.started, reverse=True)
    rows = "".join(
        f"<tr><td>{_esc(task_name(data.job, a.task))}</td>"
        f"<td>{((a.ended or 0) - a.started) * 1000:.0f} ms</td><td>{_esc(a.outcome)}</td>"
        f"<td>worker {a.worker_id}</td></tr>"
        for a in finished[:_SLOWEST]
    )
    return (
        "<h2>Slowest tasks</h2><table><tr><th>task</th><th>duration</th><th>outcome</th>"
        f"<th>where</th></tr>{rows}</table>"
    )


def _legend() -> str:
    return "".join(
        f'<span class="key"><i style="background:{colour}"></i>{_esc(name)}</span>'
        for name, colour in OUTCOME_COLOURS.items()
    )


_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse}th,td{text-align:left;padding:3px 10px;border-bottom:1px solid #eee}
.scroll{overflow-x:auto;border:1px solid #eee;padding:6px}
.lane,.tick,.node-label{font:11px system-ui,sans-serif}.tick{fill:#666}
.node-label{fill:#fff}.edge{stroke:#aaa;stroke-width:1}
.key{margin-right:12px;font-size:12px}.key i{display:inline-block;width:10px;height:10px;
margin-right:4px;vertical-align:middle}
pre{background:#f6f6f6;padding:6px;overflow-x:auto}
"""


def render_report(data: ReportData) -> str:
    """The HTML document."""
    title = f"{data.job.name}: {data.state}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Run report: {_esc(title)}</h1>"
        f'<table class="summary">{_summary_rows(data)}</table>'
        f"{_failures(data)}"
        f"<h2>Task stream</h2><p>{_legend()}</p>"
        f'<div class="scroll">{_stream_svg(data)}</div>'
        f'<h2>Job graph</h2><div class="scroll">{_graph_svg(data)}</div>'
        f"{_slowest(data)}"
        "</body></html>\n"
    )


def write_report(path: Path, data: ReportData) -> None:
    """Write the report to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
