"""Docs that cannot rot: every ``sh`` and ``python`` block of README.md and docs/*.md, and every
Python example in a docstring of ``worker/``, runs here.

Rules (docs/index.md, "Documentation that is tested"):

* A fenced block is skipped only when the line before it is ``<!-- no-test: REASON -->``; the
  reason must say why (container images, network, a host setup, a long-running service).
* ``<!-- doc-test: exit=N -->`` before a block: the block must exit with N (a demo that fails on
  purpose).
* A ``python`` block whose first line is a comment naming a file (``# my_tasks.py ...``) is
  written under that name, so later blocks of the same page can import it. A block defining
  ``test_`` functions runs under pytest (with pytest-trio's ``trio_mode``); any other block runs
  as a script. Each page's blocks share one scratch folder, in order.
* A ``yaml`` block whose first line is ``# worker.yaml`` (a worker configuration) must pass the
  worker's configuration validation, loaded from the repository root.
* An ``sh`` block runs line by line (comments stripped) from the repository root, each line
  with a time limit.
* In docstrings, a literal block (after a line ending in ``::``) that parses as Python runs as
  a script, and ``>>>`` examples run as doctests; ``.. no-test: REASON`` on the line before the
  ``::`` line skips one.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE = ROOT / "worker"
_FENCE = re.compile(r"^```(\w*)\s*$")
_NO_TEST = re.compile(r"^<!-- no-test: (?P<reason>.+?) -->$")
_DOC_TEST = re.compile(r"^<!-- doc-test: exit=(?P<exit>\d+) -->$")
_CONFIG_HEADER = re.compile(r"^# (worker|[\w-]+-worker)\.yaml\b")
_FILE_HEADER = re.compile(r"^# (?P<name>[A-Za-z_]\w*\.py)\b")
_LINE_TIMEOUT_SEC = 240


@attrs.frozen
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    language: str
    code: str
    skip_reason: str | None
    expected_exit: int

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def _blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        language = fence.group(1)
        if language not in {"sh", "python"} and not (
            language == "yaml" and body and _CONFIG_HEADER.match(body[0])
        ):
            continue
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        skip = _NO_TEST.match(before.strip())
        expected = _DOC_TEST.match(before.strip())
        yield Block(
            page,
            start + 1,
            language,
            "\n".join(body) + "\n",
            skip.group("reason") if skip else None,
            int(expected.group("exit")) if expected else 0,
        )


ALL_BLOCKS = [block for page in PAGES for block in _blocks(page)]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=_LINE_TIMEOUT_SEC,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _run_python(code: str, folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    header = _FILE_HEADER.match(code)
    path = folder / (header.group("name") if header else f"{name}.py")
    path.write_text(code, encoding="utf-8")
    if re.search(r"^(async )?def test_", code, re.MULTILINE):
        return _run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "trio_mode=true",
                "--rootdir",
                str(folder),
                str(path),
            ],
            folder,
        )
    if header:
        return _run([sys.executable, "-c", f"import {path.stem}"], folder)
    return _run([sys.executable, str(path)], folder)


@pytest.fixture(scope="module")
def page_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    return {page: tmp_path_factory.mktemp(page.stem) for page in PAGES}


def test_every_skip_marker_gives_a_reason() -> None:
    skipped = [block for block in ALL_BLOCKS if block.skip_reason is not None]
    assert skipped, "the runner found no marker at all: is the marker syntax still recognised?"
    for block in skipped:
        assert len(block.skip_reason or "") >= 15, f"{block.id}: say why it cannot run"


def test_the_runner_finds_the_pages_blocks() -> None:
    assert len([b for b in ALL_BLOCKS if b.skip_reason is None]) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.id)
def test_docs_block_runs(block: Block, page_folders: dict[Path, Path]) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"marked no-test: {block.skip_reason}")
    if block.language == "yaml":
        # A worker configuration: it must pass the worker's own validation, from the root.
        config = page_folders[block.page] / f"config_{block.line}.yaml"
        config.write_text(block.code, encoding="utf-8")
        check = f"from worker.config import load_config; load_config({str(config)!r})"
        done = _run([sys.executable, "-c", check], ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
        return
    if block.language == "python":
        done = _run_python(block.code, page_folders[block.page], f"block_{block.line}")
        assert done.returncode == block.expected_exit, done.stdout + done.stderr
        return
    # A line ending in a backslash continues on the next one, as in the shell.
    for raw in block.code.replace("\\\n", " ").splitlines():
        command = re.sub(r"\s+#.*$", "", raw).strip()
        if not command or command.startswith("#"):
            continue
        done = _run(["bash", "-c", command], ROOT)
        assert done.returncode == block.expected_exit, f"{command}\n{done.stdout}{done.stderr}"


# --- docstrings -------------------------------------------------------------------------------


@attrs.frozen
class DocExample:
    """One literal-block example of a docstring."""

    module: str
    line: int
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.module}:{self.line}"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_generated" in path.parts:
            continue
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts), path


def _docstrings(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                yield getattr(node, "lineno", 1), docstring


def _literal_blocks(docstring: str) -> Iterator[tuple[str, str | None]]:
    lines = docstring.splitlines()
    for index, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        body: list[str] = []
        for follow in lines[index + 1 :]:
            if follow.strip() and not follow.startswith((" ", "\t")):
                break
            body.append(follow)
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        previous = lines[index - 1].strip() if index > 0 else ""
        reason = (
            previous.removeprefix(".. no-test:").strip()
            if previous.startswith(".. no-test:")
            else None
        )
        yield code, reason


def _examples() -> Iterator[DocExample]:
    for module, path in _modules():
        for line, docstring in _docstrings(path):
            for code, reason in _literal_blocks(docstring):
                try:
                    ast.parse(code)
                except SyntaxError:
                    continue  # a drawing or a listing, not Python
                if not code.strip() or code.lstrip().startswith(">>>"):
                    continue
                yield DocExample(module, line, code, reason)


DOC_EXAMPLES = list(_examples())


@pytest.mark.slow
@pytest.mark.parametrize("example", DOC_EXAMPLES, ids=lambda example: example.id)
def test_docstring_example_runs(example: DocExample, tmp_path: Path) -> None:
    if example.skip_reason is not None:
        pytest.skip(f"marked no-test: {example.skip_reason}")
    done = _run_python(example.code, tmp_path, "example")
    assert done.returncode == 0, done.stdout + done.stderr


def test_docstring_doctests_pass() -> None:
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examined = 0
    for module_name, _path in _modules():
        if module_name.endswith("__main__"):
            continue
        module = importlib.import_module(module_name)
        for test in finder.find(module, module_name):
            if test.examples:
                examined += len(test.examples)
                runner.run(test)
    results = runner.summarize(verbose=False)
    assert examined > 0
    assert results.failed == 0
