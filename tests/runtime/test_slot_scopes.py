"""The shell's slot scopes: a cancellation reaches exactly the call the core cancelled.

A slot's consecutive calls share one cancel scope until the core cancels it. These scenarios
script the core's answers (a ``WorkerCore`` whose ``handle`` replays a table) to put a
``CancelCall`` before and after the slot's next call in one list of actions: the shell must cancel
the call in flight when the core said so, and only then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import trio
import trio.testing

from tests.runtime.harness import A, Harness, ctx
from worker.core.actions import Action, CancelCall, Exit, RegisterTask, SendNextTask
from worker.core.events import (
    Booted,
    CallCancelled,
    Event,
    PollAnswered,
    TaskRegistered,
)
from worker.core.worker_state import WorkerCore
from worker.exit_codes import ExitCode
from worker.model import ExecutionManagerId
from worker.runtime import WorkerRuntime
from worker.testing import Assign, Block

EM = ExecutionManagerId(5)


class ScriptedCore(WorkerCore):
    """Answers each event type with a fixed list of actions, and keeps every event it saw."""

    def __init__(self, harness: Harness, answers: Mapping[type[Event], Sequence[Action]]) -> None:
        super().__init__(harness.settings)
        self.answers = answers
        self.events: list[Event] = []

    def handle(self, event: Event, now: float) -> list[Action]:
        self.events.append(event)
        return list(self.answers[type(event)])


async def _run(runtime: WorkerRuntime) -> ExitCode:
    with trio.fail_after(5):
        return await runtime.run()


REGISTER = RegisterTask(0, EM, A(1))
DONE = [Exit(ExitCode.OK)]


async def test_a_cancel_before_the_next_call_leaves_that_call_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    harness.scheduler.push(Assign(A(1)))
    harness.storage.push_register(ctx("noop"))  # answered at the call's first checkpoint
    # The cancel names the poll that just answered; the registration after it must still run.
    core = ScriptedCore(
        harness,
        {
            Booted: [SendNextTask(0, EM, None, 1000)],
            PollAnswered: [CancelCall(0), REGISTER],
            TaskRegistered: DONE,
            CallCancelled: DONE,
        },
    )
    assert await _run(harness.runtime_with(core=core)) is ExitCode.OK
    assert [type(event) for event in core.events] == [Booted, PollAnswered, TaskRegistered]
    assert harness.storage.register_cancelled == 0


async def test_a_cancel_after_the_next_call_cancels_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    harness.scheduler.push(Assign(A(1)))
    harness.storage.push_register(Block)
    core = ScriptedCore(
        harness,
        {
            Booted: [SendNextTask(0, EM, None, 1000)],
            PollAnswered: [REGISTER, CancelCall(0)],
            TaskRegistered: DONE,
            CallCancelled: DONE,
        },
    )
    assert await _run(harness.runtime_with(core=core)) is ExitCode.OK
    assert [type(event) for event in core.events] == [Booted, PollAnswered, CallCancelled]
    assert harness.storage.register_cancelled == 1
