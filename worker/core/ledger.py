"""The acknowledgement ledger: pending records, at most one per poll, the Shutdown batch.

Rules (protocol.md section 6.6): a record is appended once, when its assignment is consumed;
each ``NextTask`` carries at most the head; the head leaves only when a ``NextTask`` that carried
it completed (OK, including a malformed reply); ``Shutdown`` carries whatever is still pending, in
FIFO order. The ledger enforces these rules and raises ``LedgerError`` on any misuse (a bug).
"""

from __future__ import annotations

from collections import deque

from worker.model import TaskAssignmentRecord

__all__ = ["DEFAULT_HISTORY", "AckLedger", "LedgerError"]

#: How many of the most recently consumed records the ledger remembers for its double-append
#: check and ``consumption_order``. A worker lives for millions of assignments, so remembering
#: every one would grow without bound; a repeated append (the bug this catches) happens right
#: after the first one, well inside this window.
DEFAULT_HISTORY = 65_536


class LedgerError(RuntimeError):
    """A use of the ledger that would lose, repeat or invent an acknowledgement (a bug)."""


class AckLedger:
    """FIFO of acknowledgement records of consumed assignments not yet known to be delivered."""

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self._pending: deque[TaskAssignmentRecord] = deque()
        # The last ``history`` records appended, in consumption order (a dict keeps insertion
        # order and answers "appended before?" in O(1)).
        self._recorded: dict[TaskAssignmentRecord, None] = {}
        self._history = history
        self._closed = False

    @property
    def pending(self) -> tuple[TaskAssignmentRecord, ...]:
        """Records still waiting for a completed carrier, oldest first."""
        return tuple(self._pending)

    @property
    def consumption_order(self) -> tuple[TaskAssignmentRecord, ...]:
        """The most recent records appended (up to ``history``), in consumption order."""
        return tuple(self._recorded)

    def record(self, record: TaskAssignmentRecord) -> None:
        """Append the record of a just-consumed assignment (exactly once per assignment)."""
        if self._closed:
            raise LedgerError(f"record {record} appended after the Shutdown batch was taken")
        if record in self._recorded:
            raise LedgerError(f"record {record} appended twice")
        self._recorded[record] = None
        if len(self._recorded) > self._history:
            del self._recorded[next(iter(self._recorded))]
        self._pending.append(record)

    def to_carry(self) -> TaskAssignmentRecord | None:
        """The record the next ``NextTask`` carries: the head, or ``None`` (field unset)."""
        if self._closed:
            raise LedgerError("no NextTask may be sent after the Shutdown batch was taken")
        return self._pending[0] if self._pending else None

    def carrier_completed(self, carried: TaskAssignmentRecord | None) -> None:
        """A ``NextTask`` that carried ``carried`` completed (OK or malformed): pop the head."""
        if carried is None:
            return
        if not self._pending or self._pending[0] != carried:
            raise LedgerError(f"completed carrier of {carried} but the head is not that record")
        self._pending.popleft()

    def shutdown_batch(self) -> tuple[TaskAssignmentRecord, ...]:
        """Every pending record, FIFO, for the single ``Shutdown`` request; closes the ledger."""
        self._closed = True
        return tuple(self._pending)
