"""The YAML configuration: Spider's files load unchanged, defaults, one-line key errors."""

from __future__ import annotations

import copy
import stat
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest

from worker.config import (
    ENV_OVERRIDES,
    ConfigError,
    WorkerConfig,
    load_config,
    parse_config,
)
from worker.config_reference import collect_keys
from worker.core.settings import RuntimeSettings
from worker.executor.settings import PoolSettings
from worker.transport.channels import ChannelOptions

# A worker configuration as Spider's deployment files write it (integers for the intervals).
SPIDER_YAML = """\
storage:
  host: 127.0.0.1
  port: 6001
scheduler:
  host: scheduler.local
  port: 6002
connection_pool_size: 4
scheduler_poll_wait_ms: 1000
liveness:
  storage_heartbeat_interval_sec: 1
  scheduler_heartbeat_interval_sec: 1
task_executor:
  package_dir: {package_dir}
  max_log_line_bytes: 65536
  inherited_env: [PATH, HOME]
"""


@pytest.fixture
def minimal(tmp_path: Path) -> dict[str, Any]:
    """The smallest valid document (every required key, nothing else)."""
    return {
        "storage": {"host": "127.0.0.1", "port": 6001},
        "scheduler": {"host": "127.0.0.1", "port": 6002},
        "connection_pool_size": 2,
        "scheduler_poll_wait_ms": 200,
        "liveness": {
            "storage_heartbeat_interval_sec": 0.1,
            "scheduler_heartbeat_interval_sec": 0.1,
        },
        "task_executor": {"package_dir": str(tmp_path)},
    }


def error_of(document: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(document, environ or {})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    return message


def test_spider_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(SPIDER_YAML.format(package_dir=tmp_path))
    loaded = load_config(path, environ={})
    config = loaded.config
    assert loaded.unknown_keys == ()
    assert config.storage.host == "127.0.0.1"
    assert config.scheduler.target == "scheduler.local:6002"
    assert config.connection_pool_size == 4
    assert config.liveness.storage_heartbeat_interval_sec == 1.0
    assert config.task_executor.inherited_env == ("PATH", "HOME")
    assert config.task_executor.bin_path is None


def test_extension_defaults(minimal: dict[str, Any]) -> None:
    config = parse_config(minimal, {}).config
    assert config.ip_address == "0.0.0.0"
    assert (config.shutdown.drain_timeout_sec, config.shutdown.rpc_budget_sec) == (30.0, 5.0)
    assert config.grpc.rpc_timeout_sec == 30.0
    assert config.grpc.max_send_bytes == 4 * 1024 * 1024
    assert config.grpc.max_receive_bytes == 256 * 1024 * 1024
    assert (config.backoff.initial_sec, config.backoff.max_sec) == (0.1, 2.0)
    assert (config.log.format, config.log.level) == (None, "info")
    executor = config.task_executor
    assert executor.max_log_line_bytes == 65536
    assert executor.inherited_env == ()
    assert executor.kill_grace_ms == 0
    assert executor.ready_timeout_sec == 10.0
    assert executor.close_grace_ms == 1000
    assert executor.max_frame_bytes == 8 * 1024 * 1024
    assert (executor.respawn_backoff_initial_ms, executor.respawn_backoff_max_ms) == (100, 5000)
    assert executor.crash_loop_limit == 5
    assert executor.log_queue_lines == 1024
    assert executor.log_drain_timeout_sec == 5.0
    assert executor.protocol == "worker"


def test_every_extension_key_is_read(minimal: dict[str, Any], tmp_path: Path) -> None:
    binary = tmp_path / "executor"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    minimal.update(
        ip_address="10.0.0.7",
        shutdown={"drain_timeout_sec": 2, "rpc_budget_sec": 0.5},
        grpc={"rpc_timeout_sec": 3, "max_send_bytes": 1000, "max_receive_bytes": 2000},
        backoff={"initial_sec": 0.01, "max_sec": 5},
        log={"format": "json", "level": "debug"},
    )
    minimal["task_executor"].update(
        bin_path=str(binary),
        inherited_env=["LANG", "TZ"],
        kill_grace_ms=7,
        ready_timeout_sec=1.5,
        close_grace_ms=8,
        max_frame_bytes=70000,
        respawn_backoff_initial_ms=9,
        respawn_backoff_max_ms=10,
        crash_loop_limit=11,
        log_queue_lines=12,
        log_drain_timeout_sec=13,
        protocol="worker",
    )
    config = parse_config(minimal, {}).config
    assert config.to_runtime_settings() == RuntimeSettings(
        storage_heartbeat_interval_sec=0.1,
        scheduler_heartbeat_interval_sec=0.1,
        scheduler_poll_wait_ms=200,
        drain_timeout_sec=2.0,
        shutdown_rpc_budget_sec=0.5,
        backoff_initial_sec=0.01,
        backoff_max_sec=5.0,
        ip_address="10.0.0.7",
        max_send_bytes=1000,
    )
    assert config.to_pool_settings() == PoolSettings(
        package_dir=tmp_path,
        bin_path=binary,
        max_log_line_bytes=65536,
        inherited_env=("LANG", "TZ"),
        kill_grace_ms=7,
        ready_timeout_sec=1.5,
        close_grace_ms=8,
        max_frame_bytes=70000,
        respawn_backoff_initial_ms=9,
        respawn_backoff_max_ms=10,
        crash_loop_limit=11,
        log_queue_lines=12,
        log_drain_timeout_sec=13.0,
        output_limit_bytes=1000,
        slots=1,
    )
    assert config.to_channel_options() == ChannelOptions(
        max_send_bytes=1000,
        max_receive_bytes=2000,
        reconnect_initial_sec=0.01,
        reconnect_max_sec=5.0,
    )
    assert config.grpc.max_receive_bytes == 2000
    assert (config.log.format, config.log.level) == ("json", "debug")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["scheduler"].update(port="abc"),
            "config error: scheduler.port: must be an integer in 1..65535, got 'abc'",
        ),
        (
            lambda d: d["storage"].update(port=70000),
            "config error: storage.port: must be an integer in 1..65535, got 70000",
        ),
        (
            lambda d: d["storage"].update(port=True),
            "config error: storage.port: must be an integer in 1..65535, got True",
        ),
        (
            lambda d: d["storage"].update(host=""),
            "config error: storage.host: must be a non-empty string, got ''",
        ),
        (lambda d: d.pop("scheduler"), "config error: scheduler: missing required key"),
        (lambda d: d["storage"].pop("port"), "config error: storage.port: missing required key"),
        (
            lambda d: d.pop("connection_pool_size"),
            "config error: connection_pool_size: missing required key",
        ),
        (
            lambda d: d.update(connection_pool_size=0),
            "config error: connection_pool_size: must be an integer > 0, got 0",
        ),
        (
            lambda d: d.update(scheduler_poll_wait_ms=-1),
            "config error: scheduler_poll_wait_ms: must be an integer in 0..2**64-1, got -1",
        ),
        (
            lambda d: d.update(scheduler_poll_wait_ms=1.5),
            "config error: scheduler_poll_wait_ms: must be an integer in 0..2**64-1, got 1.5",
        ),
        (
            lambda d: d.update(scheduler_poll_wait_ms=2**64),
            "config error: scheduler_poll_wait_ms: must be an integer in 0..2**64-1,"
            " got 18446744073709551616",
        ),
        (lambda d: d.pop("liveness"), "config error: liveness: missing required key"),
        (
            lambda d: d["liveness"].update(storage_heartbeat_interval_sec=0),
            "config error: liveness.storage_heartbeat_interval_sec: must be a number > 0, got 0",
        ),
        (
            lambda d: d["liveness"].update(scheduler_heartbeat_interval_sec="1"),
            "config error: liveness.scheduler_heartbeat_interval_sec: must be a number > 0,"
            " got '1'",
        ),
        (
            lambda d: d.update(liveness=[1]),
            "config error: liveness: must be a mapping of keys, got [1]",
        ),
        (
            lambda d: d["task_executor"].pop("package_dir"),
            "config error: task_executor.package_dir: missing required key",
        ),
        (
            lambda d: d["task_executor"].update(package_dir="/nonexistent/dir"),
            "config error: task_executor.package_dir: must be the path of an existing directory,"
            " got '/nonexistent/dir' (not a directory)",
        ),
        (
            lambda d: d["task_executor"].update(bin_path="/nonexistent/bin"),
            "config error: task_executor.bin_path: must be the path of an executable file,"
            " got '/nonexistent/bin' (not an executable file)",
        ),
        (
            lambda d: d["task_executor"].update(inherited_env="PATH"),
            "config error: task_executor.inherited_env: must be a list of environment variable"
            " names, got 'PATH'",
        ),
        (
            lambda d: d["task_executor"].update(max_log_line_bytes=0),
            "config error: task_executor.max_log_line_bytes: must be an integer > 0, got 0",
        ),
        (
            lambda d: d["task_executor"].update(kill_grace_ms=-5),
            "config error: task_executor.kill_grace_ms: must be an integer >= 0, got -5",
        ),
        (
            lambda d: d["task_executor"].update(protocol="spider"),
            'config error: task_executor.protocol: "spider" compatibility mode (Spider\'s'
            ' executor framing) is not implemented; use "worker" (the default)',
        ),
        (
            lambda d: d["task_executor"].update(protocol="grpc"),
            'config error: task_executor.protocol: must be "worker" (our executor channel),'
            " got 'grpc'",
        ),
        (
            lambda d: d["task_executor"].update(max_frame_bytes=4 * 1024 * 1024),
            "config error: task_executor.max_frame_bytes: must be at least grpc.max_send_bytes"
            " + 65536 (4259840), got 4194304",
        ),
        (
            lambda d: d["task_executor"].update(
                respawn_backoff_initial_ms=10, respawn_backoff_max_ms=5
            ),
            "config error: task_executor.respawn_backoff_max_ms: must be at least"
            " task_executor.respawn_backoff_initial_ms (10), got 5",
        ),
        (
            lambda d: d.update(ip_address="localhost"),
            "config error: ip_address: must be an IP address such as \"0.0.0.0\", got 'localhost'",
        ),
        (
            lambda d: d.update(shutdown={"drain_timeout_sec": -1}),
            "config error: shutdown.drain_timeout_sec: must be a number > 0, got -1",
        ),
        (
            lambda d: d.update(grpc={"rpc_timeout_sec": ".5"}),
            "config error: grpc.rpc_timeout_sec: must be a number > 0, got '.5'",
        ),
        (
            lambda d: d.update(grpc=None),
            "config error: grpc: must be a mapping of keys, got None",
        ),
        (
            lambda d: d.update(backoff={"initial_sec": 3, "max_sec": 2}),
            "config error: backoff.max_sec: must be at least backoff.initial_sec (3.0), got 2.0",
        ),
        (
            lambda d: d.update(log={"level": "verbose"}),
            'config error: log.level: must be one of "debug", "info", "warning", "error",'
            " got 'verbose'",
        ),
        (
            lambda d: d.update(log={"format": "text"}),
            'config error: log.format: must be one of "console", "json", got \'text\'',
        ),
    ],
)
def test_one_line_error_naming_the_key(minimal: dict[str, Any], edit: Any, expected: str) -> None:
    document = copy.deepcopy(minimal)
    edit(document)
    assert error_of(document) == expected


def test_unknown_keys_are_returned_not_fatal(minimal: dict[str, Any]) -> None:
    minimal["schedulr"] = {"host": "typo"}
    minimal["liveness"]["storage_heartbeat_interval"] = 1
    minimal["tracing"] = {"port": 9000}
    minimal["metrics"] = {"host": "127.0.0.1", "port": 0, "path": "/m"}
    loaded = parse_config(minimal, {})
    assert set(loaded.unknown_keys) == {
        "schedulr",
        "liveness.storage_heartbeat_interval",
        "tracing",
        "metrics.path",
    }


def test_environment_overrides_endpoints(minimal: dict[str, Any]) -> None:
    environ = {
        "WORKER_STORAGE_HOST": "10.1.1.1",
        "WORKER_STORAGE_PORT": "7001",
        "WORKER_SCHEDULER_HOST": "10.1.1.2",
        "WORKER_SCHEDULER_PORT": "7002",
    }
    loaded = parse_config(minimal, environ)
    assert loaded.config.storage.target == "10.1.1.1:7001"
    assert loaded.config.scheduler.target == "10.1.1.2:7002"
    assert loaded.environment_overrides == tuple(sorted(ENV_OVERRIDES))


def test_environment_can_supply_a_missing_endpoint(minimal: dict[str, Any]) -> None:
    del minimal["scheduler"]
    environ = {"WORKER_SCHEDULER_HOST": "h", "WORKER_SCHEDULER_PORT": "1"}
    assert parse_config(minimal, environ).config.scheduler.target == "h:1"


def test_bad_environment_override_names_the_variable(minimal: dict[str, Any]) -> None:
    assert error_of(minimal, {"WORKER_SCHEDULER_PORT": "http"}) == (
        "config error: scheduler.port (from WORKER_SCHEDULER_PORT): must be an integer in"
        " 1..65535, got 'http'"
    )


def test_file_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.yaml.*No such file"):
        load_config(tmp_path / "missing.yaml", {})
    broken = tmp_path / "broken.yaml"
    broken.write_text("storage: {host: [\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
        load_config(broken, {})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys, got 42"):
        load_config(scalar, {})


def test_every_key_is_documented_with_its_accepted_values() -> None:
    keys = collect_keys(WorkerConfig)
    names = [entry.key for entry in keys]
    assert len(names) == len(set(names))
    assert {"task_executor.max_frame_bytes", "log.format", "grpc.rpc_timeout_sec"} <= set(names)
    for entry in keys:
        assert entry.doc
        if not entry.is_block:
            # The accepted values come from the key's check, not from the bare Python type.
            assert entry.type_text.startswith(("a ", "an ", "one of", "the ", '"')), entry

    def walk(cls: type) -> None:
        for field in attrs.fields(cls):
            assert field.metadata.get("doc"), f"{cls.__name__}.{field.name} has no doc"
            members = [arg for arg in typing.get_args(field.type) if arg is not type(None)]
            block = members[0] if len(members) == 1 else field.type  # an optional block
            if isinstance(block, type) and attrs.has(block):
                walk(block)
            else:
                assert field.metadata.get("check"), f"{cls.__name__}.{field.name} has no check"

    walk(WorkerConfig)


def test_configuration_doc_lists_every_key_and_override() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for entry in collect_keys(WorkerConfig):
        assert f"`{entry.key}`" in doc, f"docs/configuration.md does not document {entry.key}"
    for variable in ENV_OVERRIDES:
        assert variable in doc


def test_metrics_block_is_optional_and_checked(minimal: dict[str, Any]) -> None:
    assert parse_config(minimal, {}).config.metrics is None
    minimal["metrics"] = {"host": "0.0.0.0", "port": 0}
    metrics = parse_config(minimal, {}).config.metrics
    assert metrics is not None
    assert (metrics.host, metrics.port, metrics.target) == ("0.0.0.0", 0, "0.0.0.0:0")
    minimal["metrics"] = {"host": "0.0.0.0", "port": 65536}
    with pytest.raises(
        ConfigError,
        match=r"^config error: metrics\.port: must be an integer in 0\.\.65535, got 65536$",
    ):
        parse_config(minimal, {})
    minimal["metrics"] = {"port": 9100}
    with pytest.raises(ConfigError, match=r"^config error: metrics\.host: missing required key$"):
        parse_config(minimal, {})


def test_slots_default_to_one_reach_the_pool_and_the_core_and_are_checked(
    minimal: dict[str, Any],
) -> None:
    config = parse_config(minimal, {}).config
    assert config.slots == 1
    assert (config.to_pool_settings().slots, config.to_runtime_settings().slots) == (1, 1)
    minimal["slots"] = 4
    config = parse_config(minimal, {}).config
    assert (config.to_pool_settings().slots, config.to_runtime_settings().slots) == (4, 4)
    minimal["slots"] = 0
    assert error_of(minimal).startswith("config error: slots: ")
