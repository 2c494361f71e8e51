"""What a user of ``local`` and ``worker.api.run_local`` sees: failed tasks named with their
traceback tail, task output echoed by task name, logs kept on failure, the preflight check,
``--env`` and a relative ``--workdir``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from worker.cluster.processes import worker_environment

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent.parent

TASKS = """
import os


def shout(word):
    print(f"saying {word}")
    print(f"SECRET_FOR_TASK={os.environ.get('SECRET_FOR_TASK')}", file=__import__("sys").stderr)
    return word.upper()


def pair(a, b):
    return [a, b]
"""


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=240,
        env={**worker_environment(), **(env or {})},
        cwd=cwd,
        check=False,
    )


def _local(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "worker", "local", *args], cwd, env)


def _project(tmp_path: Path, tasks: list[dict[str, object]], package_dir: str = "tasks") -> Path:
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "tasks" / "words.py").write_text(TASKS, encoding="utf-8")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "words", "package_dir": package_dir, "tasks": tasks}))
    return job


def test_the_fanout_example_names_its_failed_task_with_the_traceback_tail(tmp_path: Path) -> None:
    example = ROOT / "examples" / "fanout.py"
    assert len(example.read_text().splitlines()) <= 15
    done = _run([sys.executable, str(example)], tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert (
        "task 'inverse[42]' failed after 2 attempts: in-task failure: ZeroDivisionError: "
        "division by zero" in done.stdout
    )
    assert "return 1 / (x - 42)" in done.stdout
    assert "child.py" not in done.stdout  # the executor's own frame is left out
    assert "JobFailedError: job 1 FAILED" in done.stderr
    assert re.search(r"tasks failed +│ 1 ", done.stdout), done.stdout
    kept = [line for line in done.stdout.splitlines() if "worker logs" in line]
    assert len(kept) == 1, done.stdout
    folder = Path(kept[0].split("│")[2].strip())
    assert sorted(p.name for p in folder.glob("worker-*.log")) == [
        f"worker-{n}.log" for n in range(1, 5)
    ]


def test_task_output_is_echoed_by_task_name_and_env_names_reach_executors(
    tmp_path: Path,
) -> None:
    job = _project(
        tmp_path,
        [
            {"name": "hello", "module": "words", "function": "shout", "inputs": ["hi"]},
            {
                "name": "both",
                "module": "words",
                "function": "pair",
                "inputs": [{"ref": "hello"}, 1],
            },
        ],
    )
    env = {"SECRET_FOR_TASK": "given"}
    done = _local(
        [
            str(job),
            "--workers",
            "1",
            "--no-progress",
            "--workdir",
            "wd",
            "--env",
            "SECRET_FOR_TASK",
            "--report",
            "out/run.html",
        ],
        tmp_path,
        env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = (tmp_path / "out" / "run.html").read_text(encoding="utf-8")
    assert f"report: {tmp_path / 'out' / 'run.html'}" in done.stdout
    assert report.count('<g class="node succeeded">') == 2
    assert report.count('class="bar succeeded"') == 2
    assert "worker 1 · slot 1" in report
    assert "[hello] saying hi" in done.stderr
    assert "[hello] SECRET_FOR_TASK=given" in done.stderr
    assert "['HI', 1]" in done.stdout
    # A relative --workdir is relative to where local was started, and is kept.
    assert (tmp_path / "wd" / "worker-1.log").is_file()
    quiet = _local([str(job), "--workers", "1", "--no-progress", "--quiet"], tmp_path, env)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "[hello]" not in quiet.stderr
    assert "SECRET_FOR_TASK=None" not in done.stderr
    assert "worker logs" not in quiet.stdout  # a temporary folder, removed after a success


@pytest.mark.parametrize(
    ("tasks", "package_dir", "expected"),
    [
        (
            [{"name": "a", "module": "words", "function": "shout", "inputs": [1]}],
            "nowhere",
            "package_dir '{tmp}/nowhere' does not exist",
        ),
        (
            [{"name": "a", "module": "wrods", "function": "shout", "inputs": [1]}],
            "tasks",
            "task 'a': module 'wrods' does not import: ModuleNotFoundError",
        ),
        (
            [{"name": "a", "module": "words", "function": "shuot", "inputs": [1]}],
            "tasks",
            "task 'a': module 'words' has no function 'shuot'",
        ),
        (
            [{"name": "a", "module": "words", "function": "pair", "inputs": [1]}],
            "tasks",
            "task 'a': words.pair(a, b) cannot take 1 input(s)",
        ),
    ],
)
def test_preflight_names_each_problem_in_one_line_and_starts_nothing(
    tmp_path: Path, tasks: list[dict[str, object]], package_dir: str, expected: str
) -> None:
    job = _project(tmp_path, tasks, package_dir)
    done = _local([str(job), "--workdir", "wd"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("local: " + expected.format(tmp=tmp_path)), lines
    assert not (tmp_path / "wd").exists()


def test_preflight_imports_with_only_the_executors_environment(tmp_path: Path) -> None:
    job = _project(tmp_path, [{"name": "a", "module": "needs_env", "function": "f"}])
    (tmp_path / "tasks" / "needs_env.py").write_text(
        "import os\nTOKEN = os.environ['TASK_TOKEN']\n\ndef f():\n    return TOKEN\n"
    )
    env = {"TASK_TOKEN": "t0k"}
    refused = _local([str(job)], tmp_path, env)
    assert refused.returncode == 2
    assert "module 'needs_env' does not import: KeyError: 'TASK_TOKEN'" in refused.stderr
    passed = _local([str(job), "--env", "TASK_TOKEN", "--no-progress"], tmp_path, env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "'t0k'" in passed.stdout
