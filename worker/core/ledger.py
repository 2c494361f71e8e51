"""The acknowledgement ledger: pending records, at most one per poll, the Shutdown batch.

Rules (protocol.md section 6.6): a record is appended once, when its assignment is consumed;
each ``NextTask`` carries at most the head; the head leaves only when a ``NextTask`` that carried
it completed (OK, including a malformed reply); ``Shutdown`` carries whatever is still pending, in
FIFO order. The ledger enforces these rules and raises ``LedgerError`` on any misuse (a bug).
"""

from __future__ import annotations

from collections import deque

from worker.model import TaskAssignmentRecord

__all__ = ["AckLedger", "LedgerError"]


class LedgerError(RuntimeError):
    """A use of the ledger that would lose, repeat or invent an acknowledgement (a bug)."""


class AckLedger:
    """FIFO of acknowledgement records of consumed assignments not yet known to be delivered."""

    def __init__(self) -> None:
        self._pending: deque[TaskAssignmentRecord] = deque()
        self._ever_recorded: set[TaskAssignmentRecord] = set()
        self._consumption_order: list[TaskAssignmentRecord] = []
        self._delivered: list[TaskAssignmentRecord] = []
        self._closed = False

    @property
    def pending(self) -> tuple[TaskAssignmentRecord, ...]:
        """Records still waiting for a completed carrier, oldest first."""
        return tuple(self._pending)

    @property
    def consumption_order(self) -> tuple[TaskAssignmentRecord, ...]:
        """Every record ever appended, in the order the assignments were consumed."""
        return tuple(self._consumption_order)

    @property
    def delivered(self) -> tuple[TaskAssignmentRecord, ...]:
        """Records removed by a completed ``NextTask``, in removal order."""
        return tuple(self._delivered)

    @property
    def closed(self) -> bool:
        """Whether the Shutdown batch was taken (no more records may be appended)."""
        return self._closed

    def record(self, record: TaskAssignmentRecord) -> None:
        """Append the record of a just-consumed assignment (exactly once per assignment)."""
        if self._closed:
            raise LedgerError(f"record {record} appended after the Shutdown batch was taken")
        if record in self._ever_recorded:
            raise LedgerError(f"record {record} appended twice")
        self._ever_recorded.add(record)
        self._consumption_order.append(record)
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
        self._delivered.append(self._pending.popleft())

    def shutdown_batch(self) -> tuple[TaskAssignmentRecord, ...]:
        """Every pending record, FIFO, for the single ``Shutdown`` request; closes the ledger."""
        self._closed = True
        return tuple(self._pending)
