"""Bundled example job for ``python -m worker local``: task modules and job files (package data)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES_DIR", "FIBONACCI_JOB"]

#: This directory: the ``package_dir`` of the example tasks.
EXAMPLES_DIR = Path(__file__).resolve().parent
#: The default job of ``python -m worker local``.
FIBONACCI_JOB = EXAMPLES_DIR / "fibonacci.yaml"
