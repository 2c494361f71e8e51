"""MkDocs hook: bundle the Mermaid script into the site so that the diagrams render offline.

The theme draws ``mermaid`` fences with the global ``mermaid`` object when a page already
defines one, and only otherwise loads the script from a CDN. Before each build this hook makes
sure ``docs/javascripts/mermaid.min.js`` exists, taking it from the npm registry's package
(``npm pack``, pinned below; npm checks the package's integrity) when it does not; mkdocs.yml
lists it under ``extra_javascript``. The file is generated, not committed (.gitignore).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

MERMAID_VERSION = "11.6.0"
_MEMBER = "package/dist/mermaid.min.js"


def bundle(target: Path, version: str = MERMAID_VERSION) -> Path:
    """Write Mermaid's ``dist/mermaid.min.js`` of ``version`` to ``target`` (if missing)."""
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "npm is needed once to bundle Mermaid for the docs (apt-get install npm)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mermaid-") as scratch:
        subprocess.run(
            [npm, "pack", f"mermaid@{version}", "--silent", "--pack-destination", scratch],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (archive,) = Path(scratch).glob("mermaid-*.tgz")
        with tarfile.open(archive) as bundle_archive:
            member = bundle_archive.extractfile(_MEMBER)
            if member is None:
                raise RuntimeError(f"{archive.name} has no {_MEMBER}")
            partial = target.with_suffix(".part")
            partial.write_bytes(member.read())
            partial.replace(target)
    return target


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """Bundle the script before MkDocs collects the docs files."""
    bundle(Path(config["docs_dir"]) / "javascripts" / "mermaid.min.js")
