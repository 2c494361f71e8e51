"""worker.api: the task decorator, the job builder and its mapping onto the YAML job model."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from worker.api import Job, JobFailedError, TaskOptions, options_of, task
from worker.cluster.jobs import JobError, Literal, Ref, TaskTimeouts, parse_job
from worker.cluster.retry_backoff import RetryBackoff

ROOT = Path(__file__).resolve().parent.parent


@task(outputs=2, retries=3, retry_delay_ms=100, retry_backoff=3, timeout_ms=5000)
def split(x: int) -> tuple[int, int]:
    return x // 2, x % 2


@task
def add(a: int, b: int) -> int:
    return a + b


def plain(x: int) -> int:
    return x


def test_the_decorator_keeps_the_function_and_attaches_its_options() -> None:
    assert split(5) == (2, 1)
    assert options_of(split) == TaskOptions(
        outputs=2, retries=3, retry_delay_ms=100, retry_backoff=3, timeout_ms=5000
    )
    assert options_of(add) == TaskOptions()
    assert options_of(plain) == TaskOptions()


def test_a_python_job_builds_the_same_model_as_its_yaml_twin() -> None:
    job = Job("twin")
    halves = job.map(split, [10, 11])
    job.add(add, halves[0][0], halves[1][1], name="sum")
    built = job.build()
    yaml_twin = parse_job(
        {
            "name": "twin",
            "package_dir": str(ROOT),
            "tasks": [
                {
                    "name": f"split[{i}]",
                    "module": "tests.test_api",
                    "function": "split",
                    "inputs": [value],
                    "outputs": 2,
                    "retries": 3,
                    "timeout": {"hard_ms": 5000},
                    "retry_backoff": {"initial_ms": 100, "factor": 3},
                }
                for i, value in enumerate([10, 11])
            ]
            + [
                {
                    "name": "sum",
                    "module": "tests.test_api",
                    "function": "add",
                    "inputs": [{"ref": "split[0]"}, {"ref": "split[1]", "output": 1}],
                }
            ],
        }
    )
    assert built == yaml_twin
    assert built.package_dir == ROOT
    assert built.tasks[0].timeout == TaskTimeouts(soft_ms=4999, hard_ms=5000)
    assert built.tasks[0].backoff == RetryBackoff(100, 3, 60_000)
    assert built.tasks[2].inputs == (Ref("split[0]", 0), Ref("split[1]", 1))


def test_names_default_to_the_function_and_stay_unique() -> None:
    job = Job()
    first, second = job.add(add, 1, 2), job.add(add, 3, 4)
    assert (first.name, second.name) == ("add", "add_2")
    with pytest.raises(ValueError, match="'add': name: declared twice"):
        job.add(add, 1, 2, name="add")
    assert job.build().tasks[0].inputs == (Literal.of(1), Literal.of(2))


def test_map_zips_several_iterables_and_rejects_uneven_ones() -> None:
    job = Job()
    assert [h.name for h in job.map(add, [1, 2], [3, 4])] == ["add[0]", "add[1]"]
    with pytest.raises(ValueError, match="shorter"):
        job.map(add, [1, 2], [3], name="other")


def test_output_index_out_of_range_is_refused() -> None:
    handle = Job().add(split, 4)
    with pytest.raises(IndexError, match="has 2 output"):
        handle[2]


def test_only_module_level_functions_are_tasks() -> None:
    def nested(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="module-level function"):
        Job().add(nested, 1)


def test_tasks_from_two_folders_need_an_explicit_package_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "far_tasks.py").write_text("def far(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    far_tasks = importlib.import_module("far_tasks")
    job = Job("mixed")
    job.add(add, 1, 2)
    job.add(far_tasks.far, 3)
    with pytest.raises(JobError, match="several folders"):
        job.build()
    job.package_dir = ROOT
    assert job.build().package_dir == ROOT


@pytest.mark.cluster
@pytest.mark.slow
def test_run_local_returns_the_outputs_and_raises_naming_the_failed_task(tmp_path: Path) -> None:
    (tmp_path / "arith.py").write_text(
        "def double(x):\n    return 2 * x\n\n\ndef total(*xs):\n    return sum(xs)\n\n\n"
        "def broken(x):\n    raise KeyError(x)\n"
    )
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "import arith\n"
        "from worker.api import Job, JobFailedError, run_local\n"
        "job = Job('sum')\n"
        "job.add(arith.total, *job.map(arith.double, range(10)))\n"
        "print(run_local(job, workers=2, quiet=True))\n"
        "bad = Job('bad')\n"
        "bad.map(arith.broken, ['k'])\n"
        "try:\n"
        "    run_local(bad, workers=1, quiet=True)\n"
        "except JobFailedError as failure:\n"
        "    print('FAILED', failure.failed_tasks, failure.state, str(failure).splitlines()[1])\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[90]" in done.stdout
    assert (
        "FAILED ['broken[0]'] FAILED task 'broken[0]' failed: in-task failure: KeyError: 'k'"
        in done.stdout
    )
    assert JobFailedError.__mro__[1] is RuntimeError


def test_importing_the_api_loads_none_of_the_workers_dependencies() -> None:
    # Task modules import worker.api inside executors, which must stay lean.
    probe = (
        "import sys, worker.api; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'trio', 'attrs', 'cattrs', 'grpc', 'msgpack', 'yaml', 'rich', 'zstandard'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
