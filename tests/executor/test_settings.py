"""``PoolSettings`` shares the defaults and checks of the ``task_executor`` configuration keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.executor.conftest import config_document
from worker.config import ConfigError, parse_config
from worker.executor.settings import PoolSettings

#: executor.md section 1 and protocol.md section 9.1: the documented defaults.
SPEC_DEFAULTS = {
    "max_log_line_bytes": 65536,
    "kill_grace_ms": 0,
    "ready_timeout_sec": 10,
    "close_grace_ms": 1000,
    "max_frame_bytes": 8 * 1024 * 1024,
    "respawn_backoff_initial_ms": 100,
    "respawn_backoff_max_ms": 5000,
    "crash_loop_limit": 5,
    "log_queue_lines": 1024,
    "log_drain_timeout_sec": 5,
    "output_limit_bytes": 4 * 1024 * 1024,
    "inherited_env": (),
    "bin_path": None,
    "slots": 1,
}


def test_defaults_are_the_documented_ones_in_code_and_in_a_file(tmp_path: Path) -> None:
    in_code = PoolSettings(package_dir=tmp_path)
    from_file = parse_config(config_document(tmp_path), environ={}).config.to_pool_settings()
    assert in_code == from_file
    for name, value in SPEC_DEFAULTS.items():
        assert getattr(in_code, name) == value, name


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kill_grace_ms", -1),
        ("ready_timeout_sec", 0),
        ("close_grace_ms", -5),
        ("respawn_backoff_initial_ms", 0),
        ("crash_loop_limit", 0),
        ("log_queue_lines", 0),
        ("log_drain_timeout_sec", 0),
        ("max_log_line_bytes", 0),
    ],
)
def test_a_value_refused_in_a_file_is_refused_in_code_with_the_same_words(
    tmp_path: Path, key: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as from_file:
        parse_config(config_document(tmp_path, **{key: value}), environ={})
    with pytest.raises(ValueError, match=f"^task_executor.{key}: ") as in_code:
        PoolSettings(package_dir=tmp_path, **{key: value})
    assert str(from_file.value) == f"config error: {in_code.value}"


def test_relations_between_keys_are_checked_once_for_both(tmp_path: Path) -> None:
    frame: dict[str, Any] = {"max_frame_bytes": 4 * 1024 * 1024}
    with pytest.raises(ConfigError) as from_file:
        parse_config(config_document(tmp_path, **frame), environ={})
    with pytest.raises(ValueError, match=r"^task_executor\.max_frame_bytes: ") as in_code:
        PoolSettings(package_dir=tmp_path, **frame)
    assert str(from_file.value) == f"config error: {in_code.value}"
