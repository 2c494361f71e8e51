"""The acknowledgement ledger: pending records, at most one per poll, the Shutdown batch.

Rules (protocol.md sections 6.6 and 6.12): a record is appended once, when its assignment is
consumed; each ``NextTask`` carries at most one record, the oldest pending record that no other
``NextTask`` now in flight carries; a record leaves only when a ``NextTask`` that carried it
completed (OK, including a malformed reply); a failed or cancelled carrier frees its record for
the next poll of any slot; ``Shutdown`` carries whatever is still pending, in FIFO order. The
ledger enforces these rules and raises ``LedgerError`` on any misuse (a bug).
"""

from __future__ import annotations

from worker.model import TaskAssignmentRecord

__all__ = ["DEFAULT_HISTORY", "AckLedger", "LedgerError"]

#: How many of the most recently consumed records the ledger remembers for its double-append
#: check and ``consumption_order``. A worker lives for millions of assignments, so remembering
#: every one would grow without bound; a repeated append (the bug this catches) happens right
#: after the first one, well inside this window.
DEFAULT_HISTORY = 65_536


_ABSENT = object()


class LedgerError(RuntimeError):
    """A use of the ledger that would lose, repeat or invent an acknowledgement (a bug)."""


class AckLedger:
    """FIFO of acknowledgement records of consumed assignments not yet known to be delivered."""

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        # Pending records in consumption order (a dict: FIFO order, O(1) removal anywhere, since
        # with several slots a younger record's carrier may complete before an older one's).
        self._pending: dict[TaskAssignmentRecord, None] = {}
        self._in_flight: set[TaskAssignmentRecord] = set()
        # The last ``history`` records appended, in consumption order (a dict keeps insertion
        # order and answers "appended before?" in O(1)).
        self._recorded: dict[TaskAssignmentRecord, None] = {}
        self._history = history
        self._acknowledged = 0
        self._closed = False

    @property
    def pending(self) -> tuple[TaskAssignmentRecord, ...]:
        """Records still waiting for a completed carrier, oldest first."""
        return tuple(self._pending)

    @property
    def pending_count(self) -> int:
        """How many records are still waiting (without copying them, as ``pending`` does)."""
        return len(self._pending)

    @property
    def acknowledged(self) -> int:
        """How many records left the ledger on a completed carrier (Shutdown not counted)."""
        return self._acknowledged

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
        self._pending[record] = None

    def to_carry(self) -> TaskAssignmentRecord | None:
        """The record the next ``NextTask`` would carry: the oldest free one, or ``None``."""
        if self._closed:
            raise LedgerError("no NextTask may be sent after the Shutdown batch was taken")
        if not self._in_flight:  # the common case: one slot, nothing in flight
            return next(iter(self._pending), None)
        return next((r for r in self._pending if r not in self._in_flight), None)

    def take_for_carrier(self) -> TaskAssignmentRecord | None:
        """:meth:`to_carry`, marked as ridden by a ``NextTask`` now in flight."""
        record = self.to_carry()
        if record is not None:
            self._in_flight.add(record)
        return record

    def carrier_completed(self, carried: TaskAssignmentRecord | None) -> None:
        """A ``NextTask`` that carried ``carried`` completed (OK or malformed): it leaves."""
        if carried is None:
            return
        if self._pending.pop(carried, _ABSENT) is _ABSENT:
            raise LedgerError(f"completed carrier of {carried} but it is not pending")
        self._in_flight.discard(carried)
        self._acknowledged += 1

    def carrier_failed(self, carried: TaskAssignmentRecord | None) -> None:
        """A ``NextTask`` that carried ``carried`` failed or was cancelled: free it again."""
        if carried is not None:
            self._in_flight.discard(carried)

    def shutdown_batch(self) -> tuple[TaskAssignmentRecord, ...]:
        """Every pending record, FIFO, for the single ``Shutdown`` request; closes the ledger."""
        self._closed = True
        return tuple(self._pending)
