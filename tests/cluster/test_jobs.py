"""Job files, the builder API, validation messages and the submission encoding."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zstandard

from worker.cluster.jobs import (
    JobBuilder,
    JobError,
    Literal,
    Ref,
    TaskTimeouts,
    decode_job,
    encode_job,
    load_job_file,
    parse_job,
    ref,
)
from worker.examples import FIBONACCI_JOB


def test_bundled_example_loads_as_a_fan_out_with_a_commit() -> None:
    job = load_job_file(FIBONACCI_JOB)
    assert len(job.tasks) == 17
    assert job.tasks[-1].name == "total"
    assert job.sink_indices == [16]
    assert job.commit is not None
    assert job.package_dir == FIBONACCI_JOB.parent


def test_tasks_are_ordered_parents_first_whatever_the_declaration_order() -> None:
    job = parse_job(
        {
            "tasks": [
                {"name": "sink", "module": "m", "function": "f", "inputs": [{"ref": "a"}]},
                {"name": "a", "module": "m", "function": "f", "inputs": [1]},
            ]
        }
    )
    assert [t.name for t in job.tasks] == ["a", "sink"]
    assert job.tasks[1].inputs == (Ref("a", 0),)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tasks": []}, "tasks: a job needs at least one task"),
        ({"tasks": [{"name": "a", "function": "f"}]}, "task 'a': module: required"),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f", "inputs": [{"ref": "zz"}]}]},
            "task 'a': inputs[0]: unknown task 'zz'",
        ),
        (
            {
                "tasks": [
                    {"name": "a", "module": "m", "function": "f", "outputs": 1},
                    {
                        "name": "b",
                        "module": "m",
                        "function": "f",
                        "inputs": [{"ref": "a", "output": 1}],
                    },
                ]
            },
            "task 'b': inputs[0]: task 'a' has 1 output(s), no output 1",
        ),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f", "retries": -1}]},
            "task 'a': retries: must be an integer >= 0",
        ),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f", "max_instances": 0}]},
            "task 'a': max_instances: must be an integer >= 1",
        ),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f", "timeout": {"soft_ms": 50}}]},
            "task 'a': timeout.soft_ms: must be an integer in 100..86400000",
        ),
        (
            {
                "tasks": [
                    {
                        "name": "a",
                        "module": "m",
                        "function": "f",
                        "timeout": {"soft_ms": 500, "hard_ms": 500},
                    }
                ]
            },
            "task 'a': timeout.hard_ms: must exceed soft_ms",
        ),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f.g"}]},
            "task 'a': function: 'f.g' is not a valid Python name",
        ),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f", "colour": 1}]},
            "task 'a': colour: unknown key",
        ),
        (
            {
                "tasks": [
                    {"name": "a", "module": "m", "function": "f", "inputs": [{"ref": "b"}]},
                    {"name": "b", "module": "m", "function": "f", "inputs": [{"ref": "a"}]},
                ]
            },
            "tasks: dependency cycle",
        ),
        (
            {"tasks": [{"name": "a", "module": "m", "function": "f"}], "commit": {"module": "m"}},
            "commit: function: required",
        ),
    ],
)
def test_validation_errors_name_the_task_and_the_field(document: object, message: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job(document)
    assert message in str(caught.value)


def test_job_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [", encoding="utf-8")
    with pytest.raises(JobError, match=r"bad\.yaml: not valid YAML"):
        load_job_file(path)


def test_builder_and_yaml_build_the_same_job(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j\n"
        "tasks:\n"
        "  - {name: a, module: m, function: f, inputs: [1, {value: {k: v}}], outputs: 2}\n"
        "  - {name: b, module: m, function: g, inputs: [{ref: a, output: 1}], retries: 2,\n"
        "     timeout: {soft_ms: 1000, hard_ms: 2000}}\n"
        "commit: {module: m, function: c}\n",
        encoding="utf-8",
    )
    built = (
        JobBuilder("j", package_dir=tmp_path)
        .task("a", "m", "f", [1, {"k": "v"}], outputs=2)
        .task("b", "m", "g", [ref("a", 1)], retries=2, timeout=TaskTimeouts(1000, 2000))
        .with_commit("m", "c")
        .build()
    )
    assert load_job_file(path) == built


def test_submission_encoding_round_trips_and_is_zstd_msgpack() -> None:
    job = (
        JobBuilder("enc")
        .task("a", "m", "f", [1, "two", b"3"])
        .task("b", "m", "f", [ref("a"), None], outputs=0, max_instances=2)
        .with_cleanup("m", "clean", retries=1)
        .build()
    )
    graph, inputs = encode_job(job)
    document = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(graph))
    assert document["version"] == 1
    assert document["tasks"][1]["inputs"] == [["parent", 0, 0], ["literal", 3]]
    assert decode_job(graph, inputs) == job


@pytest.mark.parametrize(
    ("graph", "inputs"),
    [(b"not zstd", b""), (zstandard.ZstdCompressor().compress(b"\xc1"), b"")],
)
def test_malformed_submissions_raise_job_error(graph: bytes, inputs: bytes) -> None:
    with pytest.raises(JobError):
        decode_job(graph, inputs)


def test_literal_keeps_one_msgpack_value() -> None:
    assert Literal.of(10).payload == b"\x0a"
    assert Literal.of(10).value == 10


def test_repository_examples_load() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "examples").glob("*.yaml")):
        job = load_job_file(path)
        assert job.package_dir == FIBONACCI_JOB.parent, path
