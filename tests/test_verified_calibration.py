"""Fitting the verified policy: one decision from cosine and verifier logit, its cutoff chosen for
a target precision, and verdicts computed the way the server's VerifiedPolicy reaches them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from semcache_server.calibration.data import LabelledPair
from semcache_server.calibration.verified import (
    Looked,
    best_cutoff,
    choose_verified,
    concat,
    decide,
    fit_joint,
    score,
)
from semcache_server.core.domain import Candidate, Verdict
from semcache_server.core.verified_policy import JointModel, VerifiedPolicy


def synthetic(n: int = 400, seed: int = 0) -> Looked:
    """Queries whose own candidate is right when its logit is high; cosine says little."""
    rng = np.random.default_rng(seed)
    correct = np.zeros((n, 3), dtype=bool)
    correct[:, 0] = rng.random(n) < 0.5
    logit = np.where(correct, rng.normal(3, 1, (n, 3)), rng.normal(-3, 1, (n, 3)))
    cosine = np.sort(rng.uniform(0.72, 0.98, (n, 3)), axis=1)[:, ::-1].copy()
    pairs = [LabelledPair(f"q{i}", f"c{i}", bool(correct[i, 0])) for i in range(n)]
    prompts = [[f"c{i}", f"x{i}", f"y{i}"] for i in range(n)]
    return Looked(pairs, np.zeros(n, bool), np.zeros(n, bool), cosine, logit, correct, prompts)


def test_the_joint_model_leans_on_the_verifier_when_it_separates() -> None:
    model = fit_joint(synthetic(), floor=0.70)
    assert model.logit_weight > 0.5
    assert model.probability(0.8, 4.0) > 0.9 > 0.1 > model.probability(0.95, -4.0)


def test_the_cutoff_reaches_the_target_precision_with_most_recall() -> None:
    looked = synthetic()
    model = fit_joint(looked, floor=0.70)
    cutoff, result = best_cutoff(looked, model, 0.70, target_precision=0.97)
    assert result.precision >= 0.97
    assert result.recall > 0.9
    hit, correct = decide(looked, model, 0.70, cutoff)
    assert score(looked, hit, correct) == result


def test_nothing_below_the_floor_hits_and_an_identical_embedding_always_does() -> None:
    looked = synthetic(10)
    sure = JointModel(0.0, 10.0, 0.0)
    looked.cosine[:, :] = 0.5
    looked.cosine[0, 0] = 1.0
    hit, _ = decide(looked, sure, floor=0.70, cutoff=0.5)
    assert hit.tolist() == [True] + [False] * 9


def test_calibration_keeps_the_best_floor_and_the_policy_round_trips() -> None:
    policy, result = choose_verified(
        synthetic(), "test/embedder", "test/verifier", target_precision=0.95
    )
    assert result.precision >= 0.95
    assert VerifiedPolicy.from_json(policy.to_json()) == policy


class Logits:
    def __init__(self, logits: Sequence[float]) -> None:
        self.logits = list(logits)

    @property
    def model_id(self) -> str:
        return "test/verifier"

    async def scores(self, query: str, candidates: Sequence[str]) -> Sequence[float]:
        return self.logits[: len(candidates)]

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    ("logits", "chosen"), [([-3.0, 4.0, -3.0], 1), ([4.0, 5.0, -3.0], 1), ([-3.0] * 3, None)]
)
def test_the_server_policy_takes_the_most_probable_candidate(
    logits: list[float], chosen: int | None
) -> None:
    policy = VerifiedPolicy(
        "test/embedder", "test/verifier", 0.7, 0.9, JointModel(0.0, 1.0, 0.0)
    ).with_verifier(Logits(logits))
    candidates = [Candidate("a", 0.95), Candidate("b", 0.9), Candidate("c", 0.85)]
    judgement = asyncio.run(policy.judge("q", candidates))
    assert judgement.chosen == chosen
    assert judgement.verdict is (Verdict.HIT if chosen is not None else Verdict.TOO_FAR)


def test_a_strict_set_holds_the_cutoff_above_its_every_false_hit() -> None:
    """The cutoff the target precision alone allows serves a look-alike of the strict set; with
    the strict set, no look-alike is served, at the price of some recall."""
    looked = synthetic()
    strict = synthetic(40, seed=1)
    strict.correct[:, :] = False
    strict.pairs = [LabelledPair(p.query, p.cached, False) for p in strict.pairs]
    strict.logit[:, :] = -3.0
    strict.logit[0, 0] = 1.0  # one look-alike the verifier takes for a paraphrase
    model = fit_joint(looked, floor=0.70)
    loose, _ = best_cutoff(looked, model, 0.70, target_precision=0.9)
    assert score(strict, *decide(strict, model, 0.70, loose)).false_hits > 0
    held, result = best_cutoff(looked, model, 0.70, target_precision=0.9, strict=strict)
    assert held > loose
    assert score(strict, *decide(strict, model, 0.70, held)).false_hits == 0
    assert result.precision >= 0.9


def test_calibration_applies_the_guards_vetoes_as_the_server_does() -> None:
    """A candidate a guard vetoes is no candidate, whatever its scores."""
    from semcache_server.calibration.verified import with_vetoes

    pairs = [LabelledPair("How many calories are in 2 eggs?", "x", False)]
    prompts = [["How many calories are in 3 eggs?", "How many calories do 2 eggs have?"]]
    looked = Looked(
        pairs,
        np.zeros(1, bool),
        np.zeros(1, bool),
        np.array([[0.97, 0.93]]),
        np.array([[5.0, 5.0]]),
        np.zeros((1, 2), bool),
        prompts,
    )
    vetoed = with_vetoes(looked, ["number"])
    assert vetoed.cosine.tolist() == [[-1.0, 0.93]]
    assert with_vetoes(looked, []).cosine.tolist() == [[0.97, 0.93]]


def test_each_file_weighs_the_same_in_the_joint_fit() -> None:
    """A large file where only cosine tells (Quora's habit) and a small one where only the
    verifier does (everyday look-alikes): weighed by file, the fit keeps the verifier."""
    rng = np.random.default_rng(3)
    big, small = synthetic(2000, seed=4), synthetic(100, seed=5)
    big.logit[:, :] = rng.normal(0, 1, big.logit.shape)  # the verifier says nothing here
    big.cosine[:, 0] = np.where(big.correct[:, 0], 0.95, 0.80)
    small.cosine[:, :] = 0.9  # cosine says nothing here
    both = concat([big, small])
    plain = fit_joint(both, floor=0.70)
    weighed = fit_joint(both, floor=0.70, parts=[2000, 100])
    assert weighed.logit_weight > 2 * plain.logit_weight
