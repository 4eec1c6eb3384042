"""The onnxruntime MiniLM embedder reproduces sentence-transformers and is batch-invariant."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors import safe_open
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.embedders.minilm_onnx import (
    MiniLMOnnxModel,
    build_minilm_graph,
    default_model_dir,
)

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"
DIMENSIONS = 384


@pytest.fixture(scope="module")
def model() -> MiniLMOnnxModel:
    return MiniLMOnnxModel.load(threads=1)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = np.einsum("ij,ij->i", a64, b64)
    result: npt.NDArray[np.float64] = dots / (
        np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    )
    return result


def test_matches_sentence_transformers(model: MiniLMOnnxModel, reference: dict[str, Any]) -> None:
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    got = model.encode(reference["sentences"])
    cosines = _cosines(got, expected)
    worst = int(np.argmin(cosines))
    print(f"min cosine vs sentence-transformers: 1 - {1 - cosines[worst]:.1e}")
    assert cosines[worst] >= 0.999, reference["sentences"][worst]


def test_fixture_exercises_truncation(reference: dict[str, Any]) -> None:
    # Guards the fixture itself: without inputs past 128 and 256 tokens, truncating at the
    # tokenizer.json's 128 instead of sentence-transformers' 256 would go unseen.
    assert max(reference["token_counts"]) == 256
    assert any(128 < n < 256 for n in reference["token_counts"])


def test_batch_equals_one_by_one(model: MiniLMOnnxModel, reference: dict[str, Any]) -> None:
    sentences: list[str] = reference["sentences"]
    batched = model.encode(sentences)
    single = np.stack([model.encode([s])[0] for s in sentences])
    assert _cosines(batched, single).min() >= 0.99999


def test_rows_are_unit_float32(model: MiniLMOnnxModel, reference: dict[str, Any]) -> None:
    got = model.encode(reference["sentences"][:5])
    assert got.dtype == np.float32
    assert got.shape == (5, DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert model.dimensions == DIMENSIONS
    assert model.model_name == "sentence-transformers/all-MiniLM-L6-v2"


def test_standalone_graph_matches_loaded_model(model: MiniLMOnnxModel) -> None:
    # build_minilm_graph inlines the weights that load() hands to onnxruntime separately.
    session = ort.InferenceSession(
        build_minilm_graph(default_model_dir()), providers=["CPUExecutionProvider"]
    )
    input_ids = np.array([[101, 7592, 2088, 102, 0], [101, 2129, 2024, 2017, 102]], np.int64)
    attention_mask = (input_ids != 0).astype(np.int64)
    (got,) = session.run(
        ["sentence_embedding"], {"input_ids": input_ids, "attention_mask": attention_mask}
    )
    expected = model.encode(["hello world", "how are you"])
    assert _cosines(got, expected).min() >= 0.99999


def test_default_model_is_the_packaged_float16_copy(model: MiniLMOnnxModel) -> None:
    # The server needs no other distribution: weights, tokenizer, configs and licence ship in
    # the package, the weights halved to float16 (load() upcasts them; the model fixture loaded
    # them and test_matches_sentence_transformers checked the result).
    directory = default_model_dir()
    shipped = {path.name for path in directory.iterdir()}
    assert {
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "NOTICE.md",
        "LICENSE",
    } <= shipped
    with safe_open(str(directory / "model.safetensors"), framework="np") as weights:
        # safe_open has keys() but is not iterable, hence the noqa.
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"F16", "I64"}  # I64: position_ids, unused by the graph
    assert model.dimensions == DIMENSIONS


def test_empty_input_gives_empty_matrix(model: MiniLMOnnxModel) -> None:
    got = model.encode([])
    assert got.shape == (0, DIMENSIONS)
    assert got.dtype == np.float32


@pytest.mark.asyncio
async def test_local_embedder_embeds_off_loop(
    model: MiniLMOnnxModel, reference: dict[str, Any]
) -> None:
    embedder = LocalEmbedder(model)
    sentences: list[str] = reference["sentences"][:3]
    try:
        got = (await embedder.embed(sentences)).vectors
    finally:
        await embedder.aclose()
    assert embedder.model_id == "local/all-MiniLM-L6-v2"
    assert embedder.dimensions == DIMENSIONS
    assert got.dtype == np.float32
    assert got.shape == (3, DIMENSIONS)
    assert _cosines(got, model.encode(sentences)).min() >= 0.99999


@pytest.mark.asyncio
async def test_local_embedder_refuses_work_after_aclose(model: MiniLMOnnxModel) -> None:
    embedder = LocalEmbedder(model)
    await embedder.aclose()
    with pytest.raises(RuntimeError):
        await embedder.embed(["hello"])


@pytest.mark.asyncio
async def test_concurrent_embeddings_share_forward_passes_and_match_lone_ones(
    embedder: LocalEmbedder,
) -> None:
    prompts = [f"Which river flows through city number {n}?" for n in range(40)]
    alone = np.stack([(await embedder.embed([prompt])).vectors[0] for prompt in prompts[:4]])
    passes_before = embedder.passes

    together = [
        embedded.vectors
        for embedded in await asyncio.gather(*(embedder.embed([prompt]) for prompt in prompts))
    ]

    assert embedder.passes - passes_before <= 3  # 40 requests: one alone, then batches of 32
    assert [rows.shape for rows in together] == [(1, embedder.dimensions)] * 40
    assert np.all(_cosines(alone, np.concatenate(together[:4])) > 0.99999)
