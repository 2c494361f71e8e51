"""The reference servers' call threads: a lean executor for grpcio's synchronous server.

grpcio's server hands every call to its thread pool through ``submit`` and only ever uses the
returned future's ``add_done_callback`` (to count the calls in flight). The standard
``ThreadPoolExecutor`` pays for more than that on each call: two module-wide locks, a
``Future`` with its condition variable, a work item, a semaphore. :class:`CallPool` keeps what a
server needs: threads started only as calls need them (up to ``max_workers``), reused while
idle, handed work through one queue, each submit answered by a small completion object.

The threads are daemon threads: a server that is not stopped does not hold up interpreter exit.
Once the pool is garbage, its idle threads end.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from typing import Any

__all__ = ["CallPool"]

log = logging.getLogger("worker.cluster.callpool")

_Work = tuple["_Completion", Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None


class _Completion:
    """What ``submit`` returns: ``add_done_callback`` only (all grpcio uses)."""

    __slots__ = ("_callbacks", "_done", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._callbacks: list[Callable[[Any], object]] = []

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        """Call ``fn(self)`` once the call ran (at once when it has)."""
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        fn(self)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("a call's completion callback failed")


class _Threads:
    """The counts the pool and its threads share (the threads never hold the pool itself)."""

    __slots__ = ("idle", "lock", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.idle = 0


def _serve_calls(work: queue.SimpleQueue[_Work], threads: _Threads) -> None:
    while (item := work.get()) is not None:
        completion, fn, args, kwargs = item
        try:
            fn(*args, **kwargs)
        except Exception:  # grpcio answers the call's own failures; this is a bug of ours
            log.exception("a server call failed outside its handler")
        # Idle before the call is announced done: a call submitted from its completion callback
        # (or just after) finds this thread instead of starting another one.
        with threads.lock:
            threads.idle += 1
        completion.finish()


def _stop_threads(work: queue.SimpleQueue[_Work], threads: _Threads) -> None:
    with threads.lock:
        for _ in range(threads.started):
            work.put(None)


class CallPool(futures.Executor):
    """Up to ``max_workers`` threads named ``<prefix>_<n>``, started as calls need them."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        if max_workers < 1:
            raise ValueError(f"a call pool needs at least one thread, got {max_workers}")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._threads = _Threads()
        # A garbage pool wakes every thread so that it ends (an idle one waits in ``get``).
        weakref.finalize(self, _stop_threads, self._work, self._threads)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on an idle thread, or a new one while below the limit."""
        completion = _Completion()
        self._work.put((completion, fn, args, kwargs))
        threads = self._threads
        with threads.lock:
            if threads.idle > 0:
                threads.idle -= 1
                return completion
            if threads.started >= self._max_workers:
                return completion  # queued: the next thread to finish takes it
            threads.started += 1
            name = f"{self._prefix}_{threads.started - 1}"
        threading.Thread(
            target=_serve_calls, args=(self._work, threads), name=name, daemon=True
        ).start()
        return completion

    @property
    def threads_started(self) -> int:
        """Threads started so far."""
        return self._threads.started
