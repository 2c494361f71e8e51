"""The command line of ``python -m worker`` / ``spider-worker``: grammar, help, version, exit
codes, closed pipes and the log level's precedence (flag, then ``WORKER_LOG_LEVEL``, then the
config file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import grpc
import pytest

from tests.test_service import LIVENESS, ROOT, run_cli, servers, write_config
from tests.transport.scripted import ScriptedServer
from worker import cli, logging_setup
from worker.command_line import LOG_LEVEL_CHOICES, invoked_prog
from worker.config import LogConfig
from worker.logging_setup import LogLevelError, resolve_level

__all__ = ["servers"]  # the fixture, imported for the worker tests below

#: Modules whose import makes ``--help`` slow; none may load for the top-level fast paths.
HEAVY = ("trio", "grpc", "rich", "attrs", "cattrs", "worker.service", "worker.cluster")


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


# --- grammar and exit codes -------------------------------------------------------------------


def test_version_names_the_distribution_and_its_installed_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"spider-worker {metadata.version('spider-worker')}\n"
    assert done.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["--bogus"], []])
def test_top_level_fast_paths_import_no_heavy_module(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 2), done.stderr
    loaded = imported_modules(done.stderr)
    assert "worker.cli" in loaded
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY))
    assert heavy == []


def test_an_unknown_option_is_named_on_stderr_with_exit_2() -> None:
    done = run_cli("--bogus")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("usage: python -m worker ")
    assert done.stderr.endswith("python -m worker: error: unrecognized arguments: --bogus\n")
    assert "required" not in done.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
        (["--log-level", "loud", "jobs"], "argument --log-level: invalid choice: 'loud'"),
        (["-c", "worker.yaml", "jobs"], "--config runs a worker; it does not go with"),
        (["--log-level", "debug"], "give -c/--config FILE to run a worker, or a COMMAND"),
        (["--config"], "argument -c/--config: expected one argument"),
    ],
)
def test_usage_errors_are_on_stderr_with_exit_2(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: {error}" in captured.err.splitlines()[-1]


def test_no_arguments_prints_the_help_on_stderr_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: ")
    assert "commands:" in captured.err


@pytest.mark.parametrize("argv0", ["/usr/local/bin/spider-worker", "/x/worker/__main__.py"])
@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_names_the_program_as_invoked_and_has_an_example(
    command: str, argv0: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [argv0, command, "--help"])
    program = "spider-worker" if argv0.endswith("spider-worker") else "python -m worker"
    assert cli.main() == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {program} {command} [-h] [--log-level ")
    example = text.split("\nexample", 1)[1].splitlines()
    assert example[1].startswith(f"  {program} {command}")
    assert "\nexit codes: " in text


def test_the_top_level_help_lists_every_command_with_examples(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["/opt/bin/spider-worker", "--help"])
    assert cli.main() == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: spider-worker [-h] [--version] [--log-level LEVEL]")
    for command, (_, summary) in cli.COMMANDS.items():
        assert f"\n  {command.ljust(22)}{summary}\n" in text
    assert "  spider-worker --config worker.yaml\n" in text


def test_the_console_script_name_reaches_the_usage_line(tmp_path: Path) -> None:
    script = tmp_path / "spider-worker"
    script.write_text("import sys\nfrom worker.cli import main\nsys.exit(main())\n")
    done = subprocess.run(
        [sys.executable, str(script), "submit", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("usage: spider-worker submit [-h]")
    assert done.stderr.splitlines()[-1].startswith("spider-worker submit: error: ")


@pytest.mark.parametrize(
    ("argv0", "program"),
    [
        ("/home/u/.local/bin/spider-worker", "spider-worker"),
        ("/usr/lib/python3/site-packages/worker/__main__.py", "python -m worker"),
        ("", "python -m worker"),
        ("-c", "python -m worker"),
    ],
)
def test_invoked_prog(argv0: str, program: str) -> None:
    assert invoked_prog(argv0) == program


def test_top_level_options_before_a_command_reach_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def command(argv: list[str]) -> int:
        seen.append(list(argv))
        return 0

    def load(target: str) -> object:
        assert target == cli.COMMANDS["jobs"][0]
        return command

    monkeypatch.setattr(cli, "_load", load)
    assert cli.main(["--log-level", "debug", "jobs", "--json", "--log-level", "error"]) == 0
    assert seen == [["--log-level", "debug", "--json", "--log-level", "error"]]


# --- a closed pipe ----------------------------------------------------------------------------


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is already gone: every write fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    ("args", "codes"),
    [
        # argparse drops a failed write of its help itself (and exits 0), or the final flush
        # finds the pipe closed: either way nothing on stderr.
        (["--help"], {0, cli.EXIT_BROKEN_PIPE}),
        (["local", "--help"], {0, cli.EXIT_BROKEN_PIPE}),
        (["--version"], {cli.EXIT_BROKEN_PIPE}),
    ],
)
def test_a_closed_pipe_ends_quietly(args: list[str], codes: set[int]) -> None:
    done = run_into_closed_pipe(*args)
    assert done.stderr == ""
    assert done.returncode in codes


# --- the log level ----------------------------------------------------------------------------


def test_log_level_choices_agree_everywhere() -> None:
    assert set(LOG_LEVEL_CHOICES) == set(logging_setup._LEVELS)
    for level in LOG_LEVEL_CHOICES:
        LogConfig(level=level)  # every choice is a valid config value


@pytest.mark.parametrize(
    ("flag", "variable", "configured", "expected"),
    [
        ("error", "debug", "warning", "error"),
        (None, "debug", "warning", "debug"),
        (None, " WARNING ", "debug", "warning"),
        (None, "", "warning", "warning"),
        (None, None, "warning", "warning"),
        (None, None, "info", "info"),
    ],
)
def test_resolve_level_prefers_the_flag_then_the_variable_then_the_config(
    flag: str | None, variable: str | None, configured: str, expected: str
) -> None:
    environ = {} if variable is None else {"WORKER_LOG_LEVEL": variable}
    assert resolve_level(flag, configured, environ) == expected


def test_resolve_level_names_a_bad_variable() -> None:
    with pytest.raises(LogLevelError, match=r"^WORKER_LOG_LEVEL: must be one of .*'loud'$"):
        resolve_level(None, "info", {"WORKER_LOG_LEVEL": "loud"})
    assert resolve_level("info", "info", {"WORKER_LOG_LEVEL": "loud"}) == "info"


@pytest.fixture
def refusing_storage(
    servers: tuple[ScriptedServer, ScriptedServer],
) -> tuple[ScriptedServer, ScriptedServer]:
    """Scripted servers whose storage refuses registration: the worker boots and exits 1."""
    storage, _ = servers
    storage.on(
        LIVENESS + "RegisterExecutionManager",
        lambda _request, context: context.abort(grpc.StatusCode.UNAVAILABLE, "down"),
    )
    return servers


def worker_log_levels(
    config: Path, *flag: str, variable: str | None = None
) -> tuple[int, set[str]]:
    env = {k: v for k, v in os.environ.items() if k != "WORKER_LOG_LEVEL"}
    if variable is not None:
        env["WORKER_LOG_LEVEL"] = variable
    done = run_cli(*flag, "-c", str(config), env=env)
    levels = {json.loads(line)["level"] for line in done.stderr.splitlines()}
    return done.returncode, levels


@pytest.mark.pool
@pytest.mark.slow
def test_worker_log_level_flag_beats_variable_beats_config(
    refusing_storage: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    storage, scheduler = refusing_storage
    config = write_config(
        tmp_path, storage.port, scheduler.port, log={"format": "json", "level": "warning"}
    )
    code, levels = worker_log_levels(config)
    assert code == 1
    assert levels == {"error"}  # the config's warning: no info or debug line
    code, levels = worker_log_levels(config, variable="debug")
    assert code == 1
    assert {"debug", "info", "error"} <= levels
    code, levels = worker_log_levels(config, "--log-level", "warning", variable="debug")
    assert code == 1
    assert levels == {"error"}
    code, levels = worker_log_levels(config, "--log-level", "info", variable="error")
    assert code == 1
    assert "info" in levels
    assert "debug" not in levels


def test_worker_rejects_a_bad_variable_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 1)
    done = run_cli("-c", str(config), env={**os.environ, "WORKER_LOG_LEVEL": "chatty"})
    assert done.returncode == 2
    assert done.stderr == (
        "python -m worker: WORKER_LOG_LEVEL: must be one of debug, info, warning, error,"
        " got 'chatty'\n"
    )
