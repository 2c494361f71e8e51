"""The sans-I/O core: plain synchronous code, no trio, no grpc, no import of the runtime.

``worker_state`` (``WorkerCore``: events in, actions out; it owns every slot's machine, the
ledger, the session tracker, the stop causes and the exit code), ``events`` and ``actions`` (what
goes in and out), ``machine`` (a slot's transition table), ``phases`` (the worker's boot, drain
and Shutdown table), ``lifecycle`` (one assignment's table), ``decisions`` (every protocol
verdict), ``ledger`` (the acknowledgement FIFO), ``session`` (the monotonic tracker),
``backoff``, ``encoding`` (exact request sizes), ``story`` (per-assignment stories), ``settings``,
``observer`` (the observation hook) and ``ports`` (what the runtime needs).
"""
