"""The executor pool: Python tasks in pre-spawned subprocesses (executor.md).

Modules, one concern each:

* ``pool``      supervision: ``open_pool``/``ExecutorPool``, dispatch, timeouts, crashes, respawns;
* ``processes`` executor processes: command line, environment, spawn, process groups, reaping;
* ``messages``  the typed channel messages, shared by the pool and the executor;
* ``channel``   the channel's framing; ``wire`` the task I/O byte formats;
* ``logpump``   the log readers, queue and writer; ``logs`` their sans-I/O parts and sinks;
* ``child``     the built-in executor's entry point (runs in the subprocess);
* ``settings``  ``PoolSettings``.

This ``__init__`` imports nothing on purpose: the executor subprocess imports
``worker.executor.child``, which must not pull in trio, attrs or the worker's runtime. Import the
pool from ``worker.executor.pool`` and its settings from ``worker.executor.settings``.
"""
