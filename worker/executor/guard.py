"""Executor start-up guards: nothing outlives the worker, and run_as (executor.md §6.8, §8.1).

Every executor starts through this module, in the executor process, before anything else:

* **Group watcher.** The pool holds the write end of a *lifeline* pipe and never writes to it;
  each executor gets the read end (``lifeline_fd=``). ``start_group_watcher`` forks a tiny
  process that stays in the executor's process group, ignores every signal it can, and blocks
  reading the lifeline. When the worker dies, by any means (SIGKILL and OOM kill included), the
  kernel closes the write end, the read returns end-of-file, and the watcher SIGKILLs its whole
  group: the executor, whatever task it runs, every process the task started in the group, and
  itself. The pool kills the group (watcher included) whenever it retires an executor.

  The watcher does not depend on which thread spawned the executor, survives the change of user,
  and cannot be blocked by task code that holds the GIL or masks signals, which are the three
  ways the parent-death signal (``PR_SET_PDEATHSIG``) fails, so that signal is not used. With
  ``run_as`` the watcher keeps the worker's user, so task code cannot kill it either.

* **run_as.** ``drop_privileges`` switches to the configured user, that user's primary group
  and no supplementary groups (setgroups, setgid, setuid, in that order), and checks that the
  switch cannot be undone. The built-in executor calls it after its own imports and before any
  task code runs; for a ``bin_path`` executor it runs before the program is started.

This module runs in the executor: standard library only.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

__all__ = ["EXIT_CANNOT_START", "RunAsIds", "drop_privileges", "guard", "start_group_watcher"]

#: The argument keys this module consumes (the rest go to the executor).
LIFELINE_KEY = "lifeline_fd"
EXEC_KEY = "exec"
RUN_AS_KEY = "run_as"

#: Exit status when a ``bin_path`` executor cannot be started or the user cannot be changed.
EXIT_CANNOT_START = 127


class RunAsIds:
    """A ``run_as`` target: ``uid`` and primary ``gid`` (argument form ``uid:gid``)."""

    __slots__ = ("gid", "uid")

    def __init__(self, text: str) -> None:
        uid, _, gid = text.partition(":")
        self.uid = int(uid)
        self.gid = int(gid)


def start_group_watcher(lifeline_fd: int) -> int:
    """Fork the group watcher (see the module docstring); returns its PID.

    The caller's copy of ``lifeline_fd`` is closed: task code never holds the lifeline.
    """
    pid = os.fork()
    if pid == 0:  # the watcher: never returns
        _watch(lifeline_fd)
    os.close(lifeline_fd)
    return pid


def _watch(lifeline_fd: int) -> None:
    try:
        for signum in signal.valid_signals():
            if signum not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
                try:  # noqa: SIM105 (contextlib is not imported here: start-up cost)
                    signal.signal(signum, signal.SIG_IGN)
                except (OSError, ValueError):
                    pass
        # Hold nothing but the lifeline: no channel, no log pipe, no stdin.
        os.closerange(0, lifeline_fd)
        os.closerange(lifeline_fd + 1, _max_fd())
        while os.read(lifeline_fd, 4096):
            pass  # nobody writes; only end-of-file (the worker is gone) matters
    finally:
        os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(0)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def drop_privileges(ids: RunAsIds) -> None:
    """Become ``ids.uid`` with group ``ids.gid`` and no supplementary groups, irrevocably.

    Raises ``PermissionError`` if the switch fails or could be undone.
    """
    os.setgroups([])
    os.setgid(ids.gid)
    os.setuid(ids.uid)
    if os.getuid() != ids.uid or os.geteuid() != ids.uid or os.getegid() != ids.gid:
        raise PermissionError(f"could not switch to uid {ids.uid}, gid {ids.gid}")
    if ids.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PermissionError(f"switching to uid {ids.uid} could be undone")


def guard(argv: Sequence[str]) -> list[str]:
    """Start the watcher if ``lifeline_fd=`` is given; for ``exec=PROGRAM``, drop and exec it.

    Returns the arguments meant for the built-in executor (the lifeline key removed); with
    ``exec=`` it never returns: the program replaces this process, with ``run_as`` applied first
    and the ``exec=``, ``run_as=`` and ``lifeline_fd=`` arguments removed.
    """
    rest: list[str] = []
    options: dict[str, str] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in (LIFELINE_KEY, EXEC_KEY):
            options[key] = value
        else:
            rest.append(arg)
    if LIFELINE_KEY in options:
        start_group_watcher(int(options[LIFELINE_KEY]))
    program = options.get(EXEC_KEY)
    if program is None:
        return rest
    args = [arg for arg in rest if not arg.startswith(f"{RUN_AS_KEY}=")]
    try:
        for arg in rest:
            if arg.startswith(f"{RUN_AS_KEY}="):
                drop_privileges(RunAsIds(arg.partition("=")[2]))
        os.execv(program, [program, *args])
    except OSError as exc:
        os.write(2, f"executor: cannot start {program!r}: {exc}\n".encode())
    os._exit(EXIT_CANNOT_START)
