"""The worker's task tree, declared as data: which nursery owns which loop, where cancel scopes sit.

This is the structured-concurrency shape of :class:`worker.runtime.runtime.WorkerRuntime.run`
(protocol.md sections 6.1, 6.8 and 6.9): every task lives in a nursery that outlives it, and every
wait sits under a cancel scope with a deadline or an owner that cancels it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final

import attrs

__all__ = ["NURSERY_TREE", "ScopeKind", "ScopeNode", "walk"]


class ScopeKind(enum.Enum):
    """What a node of the tree is."""

    CONTEXT = "context manager"
    NURSERY = "nursery"
    TASK = "task"
    CANCEL_SCOPE = "cancel scope"


@attrs.frozen(slots=True)
class ScopeNode:
    """One node: ``key`` is a stable identifier, ``note`` says what bounds or cancels it."""

    key: str
    kind: ScopeKind
    label: str
    note: str = ""
    children: tuple[ScopeNode, ...] = ()


def walk(node: ScopeNode) -> Iterator[tuple[ScopeNode | None, ScopeNode]]:
    """Yield ``(parent, node)`` pairs depth-first, parents before children, in declared order."""
    stack: list[tuple[ScopeNode | None, ScopeNode]] = [(None, node)]
    while stack:
        parent, current = stack.pop()
        yield parent, current
        stack.extend((current, child) for child in reversed(current.children))


_K = ScopeKind

#: The tree drawn in ``statecharts/nurseries.*``; it follows ``WorkerRuntime.run``. Every task
#: here performs actions of the core and answers with events; the core decides which scope to
#: cancel and when.
NURSERY_TREE: Final = ScopeNode(
    "pool",
    _K.CONTEXT,
    "executor pool",
    "entered first, before any RPC; one executor per slot; closed last, killing every"
    " executor's process group",
    (
        ScopeNode(
            "root",
            _K.NURSERY,
            "root nursery",
            "every task below; cancelled once the core says Exit (the drain timer is left)",
            (
                ScopeNode(
                    "register",
                    _K.CANCEL_SCOPE,
                    "worker registration scope",
                    "RegisterExecutionManager; a stop during boot cancels it: exit 0, no Shutdown",
                ),
                ScopeNode(
                    "loops",
                    _K.CANCEL_SCOPE,
                    "heartbeat loops scope and nursery",
                    "cancelled and joined once the core drained; Shutdown waits for both loops",
                    (
                        ScopeNode(
                            "liveness",
                            _K.TASK,
                            "storage liveness loop",
                            "heartbeat + refresh; ends at once on eviction",
                        ),
                        ScopeNode(
                            "heartbeat",
                            _K.TASK,
                            "scheduler heartbeat loop",
                            "runs through the drain, so the scheduler keeps the worker alive",
                        ),
                    ),
                ),
                ScopeNode(
                    "slot",
                    _K.TASK,
                    "one task per busy slot",
                    "performs the slot's calls one after another while each answer asks for"
                    " the next (poll, register, execute, backoff sleep)",
                    (
                        ScopeNode(
                            "call",
                            _K.CANCEL_SCOPE,
                            "call scope (one per call)",
                            "a stop cancels a poll, registration or sleep; eviction or a forced"
                            " stop cancels an execution, killing its process group",
                        ),
                    ),
                ),
                ScopeNode(
                    "reports",
                    _K.NURSERY,
                    "report nursery",
                    "a forced stop cancels it: each abandoned report is logged with its ids",
                    (
                        ScopeNode(
                            "report",
                            _K.TASK,
                            "one task per report",
                            "retried with backoff while the session holds",
                        ),
                    ),
                ),
                ScopeNode(
                    "deadline",
                    _K.TASK,
                    "drain deadline timer",
                    "armed when draining begins; when it fires the core forces the stop",
                ),
                ScopeNode(
                    "shutdown",
                    _K.CANCEL_SCOPE,
                    "Shutdown budget scope",
                    "one Shutdown with every pending record once both loops ended; transient"
                    " errors retried within shutdown.rpc_budget_sec",
                ),
            ),
        ),
        ScopeNode(
            "outer",
            _K.CANCEL_SCOPE,
            "shielded goodbye",
            "only after an outer cancellation: a Shutdown bounded to one second",
        ),
    ),
)
