"""Task attempts as the reference storage saw them: which worker ran which task, from when to when.

Storage notes an attempt when a worker registers a task instance and closes it when the instance
reports (``succeeded`` / ``failed``) or is dropped (``lost``: its worker died or the job ended
first). The run report draws these; they live as long as the job stays cached in storage.
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["LOST", "Attempt", "AttemptLog"]

LOST: Final = "lost"


@attrs.define(slots=True)
class Attempt:
    """One task instance: ``task`` is storage's key (``index:N``, ``commit``, ``cleanup``)."""

    instance_id: int
    job_id: int
    task: str
    worker_id: int
    started: float
    ended: float | None = None
    outcome: str = "running"


@attrs.define(slots=True)
class AttemptLog:
    """Attempts by job; not thread-safe on its own (storage calls it under its lock)."""

    _by_job: dict[int, list[Attempt]] = attrs.field(factory=dict)
    _open: dict[int, Attempt] = attrs.field(factory=dict)

    def started(self, instance_id: int, job_id: int, task: str, worker_id: int, at: float) -> None:
        """An instance was registered."""
        attempt = Attempt(instance_id, job_id, task, worker_id, at)
        self._by_job.setdefault(job_id, []).append(attempt)
        self._open[instance_id] = attempt

    def ended(self, instance_id: int, outcome: str, at: float) -> None:
        """An instance reported ``outcome`` or was dropped (``lost``)."""
        attempt = self._open.pop(instance_id, None)
        if attempt is not None:
            attempt.ended = at
            attempt.outcome = outcome

    def of_job(self, job_id: int) -> list[Attempt]:
        """Copies of the job's attempts, in start order."""
        return [attrs.evolve(attempt) for attempt in self._by_job.get(job_id, [])]

    def forget(self, job_id: int) -> None:
        """Drop a job's attempts (it left the cache)."""
        for attempt in self._by_job.pop(job_id, []):
            self._open.pop(attempt.instance_id, None)

    def clear(self) -> None:
        """Drop everything (a new storage session)."""
        self._by_job.clear()
        self._open.clear()
