"""``python -m bench [NAME ...] [OPTIONS]``: run every benchmark module (or the named ones).

A benchmark is a module ``bench/<name>.py`` with a ``main(argv: list[str]) -> int`` that prints
a markdown table. Modules are found by name, so adding one needs no change here. Options after
the names go to each named benchmark, e.g. ``python -m bench cluster --slots 1,2,4``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the named benchmarks, or all of them, and return the worst exit code."""
    here = Path(__file__).resolve().parent
    first_option = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, options = argv[:first_option], argv[first_option:]
    names = names or sorted(
        info.name for info in pkgutil.iter_modules([str(here)]) if not info.name.startswith("_")
    )
    worst = 0
    for name in names:
        print(f"\n## bench/{name}\n", flush=True)
        module = importlib.import_module(f"bench.{name}")
        worst = max(worst, int(module.main(options)))
    return worst


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
