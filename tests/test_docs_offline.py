"""The docs site draws its Mermaid diagrams with a bundled script, never one from a CDN."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mermaid_offline", ROOT / "mkdocs_hooks" / "mermaid_offline.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("offline-site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def test_pages_with_diagrams_load_the_bundled_mermaid(site: Path) -> None:
    bundled = site / "javascripts" / "mermaid.min.js"
    assert bundled.stat().st_size > 1_000_000
    assert "mermaid" in bundled.read_text(encoding="utf-8", errors="replace")[:200_000]
    pages = [site / "protocol" / "index.html", site / "statecharts" / "index.html"]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert 'class="mermaid"' in text, page
        assert re.search(r'<script src="\.\./javascripts/mermaid\.min\.js', text), page
        assert not re.findall(r'<script src="https?://', text), page


def test_the_bundle_is_not_fetched_again_when_present(tmp_path: Path) -> None:
    target = tmp_path / "mermaid.min.js"
    target.write_text("already here")
    assert _hook().bundle(target) == target
    assert target.read_text() == "already here"
