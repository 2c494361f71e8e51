"""The reference cluster: a Python scheduler and an SQLite-backed storage, jobs and commands.

``engine`` modules (:mod:`.storage`, :mod:`.scheduler`) hold the semantics of protocol.md §7 and §8
as plain thread-safe classes; :mod:`.servers` exposes them over gRPC; :mod:`.local`,
:mod:`.serve` and :mod:`.submit` are the ``python -m worker local|cluster|submit`` commands.
"""
