"""The reference servers' call pool: threads on demand, reuse, the limit, completions, cleanup."""

from __future__ import annotations

import gc
import threading

from tests.cluster.harness import wait_for
from worker.cluster.callpool import CallPool


def test_sequential_calls_reuse_one_thread_and_report_completion() -> None:
    pool = CallPool(max_workers=8, thread_name_prefix="calls")
    ran: list[str] = []
    completed: list[object] = []
    done = threading.Semaphore(0)

    def on_done(completion: object) -> None:
        completed.append(completion)
        done.release()

    for _ in range(20):
        completion = pool.submit(lambda: ran.append(threading.current_thread().name))
        completion.add_done_callback(on_done)
        assert done.acquire(timeout=10)
        # a callback added after the call ran is called at once
        late: list[object] = []
        completion.add_done_callback(late.append)
        assert late == [completion]
    assert len(ran) == 20
    assert len(completed) == 20
    assert pool.threads_started == 1
    assert set(ran) == {"calls_0"}


def test_threads_start_as_calls_need_them_up_to_the_limit_then_calls_queue() -> None:
    pool = CallPool(max_workers=3, thread_name_prefix="limited")
    release = threading.Event()
    started = threading.Semaphore(0)
    finished: list[int] = []

    def blocking(index: int) -> None:
        started.release()
        release.wait(10)
        finished.append(index)

    for index in range(5):
        pool.submit(blocking, index)
    for _ in range(3):
        assert started.acquire(timeout=10)
    # Three threads exist and each is held inside its call: the other two calls wait.
    assert pool.threads_started == 3
    assert sum(thread.name.startswith("limited_") for thread in threading.enumerate()) == 3
    assert finished == []
    release.set()
    wait_for(lambda: len(finished) == 5, 10, "every call to finish")
    assert pool.threads_started == 3


def test_a_failing_call_does_not_end_its_thread() -> None:
    pool = CallPool(max_workers=1, thread_name_prefix="calls")
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("a bug")

    pool.submit(fail)
    pool.submit(done.set)
    assert done.wait(10)


def test_the_threads_of_a_garbage_pool_end() -> None:
    pool = CallPool(max_workers=4, thread_name_prefix="garbage-pool")
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(10)

    def pool_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("garbage-pool")]

    assert len(pool_threads()) == 1
    del pool
    gc.collect()
    wait_for(lambda: not pool_threads(), 10, "the garbage pool's threads to end")
