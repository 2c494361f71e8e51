"""Render the statecharts to Mermaid and DOT sources, deterministically, from the tables as data.

The three state machines go through ``transitions``' own diagram support
(:class:`transitions.extensions.diagrams.GraphMachine` with graph engines ``"mermaid"`` and
``"graphviz"``), fed from the same tables the runtime uses. The nursery tree has no state machine
behind it, so it is written directly: Mermaid by hand, DOT through the ``graphviz`` package.
Nothing here calls Graphviz's ``dot`` program; :mod:`worker.statecharts.command` does, for SVG.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import attrs

from worker.core.lifecycle import (
    ASSIGNMENT_FINAL_STATES,
    ASSIGNMENT_INITIAL_STATE,
    ASSIGNMENT_TRANSITIONS,
    AssignmentState,
)
from worker.core.machine import INITIAL_STATE, TERMINAL_STATES, TRANSITIONS, State
from worker.core.phases import FINAL_PHASE, INITIAL_PHASE, PHASE_MOVES, Phase
from worker.statecharts.nurseries import NURSERY_TREE, ScopeKind, ScopeNode, walk

__all__ = [
    "CHART_NAMES",
    "ChartSources",
    "MachineSpec",
    "assignment_spec",
    "nursery_sources",
    "phases_spec",
    "render_all",
    "render_machine",
    "worker_spec",
]

#: Chart name -> file stem under ``statecharts/``, in generation order.
CHART_NAMES: Final = ("worker", "phases", "assignment", "nurseries")

# Graphviz names for the pseudo-states that mark where a machine starts and ends.
_START_NODE: Final = "__start__"
_END_NODE: Final = "__end__"


@attrs.frozen(slots=True)
class MachineSpec:
    """A state machine to draw: ``transitions`` are ``(trigger, source, dest)`` name triples."""

    title: str
    states: tuple[str, ...]
    transitions: tuple[tuple[str, str, str], ...]
    initial: str
    finals: tuple[str, ...]


@attrs.frozen(slots=True)
class ChartSources:
    """The generated text of one chart."""

    mermaid: str
    dot: str


def worker_spec() -> MachineSpec:
    """One slot's main loop (each slot runs a copy): :data:`worker.core.machine.TRANSITIONS`."""
    return MachineSpec(
        title="slot main loop (one copy per slot)",
        states=tuple(state.value for state in State),
        transitions=tuple((t.trigger.value, t.source.value, t.dest.value) for t in TRANSITIONS),
        initial=INITIAL_STATE.value,
        finals=tuple(state.value for state in State if state in TERMINAL_STATES),
    )


def phases_spec() -> MachineSpec:
    """The worker as a whole: boot, drain, Shutdown, from :data:`worker.core.phases.PHASE_MOVES`."""
    return MachineSpec(
        title="worker phases: boot, drain, Shutdown",
        states=tuple(phase.value for phase in Phase),
        transitions=tuple((m.trigger.value, m.source.value, m.dest.value) for m in PHASE_MOVES),
        initial=INITIAL_PHASE.value,
        finals=(FINAL_PHASE.value,),
    )


def assignment_spec() -> MachineSpec:
    """The life of one assignment, from the table the core enforces (:mod:`worker.core.lifecycle`).

    Moves that differ only in the main-loop move they ride on are drawn once.
    """
    moves = dict.fromkeys(
        (move.event.value, move.source.value, move.dest.value) for move in ASSIGNMENT_TRANSITIONS
    )
    return MachineSpec(
        title="life of one assignment",
        states=tuple(state.value for state in AssignmentState),
        transitions=tuple(moves),
        initial=ASSIGNMENT_INITIAL_STATE.value,
        finals=tuple(state.value for state in AssignmentState if state in ASSIGNMENT_FINAL_STATES),
    )


class _Model:
    """The bare object ``GraphMachine`` binds its state and ``get_graph`` to."""


def _graph(spec: MachineSpec, engine: Literal["mermaid", "graphviz"]) -> Any:
    # Imported here: the diagram support (and the graphviz package behind it) is a development
    # dependency that nothing at run time needs.
    from transitions.extensions.diagrams import GraphMachine

    model = _Model()
    machine = GraphMachine(
        model=model,
        states=list(spec.states),
        transitions=[
            {"trigger": trigger, "source": source, "dest": dest}
            for trigger, source, dest in spec.transitions
        ],
        initial=spec.initial,
        auto_transitions=False,
        title=spec.title,
        graph_engine=engine,
    )
    expected = "diagrams_mermaid" if engine == "mermaid" else "diagrams_graphviz"
    if not machine.graph_cls.__module__.endswith(expected):
        # transitions silently falls back to Mermaid when the graphviz package is missing.
        raise RuntimeError(
            f"transitions could not load its {engine!r} diagram engine; "
            "install the development dependencies: pip install -e '.[dev]'"
        )
    # A chart of the table, not of one run: no state is highlighted as current.
    machine.model_graphs[id(model)].reset_styling()
    return machine.model_graphs[id(model)].get_graph(title=spec.title)


def render_machine(spec: MachineSpec) -> ChartSources:
    """Mermaid and DOT sources for ``spec``, with start and end markers added."""
    mermaid_lines = _graph(spec, "mermaid").source.rstrip("\n").split("\n")
    # transitions writes the bare title between the front-matter fences; Mermaid reads the
    # front matter as YAML and takes the diagram title from its ``title`` key.
    if mermaid_lines[:3] == ["---", spec.title, "---"]:
        mermaid_lines[1] = f"title: {spec.title}"
    mermaid_lines.extend(f"  {final} --> [*]" for final in spec.finals)
    mermaid = "\n".join(line.rstrip() for line in mermaid_lines) + "\n"

    digraph = _graph(spec, "graphviz")
    digraph.node(
        _START_NODE, label="", shape="circle", style="filled", fillcolor="black", width="0.2"
    )
    digraph.edge(_START_NODE, spec.initial)
    digraph.node(
        _END_NODE, label="", shape="doublecircle", style="filled", fillcolor="black", width="0.15"
    )
    for final in spec.finals:
        digraph.edge(final, _END_NODE)
    return ChartSources(mermaid=mermaid, dot=_normalise(digraph.source))


_NOTE_WIDTH: Final = 44

_MERMAID_SHAPES: Final = {
    ScopeKind.CONTEXT: ('(["', '"])'),
    ScopeKind.NURSERY: ('["', '"]'),
    ScopeKind.TASK: ('("', '")'),
    ScopeKind.CANCEL_SCOPE: ('{{"', '"}}'),
}

_DOT_SHAPES: Final = {
    ScopeKind.CONTEXT: {"shape": "box3d"},
    ScopeKind.NURSERY: {"shape": "box", "style": "filled", "fillcolor": "lightgrey"},
    ScopeKind.TASK: {"shape": "box", "style": "rounded"},
    ScopeKind.CANCEL_SCOPE: {"shape": "hexagon", "style": "dashed"},
}


def _node_text(node: ScopeNode, newline: str) -> str:
    lines = [f"{node.kind.value}: {node.label}", *textwrap.wrap(node.note, _NOTE_WIDTH)]
    return newline.join(lines)


def nursery_sources(tree: ScopeNode = NURSERY_TREE) -> ChartSources:
    """Mermaid flowchart and DOT sources for the nursery tree."""
    import graphviz

    pairs = list(walk(tree))
    mermaid: list[str] = ["---", "title: worker task tree", "---", "flowchart LR"]
    for _, node in pairs:
        opening, closing = _MERMAID_SHAPES[node.kind]
        text = _node_text(node, "<br/>").replace('"', "#quot;")
        mermaid.append(f"  {node.key}{opening}{text}{closing}")
    mermaid.extend(f"  {parent.key} --> {node.key}" for parent, node in pairs if parent)

    digraph = graphviz.Digraph("worker task tree")
    digraph.attr(label="worker task tree", labelloc="t", rankdir="LR")
    digraph.attr("node", fontsize="11")
    for _, node in pairs:
        digraph.node(node.key, label=_node_text(node, r"\n"), **_DOT_SHAPES[node.kind])
    for parent, node in pairs:
        if parent:
            digraph.edge(parent.key, node.key)
    return ChartSources(mermaid="\n".join(mermaid) + "\n", dot=_normalise(digraph.source))


def _normalise(source: str) -> str:
    """Tabs to two spaces and one final newline, so the committed files diff cleanly."""
    return "\n".join(line.replace("\t", "  ").rstrip() for line in source.splitlines()) + "\n"


def render_all(names: Sequence[str] = CHART_NAMES) -> dict[str, str]:
    """Every generated source file: ``{file name: text}`` (``worker.mmd``, ``worker.dot``, ...)."""
    charts: dict[str, Callable[[], ChartSources]] = {
        "worker": lambda: render_machine(worker_spec()),
        "phases": lambda: render_machine(phases_spec()),
        "assignment": lambda: render_machine(assignment_spec()),
        "nurseries": nursery_sources,
    }
    files: dict[str, str] = {}
    for name in names:
        sources = charts[name]()
        files[f"{name}.mmd"] = sources.mermaid
        files[f"{name}.dot"] = sources.dot
    return files
