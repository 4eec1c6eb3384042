"""The tiered index alone: small partitions exact, large ones HNSW, answers the same either way."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from semcache_server.adapters.indexes.tiered import TieredIndex
from semcache_server.core.ports import Vectors


def entry_id(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()[:32]


def unit_rows(count: int, seed: int) -> Vectors:
    rows = np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32)
    normalised: Vectors = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


@pytest.mark.asyncio
async def test_a_partition_past_the_threshold_becomes_a_graph_with_the_same_answers() -> None:
    rows = unit_rows(600, seed=1)
    probes = rows[:50] + 0.05 * unit_rows(50, seed=2)
    index = TieredIndex(graph_rows=200)
    for number, row in enumerate(rows):
        index.add("big", entry_id(number), row)
        if number == 250:  # changes while the graph is being built
            index.remove(entry_id(7))
    index.add_many("small", [entry_id(1000), entry_id(1001)], unit_rows(2, seed=3))
    index.wait_for_promotions()

    expected = []
    for probe in probes:
        scores = rows @ probe
        scores[7] = -1.0
        expected.append(entry_id(int(np.argmax(scores))))
    found = [(await index.nearest("big", probe))[0].entry_id for probe in probes]

    assert index.graph_partitions() == ["big"]
    assert len(index) == 601 and entry_id(7) not in index
    assert found == expected
    assert [n.entry_id for n in await index.nearest("small", unit_rows(2, seed=3)[1])] == [
        entry_id(1001)
    ]


@pytest.mark.asyncio
async def test_a_saved_index_loads_with_the_same_entries_and_neighbours(tmp_path: Path) -> None:
    rows = unit_rows(300, seed=4)
    index = TieredIndex(graph_rows=100)
    index.add_many("graph", [entry_id(n) for n in range(200)], rows[:200])
    index.add_many("exact", [entry_id(n) for n in range(200, 250)], rows[200:250])
    index.remove(entry_id(3))
    index.save(tmp_path)

    loaded = TieredIndex.load(tmp_path, graph_rows=100)

    assert sorted(loaded.entries()) == sorted(index.entries())
    for probe in rows[250:]:
        for partition in ("graph", "exact"):
            assert loaded.nearest_now(partition, probe, 3) == index.nearest_now(partition, probe, 3)


def test_the_index_module_can_be_imported_before_the_embedder_runtime() -> None:
    """usearch imported before onnxruntime crashes the interpreter (a segfault in libstdc++)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import semcache_server.adapters.indexes.tiered, onnxruntime; print('ok')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_every_entry_of_a_small_graph_is_found() -> None:
    """Two threads inserting into a small usearch graph left ~1% of its entries unreachable."""
    missed = 0
    for seed in range(10):
        rows = unit_rows(180, seed=100 + seed)
        index = TieredIndex(graph_rows=100)
        index.add_many("p", [entry_id(n) for n in range(180)], rows)
        for number, row in enumerate(rows):
            found = index.nearest_now("p", row, 1)
            missed += found[0].entry_id != entry_id(number)
    assert missed == 0


def test_ids_that_share_an_index_key_keep_the_last_one() -> None:
    """A key is an id's first 64 bits: two ids alike there must not crash a batch."""
    rows = unit_rows(300, seed=7)
    first, second = "00000000000000001111111111111111", "00000000000000002222222222222222"
    ids = [entry_id(n) for n in range(298)] + [first, second]
    index = TieredIndex(graph_rows=100)
    index.add_many("p", ids, rows)

    found = index.nearest_now("p", rows[299], 1)
    assert found[0].entry_id == second and len(index.nearest_now("p", rows[0], 1)) == 1
