"""compose.yaml pins the Ollama image, and compose.gpu.yaml, an optional file on top of it,
reserves the host's NVIDIA GPUs for Ollama and for nothing else."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_compose import compose_v2

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
GPU = ROOT / "compose.gpu.yaml"


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_ollama_image_is_a_pinned_release() -> None:
    image = load(COMPOSE)["services"]["ollama"]["image"]
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", image), image


def test_the_gpu_file_reserves_nvidia_gpus_for_ollama_only() -> None:
    services = load(GPU)["services"]
    assert set(services) == {"ollama"}
    (device,) = services["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device.get("count") == "all" or device.get("device_ids")
    assert set(services["ollama"]) == {"deploy"}, "the GPU file changes nothing else"
    assert "ollama" in load(COMPOSE)["services"]


def test_docker_compose_accepts_both_files_together(tmp_path: Path) -> None:
    command = compose_v2()
    if command is None:
        pytest.skip("Compose v2 is not installed (docker compose or docker-compose v2)")
    done = subprocess.run(
        [*command, "--file", str(COMPOSE), "--file", str(GPU), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
