"""The executor pool: Python tasks in pre-spawned subprocesses (executor.md).

This ``__init__`` imports nothing on purpose: the executor subprocess imports
``worker.executor.child``, which must not pull in trio, attrs or the worker's runtime. Import the
pool from ``worker.executor.pool`` and its settings from ``worker.executor.settings``.
"""
