"""The ``python -m worker diagram`` command: write (or check) the generated statecharts."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from worker.command_line import command_parser, invoked_prog, log_when_asked
from worker.statecharts.render import CHART_NAMES, render_all

__all__ = ["DEFAULT_OUTPUT", "main", "render_svg", "stale_files", "write_charts"]

#: Where the charts live, relative to the repository root (the working directory of ``just``).
DEFAULT_OUTPUT: Final = Path("statecharts")

_SVG_TIMEOUT_SEC: Final = 60.0


def stale_files(output: Path, files: dict[str, str]) -> list[str]:
    """Names in ``files`` whose committed copy under ``output`` is missing or different."""
    stale: list[str] = []
    for name, text in files.items():
        path = output / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def write_charts(output: Path, files: dict[str, str]) -> list[Path]:
    """Write every source file under ``output`` (created if needed); return the paths written."""
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in files.items():
        path = output / name
        # newline="\n": the committed files are byte-identical on every platform.
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def render_svg(dot_program: str, dot_file: Path) -> Path:
    """Render ``dot_file`` to the SVG next to it with Graphviz's ``dot``; return the SVG path."""
    svg_file = dot_file.with_suffix(".svg")
    subprocess.run(
        [dot_program, "-Tsvg", str(dot_file), "-o", str(svg_file)],
        check=True,
        timeout=_SVG_TIMEOUT_SEC,
        capture_output=True,
    )
    return svg_file


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        f"{invoked_prog()} diagram",
        "Regenerate the statecharts (Mermaid and DOT sources, and SVG when Graphviz's `dot` "
        "is installed) from the transition tables.",
        examples=["", "--check"],
        exit_codes="0 written (--check: up to date); 1 --check found a stale source;"
        " 2 bad command line",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="directory to write into (default: %(default)s, relative to the working directory)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed Mermaid or DOT source is out of date",
    )
    parser.add_argument("--no-svg", action="store_true", help="do not render SVG")
    parser.add_argument(
        "--dot",
        default="dot",
        help="the Graphviz program used to render SVG (default: %(default)s, looked up on PATH)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run the command; return 0 on success, 1 when ``--check`` finds stale files, 2 on bad use."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
        log_when_asked(parser, args.log_level)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    files = render_all(CHART_NAMES)
    output: Path = args.output
    if args.check:
        stale = stale_files(output, files)
        for name in stale:
            print(f"out of date: {output / name} (run `just statecharts`)", file=sys.stderr)
        if not stale:
            print(f"{len(files)} statechart sources in {output} are up to date")
        return 1 if stale else 0

    for path in write_charts(output, files):
        print(f"wrote {path}")
    if args.no_svg:
        print("SVG not rendered (--no-svg)")
        return 0
    dot_program = shutil.which(args.dot)
    if dot_program is None:
        print(
            f"SVG not rendered: Graphviz's {args.dot!r} program was not found on PATH "
            "(Debian/Ubuntu: apt-get install -y graphviz); the Mermaid and DOT sources are written",
            file=sys.stderr,
        )
        return 0
    for name in CHART_NAMES:
        print(f"wrote {render_svg(dot_program, output / f'{name}.dot')}")
    return 0
