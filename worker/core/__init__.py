"""The sans-I/O core: plain synchronous code, no trio, no grpc.

``machine`` (the transition table), ``decisions`` (every protocol verdict), ``ledger`` (the
acknowledgement ledger), ``session`` (the monotonic tracker), ``backoff``, ``encoding`` (exact
request sizes), ``story`` (per-assignment stories) and ``ports`` (what the runtime needs).
"""
