"""The one place where ``python -m worker local`` and ``python -m worker cluster`` harden
their own process before they open a database or start a worker.

Hardening is making the process non-dumpable (executor.md §8.1): then a task running as the same
user cannot read this process's environment or memory through ``/proc``. The function that does
it lives in ``worker.security`` (shared with the worker); this module only calls it.
"""

from __future__ import annotations

import importlib

__all__ = ["harden_this_process"]


def harden_this_process() -> None:
    """Make this process non-dumpable with ``worker.security.make_non_dumpable``.

    Until that module is part of the package this does nothing; once it is, the lookup below can
    become a plain import.
    """
    try:
        security = importlib.import_module("worker.security")
    except ModuleNotFoundError as error:
        if error.name != "worker.security":
            raise  # the module exists but is broken: say so
        return
    make_non_dumpable = getattr(security, "make_non_dumpable", None)
    if make_non_dumpable is not None:
        make_non_dumpable()
