"""The generated configuration reference: the generator, and the committed block's freshness."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

import attrs
import pytest

from worker.config_reference import (
    BEGIN_MARKER,
    END_MARKER,
    MissingDocError,
    collect_keys,
    load_root,
    main,
    render_table,
    replace_block,
)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"


class Colour(enum.Enum):
    """A sample enum."""

    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Checked:
    """A stand-in validator: only its description matters to the reference."""

    description: str


@attrs.frozen
class Inner:
    """A nested sample block."""

    host: str = attrs.field(metadata={"doc": "Host name."})
    port: int = attrs.field(default=80, metadata={"doc": "TCP  port,\n 1..65535."})


@attrs.frozen
class Sample:
    """A sample root."""

    server: Inner = attrs.field(metadata={"doc": "Where to connect."})
    names: list[str] = attrs.field(factory=list, metadata={"doc": "Names | pipes escaped."})
    ratio: float = attrs.field(default=0.5, metadata={"doc": "A number."})
    mode: Literal["console", "json"] | None = attrs.field(
        default=None, metadata={"doc": "Format.", "default_doc": "console on a tty, else json"}
    )
    colour: Colour = attrs.field(default=Colour.RED, metadata={"doc": "Colour.", "key": "color"})
    extra: Inner | None = attrs.field(default=None, metadata={"doc": "Optional block."})
    path: Path = attrs.field(default=Path("/tmp/x"), metadata={"doc": "A path."})
    level: str = attrs.field(
        default="info", metadata={"doc": "Level.", "check": Checked("one of debug, info")}
    )


def test_keys_are_walked_generically_and_in_order() -> None:
    keys = collect_keys(Sample)
    assert [k.key for k in keys] == [
        "server",
        "server.host",
        "server.port",
        "names",
        "ratio",
        "mode",
        "color",
        "extra",
        "extra.host",
        "extra.port",
        "path",
        "level",
    ]
    by_key = {k.key: k for k in keys}
    assert by_key["server"].is_block
    assert by_key["server"].required
    assert by_key["server.host"].default_text == "required"
    assert by_key["server.port"].default_text == "80"
    assert by_key["server.port"].doc == "TCP port, 1..65535."
    assert by_key["names"].type_text == "list of str"
    assert by_key["names"].default_text == "[]"
    assert by_key["ratio"].type_text == "number"
    assert by_key["mode"].type_text == '"console" | "json" or null'
    assert by_key["mode"].default_text == "console on a tty, else json"
    assert by_key["color"].type_text == '"red" | "blue"'
    assert by_key["color"].default_text == '"red"'
    assert by_key["extra"].default_text == "unset"
    assert by_key["path"].type_text == "path"
    assert by_key["level"].type_text == "one of debug, info"
    assert by_key["level"].default_text == '"info"'


def test_table_marks_origin_and_escapes_pipes() -> None:
    table = render_table(collect_keys(Sample), spider_keys=frozenset({"server.host"}))
    lines = table.splitlines()
    assert lines[0].startswith("| Key | Accepts | Default | Origin |")
    assert "| `server.host` | str | required | Spider | Host name. |" in lines
    assert any(
        line.startswith("| `names` |") and "Names \\| pipes escaped." in line for line in lines
    )
    assert all(line.count("|") - line.count("\\|") == 6 for line in lines)


def test_a_field_without_doc_is_an_error() -> None:
    @attrs.frozen
    class Undocumented:
        """No doc on the field."""

        value: int = 1

    with pytest.raises(MissingDocError, match=r"Undocumented\.value"):
        collect_keys(Undocumented)


def test_replace_block_rewrites_only_between_the_markers() -> None:
    page = f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n"
    assert replace_block(page, "new") == f"intro\n{BEGIN_MARKER}\nnew\n{END_MARKER}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", "new")


def test_command_writes_then_checks(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text(f"# Config\n\n{BEGIN_MARKER}\n{END_MARKER}\n", encoding="utf-8")
    root = f"{__name__}:Sample"
    assert main(["--page", str(page), "--root", root, "--check"]) == 1
    assert main(["--page", str(page), "--root", root]) == 0
    assert main(["--page", str(page), "--root", root, "--check"]) == 0
    assert "| `server.port` | int | 80 |" in page.read_text(encoding="utf-8")


def test_committed_reference_matches_the_config_classes() -> None:
    page = PAGE.read_text(encoding="utf-8")
    expected = replace_block(page, render_table(collect_keys(load_root())))
    assert page == expected, (
        "docs/configuration.md is stale: run `python -m worker.config_reference`"
    )


def test_every_key_of_the_specified_file_is_documented() -> None:
    # protocol.md section 9.1: these keys must exist (Spider's, and our extension blocks).
    keys = {entry.key for entry in collect_keys(load_root())}
    for key in (
        "storage.host",
        "storage.port",
        "scheduler.host",
        "scheduler.port",
        "connection_pool_size",
        "scheduler_poll_wait_ms",
        "liveness.storage_heartbeat_interval_sec",
        "liveness.scheduler_heartbeat_interval_sec",
        "task_executor.package_dir",
        "task_executor.bin_path",
        "task_executor.max_log_line_bytes",
        "task_executor.inherited_env",
        "ip_address",
        "shutdown.drain_timeout_sec",
        "shutdown.rpc_budget_sec",
        "grpc.rpc_timeout_sec",
        "grpc.max_send_bytes",
        "grpc.max_receive_bytes",
        "backoff.initial_sec",
        "backoff.max_sec",
        "log.format",
        "log.level",
    ):
        assert key in keys, key
