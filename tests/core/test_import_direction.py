"""The shell calls the core, never the reverse: worker/core imports no I/O and no shell module."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "worker" / "core"
_FORBIDDEN = ("trio", "grpc", "worker.runtime", "worker.transport", "worker.executor")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def test_the_core_imports_no_io_and_nothing_of_the_shell() -> None:
    offending = {
        (path.name, name)
        for path in CORE.glob("*.py")
        for name in _imports(path)
        if any(name == banned or name.startswith(f"{banned}.") for banned in _FORBIDDEN)
    }
    assert offending == set()
