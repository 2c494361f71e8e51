"""The docs site builds in MkDocs strict mode (warnings are errors), with the charts in it."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


class _Loader(yaml.SafeLoader):
    """Reads mkdocs.yml, ignoring its Python-specific tags (they matter to MkDocs only)."""


def _ignore_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> None:
    return None


_Loader.add_multi_constructor("!", _ignore_tag)
_Loader.add_multi_constructor("tag:yaml.org,2002:python/", _ignore_tag)


def _nav_pages(entries: Any) -> Iterator[str]:
    if isinstance(entries, str):
        yield entries
    elif isinstance(entries, list):
        for entry in entries:
            yield from _nav_pages(entry)
    elif isinstance(entries, dict):
        for value in entries.values():
            yield from _nav_pages(value)


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), _Loader)
    return config


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return site_dir


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert _config().get("strict") is True


def test_nav_lists_exactly_the_pages_in_docs() -> None:
    nav = list(_nav_pages(_config()["nav"]))
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    for page in nav:
        assert (DOCS / page).is_file(), f"mkdocs.yml nav lists a missing page: {page}"
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages - set(nav) == set(), "pages in docs/ that the nav does not list"


def test_statecharts_are_embedded_from_the_generated_sources(site: Path) -> None:
    page = html.unescape((site / "statecharts" / "index.html").read_text(encoding="utf-8"))
    for name in ("worker", "assignment", "nurseries"):
        source = (ROOT / "statecharts" / f"{name}.mmd").read_text(encoding="utf-8")
        body = [line.strip() for line in source.splitlines() if line.strip()]
        assert all(line in page for line in body), f"statecharts/{name}.mmd is not embedded"
    assert page.count('class="mermaid"') >= 3


def test_protocol_page_has_the_sequence_diagrams(site: Path) -> None:
    page = (site / "protocol" / "index.html").read_text(encoding="utf-8")
    assert page.count("sequenceDiagram") == 4
    for heading in ("Happy path", "Stale session", "Drain", "Forced stop"):
        assert heading in page
