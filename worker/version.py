"""The installed version, read from the distribution's metadata (``spider-worker``).

The import package is ``worker``; the distribution on PyPI is ``spider-worker`` (the name
``worker`` was taken). A source checkout run without being installed has no metadata: the version
then reads ``unknown`` rather than failing.
"""

from __future__ import annotations

from importlib import metadata
from typing import Final

__all__ = ["DISTRIBUTION", "version_line"]

DISTRIBUTION: Final = "spider-worker"


def version_line() -> str:
    """``spider-worker X.Y.Z``: what ``python -m worker --version`` prints."""
    try:
        found = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        found = "unknown (not installed)"
    return f"{DISTRIBUTION} {found}"
