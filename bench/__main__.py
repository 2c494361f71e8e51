"""``python -m bench [NAME ...]``: run every benchmark module (or the named ones) in turn.

A benchmark is a module ``bench/<name>.py`` with a ``main(argv: list[str]) -> int`` that prints
a markdown table. Modules are found by name, so adding one needs no change here.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the named benchmarks, or all of them, and return the worst exit code."""
    here = Path(__file__).resolve().parent
    names = argv or sorted(
        info.name for info in pkgutil.iter_modules([str(here)]) if not info.name.startswith("_")
    )
    worst = 0
    for name in names:
        print(f"\n## bench/{name}\n", flush=True)
        module = importlib.import_module(f"bench.{name}")
        worst = max(worst, int(module.main([])))
    return worst


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
