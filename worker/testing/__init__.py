"""Scripted in-process fakes of the runtime's four ports, for every test suite.

Semantics are scenarios.md section 1.

.. no-test: a fragment of a test body: a1, context and settings come from the test's setup
A typical test::

    journal = Journal()
    scheduler, storage = FakeScheduler(journal), FakeStorage(journal)
    liveness, pool = FakeLiveness(journal), FakePool(journal)
    scheduler.push(Assign(a1))
    storage.push_register(context)
    runtime = WorkerRuntime(settings, scheduler=scheduler, storage=storage,
                            liveness=liveness, open_executor=pool)

Every call lands in the shared :class:`Journal` (start and end entries) so properties can be
checked after the run; each fake keeps its own counters and lists for direct assertions.
"""

from __future__ import annotations

from worker.testing.journal import Journal, JournalEntry, Phase
from worker.testing.liveness import FakeLiveness
from worker.testing.pool import DEFAULT_OUTCOME, FakePool, Raise
from worker.testing.scheduler import FakeScheduler, NextTaskCall
from worker.testing.script import (
    Always,
    Assign,
    Block,
    Error,
    Hang,
    Hold,
    Malformed,
    NoTask,
    Script,
)
from worker.testing.storage import FakeStorage, RegisterCall, ReportAttempt

__all__ = [
    "DEFAULT_OUTCOME",
    "Always",
    "Assign",
    "Block",
    "Error",
    "FakeLiveness",
    "FakePool",
    "FakeScheduler",
    "FakeStorage",
    "Hang",
    "Hold",
    "Journal",
    "JournalEntry",
    "Malformed",
    "NextTaskCall",
    "NoTask",
    "Phase",
    "Raise",
    "RegisterCall",
    "ReportAttempt",
    "Script",
]
