"""Process hardening shared by every long-running command (executor.md §8.1).

* ``make_non_dumpable`` marks the calling process non-dumpable (Linux ``PR_SET_DUMPABLE`` 0):
  other processes of the same non-root user, task code included, can then neither read its
  ``/proc/<pid>/environ`` or memory nor attach a debugger to it, and it writes no core dump.
  The worker, ``local`` and ``cluster`` call it first thing.
* ``first_unreadable`` tells whether another user could read a path (config checks of
  ``task_executor.run_as``).

Standard library only; importing this module is cheap.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from pathlib import Path
from typing import Any

__all__ = ["first_unreadable", "make_non_dumpable"]

_PR_SET_DUMPABLE = 4


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def make_non_dumpable() -> bool:
    """Make this process non-dumpable; ``False`` where the platform cannot (not Linux).

    Irreversible in practice: nothing in this project sets it back. Children started with
    ``exec`` are dumpable again (the kernel resets the flag), which is why executors get an
    allow-listed environment and, with ``run_as``, another user.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def first_unreadable(path: Path, uid: int, gid: int, *, execute: bool = True) -> Path | None:
    """The first component of ``path`` that user ``uid`` (group ``gid``) cannot get through.

    Every ancestor directory needs search permission; ``path`` itself needs read permission
    and, with ``execute``, execute/search permission too. Only the mode bits are considered
    (no ACLs); the user has no supplementary groups (that is what ``run_as`` gives it). Root
    passes everything. Returns ``None`` when the whole path is accessible.
    """
    if uid == 0:
        return None
    target = Path(os.path.abspath(path))
    for directory in reversed(target.parents):
        if not _allowed(directory, uid, gid, read=False, execute=True):
            return directory
    if not _allowed(target, uid, gid, read=True, execute=execute):
        return target
    return None


def _allowed(path: Path, uid: int, gid: int, *, read: bool, execute: bool) -> bool:
    try:
        info = path.stat()
    except OSError:
        return False
    if info.st_uid == uid:
        read_bit, execute_bit = stat.S_IRUSR, stat.S_IXUSR
    elif info.st_gid == gid:
        read_bit, execute_bit = stat.S_IRGRP, stat.S_IXGRP
    else:
        read_bit, execute_bit = stat.S_IROTH, stat.S_IXOTH
    return (not read or bool(info.st_mode & read_bit)) and (
        not execute or bool(info.st_mode & execute_bit)
    )
