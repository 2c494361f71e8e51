"""Every public module, class and function of ``worker/`` has a docstring.

Public means: no path component or name with a leading underscore (``__init__`` and ``__main__``
modules count as public; dunder methods do not need one). Methods of public classes are checked,
nested public classes too. ``worker/transport/_generated`` (protoc output) is skipped by the rule.
Overload signatures and property setters/deleters share the docstring of their implementation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "worker"


def _is_public_name(name: str) -> bool:
    return not name.startswith("_")


def _is_public_module(path: Path) -> bool:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return all(_is_public_name(part) or part in {"__init__", "__main__"} for part in parts)


def _shares_a_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "overload":
            return True
        if isinstance(target, ast.Attribute) and (
            target.attr in {"setter", "deleter"}
            or (target.attr == "overload" and isinstance(target.value, ast.Name))
        ):
            return True
    return False


def _top_level(statements: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a body, looking inside ``if``/``try`` blocks (``if TYPE_CHECKING:``, ...)."""
    for statement in statements:
        if isinstance(statement, ast.If):
            yield from _top_level(statement.body)
            yield from _top_level(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _top_level(block)
            for handler in statement.handlers:
                yield from _top_level(handler.body)
        else:
            yield statement


def missing_docstrings(path: Path) -> list[str]:
    """``path:line name`` for every public definition in ``path`` lacking a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(ROOT).as_posix()
    missing: list[str] = []
    if ast.get_docstring(tree) is None:
        missing.append(f"{where}:1 module")

    def visit(statements: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in _top_level(statements):
            if isinstance(node, ast.ClassDef) and _is_public_name(node.name):
                if ast.get_docstring(node) is None:
                    missing.append(f"{where}:{node.lineno} class {prefix}{node.name}")
                visit(node.body, f"{prefix}{node.name}.", in_class=True)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if not _is_public_name(node.name) or _shares_a_docstring(node):
                    continue
                if ast.get_docstring(node) is None:
                    kind = "method" if in_class else "function"
                    missing.append(f"{where}:{node.lineno} {kind} {prefix}{node.name}")

    visit(tree.body, "", in_class=False)
    return missing


def _modules() -> list[Path]:
    generated = PACKAGE / "transport" / "_generated"
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if generated not in path.parents and _is_public_module(path)
    )


def test_every_public_definition_has_a_docstring() -> None:
    missing = [entry for path in _modules() for entry in missing_docstrings(path)]
    assert missing == [], "missing docstrings:\n" + "\n".join(missing)


def test_the_walk_covers_the_package() -> None:
    modules = {path.relative_to(ROOT).as_posix() for path in _modules()}
    assert {"worker/cli.py", "worker/model.py", "worker/core/machine.py"} <= modules
    assert not any("/_generated/" in module for module in modules)


SAMPLE = '''
"""Module docstring."""
from typing import overload, TYPE_CHECKING

class Documented:
    """Yes."""
    def method(self) -> None:
        """Yes."""
    def __repr__(self) -> str:
        return ""
    def _private(self) -> None:
        pass
    @property
    def value(self) -> int:
        """Yes."""
        return 1
    @value.setter
    def value(self, new: int) -> None:
        pass

class Bare:
    def method(self) -> None:
        pass
    class Inner:
        async def go(self) -> None:
            pass

class _Hidden:
    def method(self) -> None:
        pass

@overload
def f(x: int) -> int: ...
@overload
def f(x: str) -> str: ...
def f(x):
    """Yes."""
    return x

if TYPE_CHECKING:
    def typed() -> None:
        pass

async def coroutine() -> None:
    pass
'''


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            SAMPLE,
            [
                "worker/sample.py:20 class Bare",
                "worker/sample.py:21 method Bare.method",
                "worker/sample.py:23 class Bare.Inner",
                "worker/sample.py:24 method Bare.Inner.go",
                "worker/sample.py:40 function typed",
                "worker/sample.py:43 function coroutine",
            ],
        ),
        ("x = 1\n", ["worker/sample.py:1 module"]),
    ],
)
def test_the_check_finds_what_is_missing(
    source: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    sample = tmp_path / "worker" / "sample.py"
    sample.parent.mkdir()
    sample.write_text(source.lstrip("\n"), encoding="utf-8")
    assert missing_docstrings(sample) == expected


def test_private_modules_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _is_public_module(tmp_path / "worker" / "core" / "machine.py")
    assert _is_public_module(tmp_path / "worker" / "__main__.py")
    assert not _is_public_module(tmp_path / "worker" / "_internal.py")
    assert not _is_public_module(tmp_path / "worker" / "_private" / "thing.py")
