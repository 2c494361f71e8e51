"""The committed stubs are exactly what the .proto files generate, and import in-package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.transport.codegen import GENERATED_DIR, generate


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """What the .proto files generate (protoc runs once for the module)."""
    return generate()


def test_committed_stubs_match_the_protos(expected: dict[str, str]) -> None:
    committed = {
        path.relative_to(GENERATED_DIR).as_posix(): path.read_text()
        for path in GENERATED_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert sorted(committed) == sorted(expected), "run `just protos` to regenerate"
    stale = [name for name, text in expected.items() if committed[name] != text]
    assert not stale, f"stale generated files (run `just protos`): {stale}"


def test_generated_modules_never_need_a_top_level_proto_package(expected: dict[str, str]) -> None:
    for name, text in expected.items():
        for line in text.splitlines():
            assert not line.startswith(
                ("from admin ", "from common ", "from scheduler ", "from storage ")
            ), f"{name}: {line}"
    # In a fresh interpreter, importing every stub defines each proto file once and creates no
    # top-level `common`/`scheduler`/`storage` module.
    script = (
        "import sys\n"
        "from worker.transport._generated.common import common_pb2, common_pb2_grpc\n"
        "from worker.transport._generated.scheduler import scheduler_pb2, scheduler_pb2_grpc\n"
        "from worker.transport._generated.storage import storage_pb2, storage_pb2_grpc\n"
        "from worker.transport._generated.admin import admin_pb2, admin_pb2_grpc\n"
        "assert not {'admin', 'common', 'scheduler', 'storage'} & set(sys.modules), sys.modules\n"
        "assert scheduler_pb2.SchedulerAssignment.DESCRIPTOR.fields_by_name['task_id']"
        ".message_type is common_pb2.TaskId.DESCRIPTOR\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
