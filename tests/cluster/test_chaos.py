"""A bounded chaos run: workers SIGKILLed and restarted at random, the cluster restarted once.

What must hold whatever the interleaving: the job succeeds, every task succeeds exactly once per
storage session, nothing is left running that any worker started, and nothing is stuck. The
randomness is seeded; the seed is printed (``CHAOS_SEED=<n>`` replays a run's schedule of kills).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.harness import E2E, TASKS_DIR, ProcessCensus, wait_for
from worker.cluster.jobs import Job, JobBuilder
from worker.cluster.processes import WorkerProcess
from worker.cluster.storage import JobState

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TASKS = 300
WORKERS = 3
#: The whole run, kills and restarts included, must end within this budget.
BUDGET_SEC = 60.0


def _chaos_job() -> Job:
    """Independent short tasks; every tenth leaves a lingering grandchild behind."""
    builder = JobBuilder("chaos", package_dir=TASKS_DIR)
    for index in range(TASKS):
        function = "sleepy_leaving_a_straggler" if index % 10 == 0 else "sleepy"
        builder.task(f"t{index}", "cluster_tasks", function, [0.03, index])
    return builder.build()


def _progress(e2e: E2E, job_id: int) -> str:
    rows = e2e.cluster.storage.task_rows(job_id)
    states: dict[str, int] = {}
    for row in rows:
        states[str(row.state)] = states.get(str(row.state), 0) + 1
    live = e2e.cluster.storage.live_instances()
    workers = {w.name: w.poll() for w in e2e.workers}
    return f"tasks by state {states}; live instances {live}; workers {workers}"


def test_chaos_kills_and_a_cluster_restart_lose_and_repeat_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(2**32)))
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed})")
    rng = random.Random(seed)
    deadline = time.monotonic() + BUDGET_SEC
    e2e = E2E(tmp_path, stale_cutoff_sec=1.0)
    killed: list[WorkerProcess] = []
    census = ProcessCensus()
    try:
        with census:
            for _ in range(WORKERS):
                process, _ = e2e.start_worker()
                census.watch(process.pid)
            job_id = e2e.submit(_chaos_job())
            # Each event fires when the current session has that many tasks done: two kills, the
            # cluster restart (the job then starts over), two more kills; thresholds are drawn.
            plan = [
                *(("kill", t) for t in sorted(rng.sample(range(10, TASKS // 2), 2))),
                ("restart", rng.randint(TASKS // 2, TASKS * 3 // 4)),
                *(("kill", t) for t in sorted(rng.sample(range(10, TASKS * 3 // 4), 2))),
            ]
            first_session_successes: dict[str, int] = {}
            while not e2e.cluster.storage.job_state(job_id).terminal:
                assert time.monotonic() < deadline, f"over budget: {_progress(e2e, job_id)}"
                time.sleep(rng.uniform(0.0, 0.05))
                done = e2e.cluster.storage.task_state_counts(job_id).get("succeeded", 0)
                if not plan or done < plan[0][1]:
                    continue
                action, _ = plan.pop(0)
                if action == "restart":
                    e2e.cluster.restart_storage()
                    # The success counters are durable; right after the restart no report of the
                    # first session can land any more, so this is that session's count.
                    first_session_successes = e2e.successes(job_id)
                    e2e.cluster.restart_scheduler()
                    continue
                live = [w for w in e2e.workers if w.poll() is None and w not in killed]
                victim = rng.choice(live)
                census.sample()  # the victim's executors, seen just before it dies
                os.kill(victim.pid, signal.SIGKILL)  # the worker alone: its executors must follow
                victim.wait(5)
                killed.append(victim)
                # Not waited for: the plan goes on while the replacement boots.
                replacement = WorkerProcess(
                    f"worker-{len(e2e.workers) + 1}", e2e.config(), tmp_path
                )
                e2e.workers.append(replacement)
                census.watch(replacement.pid)
            state = e2e.cluster.storage.job_state(job_id)
            assert state is JobState.SUCCEEDED, f"{state.name}\n{e2e.logs()}"
            assert not plan, f"the job ended before the whole plan ran: {plan} left"
            assert set(first_session_successes.values()) <= {0, 1}, first_session_successes
            successes = e2e.successes(job_id)
            assert len(successes) == TASKS
            # The job restarted from scratch in the new session: each task once more, exactly.
            second_session = {
                task: count - first_session_successes.get(task, 0)
                for task, count in successes.items()
            }
            assert set(second_session.values()) == {1}, second_session
            # Nothing stuck: no live instance is left, every survivor drains and exits 0.
            assert not e2e.cluster.storage.live_instances()
            survivors = [w for w in e2e.workers if w not in killed]
            for survivor in survivors:
                survivor.signal(signal.SIGTERM)
            codes = {w.name: w.wait(30) for w in survivors}
            assert set(codes.values()) == {0}, f"{codes}\n{e2e.logs()}"
            census.sample()
        # What SIGKILLed workers started exits on its own within 1 s (executor.md); the slack is
        # for a loaded machine. Stragglers linger 30 s unless something ends them.
        wait_for(lambda: not census.alive(), 3.0, "every process the workers started to exit")
        assert len(census.seen) >= WORKERS, "the census saw no executors: it measured nothing"
    finally:
        e2e.close()
        for pid in census.alive():  # a failed run must not leave its stragglers behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
