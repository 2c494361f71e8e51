"""docs/rules.md resolves every spec rule id and spec section the code, tests and docs cite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = ROOT / "docs" / "rules.md"
_RULE_ID = re.compile(r"\b([APMRSEH]\d{1,2})\b")
_SECTION = re.compile(r"\b(protocol|executor|scenarios)\.md (?:§|section )(\d+(?:\.\d+)*)")


def _sources() -> Iterator[Path]:
    for folder in ("worker", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if "_generated" not in path.parts:
                yield path
    yield from (p for p in (ROOT / "docs").glob("*.md") if p != GLOSSARY)
    yield ROOT / "README.md"


def _glossary_rows() -> set[str]:
    return set(re.findall(r"^\| ([^|]+?) \|", GLOSSARY.read_text(encoding="utf-8"), re.MULTILINE))


def test_every_cited_rule_id_has_an_entry() -> None:
    rows = _glossary_rows()
    cited = {
        (match, path.relative_to(ROOT).as_posix())
        for path in _sources()
        for match in _RULE_ID.findall(path.read_text(encoding="utf-8"))
    }
    assert cited, "no rule id found: is the pattern still right?"
    missing = sorted((rule, where) for rule, where in cited if rule not in rows)
    assert missing == [], f"rule ids cited but not in docs/rules.md: {missing}"


def test_every_cited_spec_section_has_an_entry() -> None:
    text = GLOSSARY.read_text(encoding="utf-8")
    tables = {
        name: set(re.findall(r"^\| (\d+(?:\.\d+)*) \|", part, re.MULTILINE))
        for name, part in re.findall(r"^### (\w+)\.md\n(.*?)(?=^### |\Z)", text, re.M | re.S)
    }
    cited = {
        (name, section, path.relative_to(ROOT).as_posix())
        for path in _sources()
        for name, section in _SECTION.findall(path.read_text(encoding="utf-8"))
    }
    assert cited
    missing = sorted(c for c in cited if c[1] not in tables.get(c[0], set()))
    assert missing == [], f"spec sections cited but not in docs/rules.md: {missing}"
