"""The onnxruntime pair verifier reproduces the torch model it was trained as."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from semcache_server.adapters.verifiers import pair

FIXTURE = Path(__file__).parent / "fixtures" / "verifier_reference.json"

pytestmark = pytest.mark.skipif(
    not pair.shipped(), reason="no pair verifier weights in this install"
)


@pytest.fixture(scope="module")
def model() -> pair.PairModel:
    return pair.PairModel.load()


def test_logits_match_the_torch_model(model: pair.PairModel) -> None:
    reference = json.loads(FIXTURE.read_text(encoding="utf-8"))
    pairs = [(query, cached) for query, cached in reference["pairs"]]
    got = model.logits(pairs)
    np.testing.assert_allclose(got, reference["logits"], atol=2e-3)


def test_a_batch_scores_like_one_pair_at_a_time(model: pair.PairModel) -> None:
    pairs = [("Who painted the Mona Lisa?", "Which artist created the Mona Lisa?")] * 2 + [
        ("What is the fastest land animal?", "What is the slowest land animal in the world?")
    ]
    batched = model.logits(pairs)
    single = np.array([model.logits([p])[0] for p in pairs])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_no_pairs_give_no_logits(model: pair.PairModel) -> None:
    assert model.logits([]).shape == (0,)
