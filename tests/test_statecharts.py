"""Statecharts: committed sources match the tables; the assignment table fits the worker's."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from worker.core.lifecycle import (
    ASSIGNMENT_FINAL_STATES,
    ASSIGNMENT_INITIAL_STATE,
    ASSIGNMENT_TRANSITIONS,
    HELD_IN,
    AssignmentEvent,
    AssignmentMove,
    AssignmentState,
    overlap_errors,
)
from worker.core.machine import TRANSITIONS, State, Transition, Trigger
from worker.core.phases import PHASE_MOVES, Phase
from worker.statecharts import main
from worker.statecharts.command import stale_files
from worker.statecharts.nurseries import NURSERY_TREE, walk
from worker.statecharts.render import (
    CHART_NAMES,
    assignment_spec,
    phases_spec,
    render_all,
    render_machine,
    worker_spec,
)

ROOT = Path(__file__).resolve().parent.parent
STATECHARTS = ROOT / "statecharts"


# --- drift: the committed sources are exactly what the tables generate -------------------------


@pytest.mark.parametrize("name", sorted(render_all()))
def test_committed_source_matches_the_tables(name: str) -> None:
    generated = render_all()[name]
    committed = (STATECHARTS / name).read_text(encoding="utf-8")
    assert committed == generated, f"statecharts/{name} is out of date: run `just statecharts`"


def test_every_chart_has_mermaid_dot_and_svg_committed() -> None:
    for name in CHART_NAMES:
        for suffix in (".mmd", ".dot", ".svg"):
            assert (STATECHARTS / f"{name}{suffix}").is_file(), (
                f"missing statecharts/{name}{suffix}"
            )


def _dot_nodes_and_edges(dot_source: str) -> tuple[set[str], set[tuple[str, str]]]:
    # The generated DOT has one statement per line: `a -> b [..]` or `a [..]`.
    nodes: set[str] = set()
    edges: set[tuple[str, str]] = set()
    for line in dot_source.splitlines():
        statement = line.strip().split(" [", 1)[0].strip()
        if not statement or statement.startswith(("digraph", "graph", "node", "edge", "}")):
            continue
        if "=" in statement:  # a graph attribute such as `label=...`
            continue
        if " -> " in statement:
            source, dest = (part.strip().strip('"') for part in statement.split(" -> "))
            edges.add((source, dest))
        else:
            nodes.add(statement.strip('"'))
    return nodes, edges


@pytest.mark.parametrize("name", CHART_NAMES)
def test_committed_svg_draws_the_committed_dot(name: str) -> None:
    # Graphviz writes each node and edge as a <g> with a <title> of its name ("a->b" for edges).
    nodes, edges = _dot_nodes_and_edges((STATECHARTS / f"{name}.dot").read_text(encoding="utf-8"))
    tree = ElementTree.parse(STATECHARTS / f"{name}.svg")
    titles: dict[str, set[str]] = {"node": set(), "edge": set()}
    for group in tree.iter("{http://www.w3.org/2000/svg}g"):
        kind = group.get("class")
        title = group.find("{http://www.w3.org/2000/svg}title")
        if kind in titles and title is not None and title.text is not None:
            titles[kind].add(title.text)
    assert titles["node"] == nodes, "SVG out of step with DOT: run `just statecharts`"
    assert titles["edge"] == {f"{a}->{b}" for a, b in edges}
    # Edge labels too: a trigger added between two states already joined changes only a label.
    texts = {t.text for t in tree.iter("{http://www.w3.org/2000/svg}text") if t.text}
    dot_source = (STATECHARTS / f"{name}.dot").read_text(encoding="utf-8")
    for line in dot_source.splitlines():
        match = re.search(r' -> .*\[label=("([^"]*)"|(\w+))', line)
        if match:
            assert (match.group(2) or match.group(3)) in texts, line


# --- the worker chart is the worker table -------------------------------------------------------


def test_worker_chart_draws_every_declared_transition() -> None:
    spec = worker_spec()
    assert set(spec.transitions) == {
        (t.trigger.value, t.source.value, t.dest.value) for t in TRANSITIONS
    }
    assert spec.states == tuple(state.value for state in State)
    mermaid = render_machine(spec).mermaid
    for state in State:
        assert f'state "{state.value}" as {state.value}' in mermaid
    assert "[*] --> Idle" in mermaid
    assert "Stopped --> [*]" in mermaid
    # No state is drawn as "current": the chart is of the table, not of one run.
    assert "s_active\n" not in mermaid.replace("classDef s_active", "")


def test_worker_chart_labels_every_trigger() -> None:
    sources = render_machine(worker_spec())
    for trigger in Trigger:
        assert trigger.value in sources.mermaid
        assert trigger.value in sources.dot


# --- the assignment table, checked against the worker table where they overlap ------------------


def test_assignment_table_agrees_with_the_worker_table() -> None:
    assert overlap_errors() == []


def test_every_assignment_move_that_moves_the_loop_is_declared() -> None:
    for move in ASSIGNMENT_TRANSITIONS:
        if move.worker is not None:
            assert move.worker in TRANSITIONS, move
            assert HELD_IN[move.source] is move.worker.source, move


@pytest.mark.parametrize(
    ("bogus", "complaint"),
    [
        (
            AssignmentMove(
                AssignmentEvent.OUTCOME,
                AssignmentState.REGISTERING,
                AssignmentState.OUTCOME_REPORTED,
                Transition(Trigger.FINISHED, State.REGISTERING, State.IDLE),
            ),
            "undeclared worker move",
        ),
        (
            AssignmentMove(
                AssignmentEvent.REGISTERED,
                AssignmentState.REGISTERING,
                AssignmentState.EXECUTING,
                Transition(Trigger.REGISTRATION_DROPPED, State.REGISTERING, State.IDLE),
            ),
            "should end in Executing",
        ),
        (
            AssignmentMove(
                AssignmentEvent.EXECUTE, AssignmentState.RECEIVED, AssignmentState.EXECUTING
            ),
            "without a worker move",
        ),
    ],
)
def test_overlap_check_catches_a_disagreeing_move(bogus: AssignmentMove, complaint: str) -> None:
    errors = overlap_errors((*ASSIGNMENT_TRANSITIONS, bogus))
    assert any(complaint in error for error in errors), errors


def test_overlap_check_catches_a_worker_move_missing_from_the_assignment_table() -> None:
    without_finished = [m for m in ASSIGNMENT_TRANSITIONS if m.event is not AssignmentEvent.OUTCOME]
    without_finished = [m for m in without_finished if m.event is not AssignmentEvent.OUTCOME_STALE]
    errors = overlap_errors(without_finished)
    assert any("finished" in error and "not drawn" in error for error in errors), errors


def test_assignment_states_are_all_reachable_and_finals_are_terminal() -> None:
    reachable = {ASSIGNMENT_INITIAL_STATE}
    changed = True
    while changed:
        changed = False
        for move in ASSIGNMENT_TRANSITIONS:
            if move.source in reachable and move.dest not in reachable:
                reachable.add(move.dest)
                changed = True
    assert reachable == set(AssignmentState)
    sources = {move.source for move in ASSIGNMENT_TRANSITIONS}
    assert ASSIGNMENT_FINAL_STATES.isdisjoint(sources)
    assert sources | ASSIGNMENT_FINAL_STATES == set(AssignmentState)


def test_consumed_assignments_are_acked_and_unconsumed_ones_never_are() -> None:
    # A1/A2: only consumed assignments reach Acknowledged; what is never consumed never does.
    into_never_acked = {
        m.source for m in ASSIGNMENT_TRANSITIONS if m.dest is AssignmentState.NEVER_ACKED
    }
    assert into_never_acked == {AssignmentState.RECEIVED, AssignmentState.REGISTERING}
    acked_from = {
        m.source for m in ASSIGNMENT_TRANSITIONS if m.dest is AssignmentState.ACKNOWLEDGED
    }
    assert AssignmentState.REGISTERING not in acked_from
    assert AssignmentState.RECEIVED not in acked_from


def test_assignment_chart_draws_each_move_once() -> None:
    spec = assignment_spec()
    assert len(spec.transitions) == len(set(spec.transitions))
    assert set(spec.transitions) == {
        (m.event.value, m.source.value, m.dest.value) for m in ASSIGNMENT_TRANSITIONS
    }


# --- nursery tree ---------------------------------------------------------------------------------


def test_nursery_tree_keys_are_unique_and_drawn() -> None:
    keys = [node.key for _, node in walk(NURSERY_TREE)]
    assert len(keys) == len(set(keys))
    files = render_all(("nurseries",))
    for key in keys:
        assert f"  {key}" in files["nurseries.mmd"]
        assert f"  {key} [" in files["nurseries.dot"]
    labels = {node.label for _, node in walk(NURSERY_TREE)}
    for required in (
        "executor pool",
        "root nursery",
        "worker registration scope",
        "heartbeat loops scope and nursery",
        "storage liveness loop",
        "scheduler heartbeat loop",
        "one task per busy slot",
        "call scope (one per call)",
        "report nursery",
        "one task per report",
        "drain deadline timer",
        "Shutdown budget scope",
        "shielded goodbye",
    ):
        assert required in labels


def test_phases_chart_draws_every_declared_phase_move() -> None:
    spec = phases_spec()
    assert set(spec.transitions) == {
        (m.trigger.value, m.source.value, m.dest.value) for m in PHASE_MOVES
    }
    assert spec.states == tuple(phase.value for phase in Phase)
    mermaid = render_machine(spec).mermaid
    assert "[*] --> Boot" in mermaid
    assert "Exited --> [*]" in mermaid


def test_no_chart_shows_a_spec_rule_id() -> None:
    """Charts are user-visible text: protocol rule ids stay in code comments and docs/rules.md."""
    for name, text in render_all().items():
        assert not re.search(r"\b[APMRSEH]\d{1,2}\b", text), name


# --- the command ----------------------------------------------------------------------------------


def test_command_writes_sources_and_says_when_svg_is_not_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_dot = str(tmp_path / "no-such-dot-program")
    assert main(["--output", str(tmp_path), "--dot", missing_dot]) == 0
    assert stale_files(tmp_path, render_all()) == []
    assert not list(tmp_path.glob("*.svg"))
    assert "SVG not rendered" in capsys.readouterr().err


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    assert main(["--output", str(tmp_path), "--no-svg"]) == 0
    assert main(["--output", str(tmp_path), "--check"]) == 0
    (tmp_path / "worker.mmd").write_text("stale\n", encoding="utf-8")
    assert main(["--output", str(tmp_path), "--check"]) == 1


def test_bad_arguments_exit_2() -> None:
    assert main(["--no-such-option"]) == 2


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_command_renders_svg_with_graphviz(tmp_path: Path) -> None:
    assert main(["--output", str(tmp_path)]) == 0
    for name in CHART_NAMES:
        svg = ElementTree.parse(tmp_path / f"{name}.svg").getroot()
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"


def test_python_m_worker_diagram_dispatches_here() -> None:
    from worker import cli

    assert cli.main(["diagram", "--output", str(STATECHARTS), "--check"]) == 0
