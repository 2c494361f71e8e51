"""worker: a trio-based Python execution manager for clusters that speak Spider's gRPC protocol.

This package's ``__init__`` stays empty on purpose: the executor subprocess imports
``worker.executor.child``, and importing the package must not pull in trio, attrs, cattrs or grpc
(executor.md section 6.1).
"""
