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

#: The tree drawn in ``statecharts/nurseries.*``; it follows ``WorkerRuntime.run``.
NURSERY_TREE: Final = ScopeNode(
    "pool",
    _K.CONTEXT,
    "executor pool",
    "entered first, before any RPC; closed last, killing every executor's process group",
    (
        ScopeNode(
            "boot",
            _K.CANCEL_SCOPE,
            "boot scope",
            "opens the pool, then RegisterExecutionManager; a stop cancels it: exit 0, no Shutdown",
        ),
        ScopeNode(
            "loops",
            _K.NURSERY,
            "root nursery (loops)",
            "cancelled and joined once draining is over; nothing is sent after Shutdown",
            (
                ScopeNode(
                    "liveness",
                    _K.TASK,
                    "storage liveness loop",
                    "heartbeat + refresh; stops at once on eviction",
                ),
                ScopeNode(
                    "heartbeat",
                    _K.TASK,
                    "scheduler heartbeat loop",
                    "runs through Draining (P4)",
                ),
                ScopeNode(
                    "drain",
                    _K.CANCEL_SCOPE,
                    "drain deadline scope",
                    "deadline = stop + shutdown.drain_timeout_sec; a forced stop cancels it",
                    (
                        ScopeNode(
                            "reports",
                            _K.NURSERY,
                            "report nursery",
                            "one task per outcome; leaving it awaits every report (P2)",
                            (
                                ScopeNode(
                                    "report",
                                    _K.TASK,
                                    "report task",
                                    "ReportTask*; retried with backoff while the session holds",
                                ),
                                ScopeNode(
                                    "main",
                                    _K.TASK,
                                    "main loop (the nursery's body)",
                                    "Idle, Awaiting, Registering, Executing; a stop ends polling",
                                    (
                                        ScopeNode(
                                            "interruptible",
                                            _K.CANCEL_SCOPE,
                                            "poll / registration / backoff scope",
                                            "a stop cancels it: the carried record stays pending,"
                                            " a cancelled registration is not acked (P8)",
                                        ),
                                        ScopeNode(
                                            "execution",
                                            _K.CANCEL_SCOPE,
                                            "execution scope",
                                            "pool.execute; eviction or a forced stop cancels it"
                                            " and the executor's process group is killed",
                                        ),
                                    ),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
        ScopeNode(
            "shutdown",
            _K.CANCEL_SCOPE,
            "shutdown budget scope",
            "after the loops are joined: one Shutdown with every pending record, transient"
            " retries within shutdown.rpc_budget_sec",
        ),
    ),
)
