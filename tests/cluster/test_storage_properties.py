"""Property: for any DAG and any mix of failures, reaping and restarts, the storage engine drives
the job to the right terminal state, never hands a task out before its parents succeeded, feeds
every task its parents' reported outputs, and never gets stuck."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from worker.cluster.db import Database
from worker.cluster.jobs import JobBuilder, ref
from worker.cluster.storage import JobState, Lane, StorageEngine, StorageFault
from worker.errors import StatusCode
from worker.executor.wire import decode_frame, encode_frame


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[list[int]], list[int]]:
    """Parents per task (earlier tasks only) and retries per task."""
    count = draw(st.integers(1, 7))
    parents = [
        sorted(draw(st.sets(st.integers(0, index - 1), max_size=3))) if index else []
        for index in range(count)
    ]
    retries = [draw(st.integers(0, 2)) for _ in range(count)]
    return parents, retries


@given(dags(), st.data())
def test_any_dag_with_any_failures_ends_in_the_right_state(
    dag: tuple[list[list[int]], list[int]], data: st.DataObject
) -> None:
    parents, retries = dag
    builder = JobBuilder("prop")
    for index, (task_parents, task_retries) in enumerate(zip(parents, retries, strict=True)):
        inputs: list[object] = [ref(f"t{p}") for p in task_parents] or [index]
        builder.task(f"t{index}", "m", "f", inputs, retries=task_retries)
    job = builder.build()
    # Graph indices are topological (depth first), not declaration order: translate once.
    declared = {job.index_of(f"t{i}"): i for i in range(len(parents))}
    parents = [[job.index_of(f"t{p}") for p in parents[declared[g]]] for g in range(len(parents))]
    retries = [retries[declared[g]] for g in range(len(parents))]
    literal = [declared[g] for g in range(len(parents))]
    engine = StorageEngine(Database(":memory:"))
    em_id, _ = engine.register_execution_manager("127.0.0.1")
    job_id = engine.submit(job)
    outputs: dict[int, int] = {}
    failures = [0] * len(parents)
    exhausted = False
    for _step in range(200):
        state = engine.job_state(job_id)
        if state.terminal:
            break
        entries = engine.poll_ready(tuple(Lane), 100, 0)[1]
        if not entries:
            assert engine.live_instances() == {}, "stuck: no ready work, instances live"
            raise AssertionError(f"stuck: job {state.name} with no ready work")
        for entry in entries:
            if engine.job_state(job_id).terminal:
                break
            assert entry.task_id.index is not None
            index = entry.task_id.index
            refusal: StatusCode | None = None
            try:
                context = engine.register_task_instance(
                    job_id, entry.task_id, em_id, engine.session_id
                )
            except StorageFault as fault:
                refusal = fault.code
            # Only stale duplicates may be refused; never an impossible (INTERNAL) request.
            assert refusal in {None, StatusCode.FAILED_PRECONDITION}
            if refusal is not None:
                continue
            assert all(p in outputs for p in parents[index]), "dispatched before its parents"
            expected = [outputs[p] for p in parents[index]] or [literal[index]]
            received = [msgpack.unpackb(p) for p in decode_frame(context.serialized_task_io)]
            assert received == expected
            action = data.draw(st.sampled_from(["succeed", "fail", "reap", "restart"]))
            if action == "succeed":
                value = data.draw(st.integers(-1000, 1000))
                engine.report_success(
                    job_id,
                    entry.task_id,
                    context.task_instance_id,
                    engine.session_id,
                    encode_frame([msgpack.packb(value)]),
                )
                outputs[index] = value
            elif action == "fail":
                failures[index] += 1
                engine.report_failure(
                    job_id, entry.task_id, context.task_instance_id, engine.session_id, "boom"
                )
                if failures[index] > retries[index]:
                    exhausted = True
            elif action == "reap":
                # Re-enqueued without spending a retry; a fresh worker carries on.
                engine.mark_dead(em_id)
                em_id, _ = engine.register_execution_manager("127.0.0.1")
            else:
                engine.restart()
                outputs.clear()
                failures = [0] * len(parents)
                break
    final = engine.job_state(job_id)
    assert final.terminal, "the job did not finish within 200 steps"
    assert final is (JobState.FAILED if exhausted else JobState.SUCCEEDED)
    if final is JobState.FAILED:
        assert engine.job_error(job_id) == "boom"
    rows = {row.task: row for row in engine.task_rows(job_id)}
    for index, task_retries in enumerate(retries):
        assert failures[index] <= 1 + task_retries
        if final is JobState.SUCCEEDED:
            assert rows[f"index:{index}"].state == "succeeded"
