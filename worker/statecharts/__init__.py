"""Statecharts generated from the code: ``python -m worker diagram`` (``just statecharts``).

Four charts land in ``statecharts/``: one slot's main loop (from the one transition table in
:mod:`worker.core.machine`), the worker's phases of boot, drain and Shutdown
(:mod:`worker.core.phases`), the life of one assignment (:mod:`worker.core.lifecycle`; the core
refuses any move of an assignment that table does not declare) and the task tree of nurseries and
cancel scopes (:mod:`worker.statecharts.nurseries`). Each is
written as Mermaid (``.mmd``) and DOT (``.dot``) source, and as SVG when Graphviz's ``dot``
program is installed. A test regenerates the sources and fails when the committed ones differ.
"""

from worker.statecharts.command import main

__all__ = ["main"]
