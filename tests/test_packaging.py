"""Packaging: the distribution name, ranges instead of pins, the lowest-versions file, --version."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from worker.cli import main
from worker.version import DISTRIBUTION, version_line

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "worker" / "transport" / "_generated"
LOWEST = ROOT / "constraints" / "lowest.txt"


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return match.group(0).lower()


def _floor(requirement: str) -> str:
    match = re.search(r">=([0-9][^,;\s]*)", requirement)
    assert match is not None, f"no lower bound in {requirement!r}"
    return match.group(1)


def _lowest() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOWEST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_distribution_is_not_named_like_the_taken_pypi_name() -> None:
    assert _project()["name"] == DISTRIBUTION == "spider-worker"
    assert _project()["scripts"] == {"spider-worker": "worker.cli:main"}


def test_runtime_dependencies_are_ranges_not_pins() -> None:
    for requirement in _project()["dependencies"]:
        assert "==" not in requirement, requirement
        _floor(requirement)


def test_lowest_constraints_match_every_runtime_floor() -> None:
    lowest = _lowest()
    requirements = _project()["dependencies"]
    assert set(lowest) == {_requirement_name(r) for r in requirements}
    for requirement in requirements:
        assert lowest[_requirement_name(requirement)] == _floor(requirement), requirement


def _generated_versions() -> tuple[str, str]:
    protobuf = re.search(
        r"Protobuf Python Version: (\S+)", (GENERATED / "common" / "common_pb2.py").read_text()
    )
    grpc = re.search(
        r"GRPC_GENERATED_VERSION = '([^']+)'",
        (GENERATED / "scheduler" / "scheduler_pb2_grpc.py").read_text(),
    )
    assert protobuf is not None
    assert grpc is not None
    return protobuf.group(1), grpc.group(1)


def test_protobuf_and_grpcio_floors_are_what_the_committed_stubs_need() -> None:
    protobuf, grpc = _generated_versions()
    major = protobuf.split(".")[0]
    by_name = {_requirement_name(r): r for r in _project()["dependencies"]}
    assert by_name["protobuf"].replace(" ", "") == f"protobuf>={protobuf},<{int(major) + 1}"
    assert by_name["grpcio"].startswith(f"grpcio>={grpc}")


def test_classifiers_name_the_supported_pythons_and_the_typed_marker() -> None:
    classifiers = _project()["classifiers"]
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert _project()["urls"]


def test_version_flag_prints_the_distribution_and_version(capsys: Any) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == version_line()
    assert version_line().startswith("spider-worker ")


def test_version_flag_through_python_dash_m() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert re.fullmatch(r"spider-worker \S.*\n", completed.stdout)
