"""The tests' fault hook: parsing its variable, and a bad value refused at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_service import run_cli, write_config
from worker.metrics.faults import BLOCK_LOOP_VARIABLE, FaultHookError, block_loop_seconds


def test_unset_means_no_fault() -> None:
    assert block_loop_seconds({}) is None


@pytest.mark.parametrize(("text", "seconds"), [("12", 12.0), ("0.5", 0.5)])
def test_a_positive_number_of_seconds(text: str, seconds: float) -> None:
    assert block_loop_seconds({BLOCK_LOOP_VARIABLE: text}) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1", "soon", "nan", "inf"])
def test_anything_else_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(FaultHookError, match=BLOCK_LOOP_VARIABLE):
        block_loop_seconds({BLOCK_LOOP_VARIABLE: text})


def test_a_bad_value_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    # Ports 1 and 2: nothing listens there; the worker must not get as far as trying.
    config = write_config(
        tmp_path, 1, 2, metrics={"host": "127.0.0.1", "port": 0}, log={"level": "warning"}
    )
    done = run_cli("-c", str(config), env={**os.environ, BLOCK_LOOP_VARIABLE: "soon"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"{BLOCK_LOOP_VARIABLE}: expected seconds > 0, got 'soon'"
    ]
