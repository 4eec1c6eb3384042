"""Fitting and scoring the verified policy on labelled pairs, vectorised.

Every asked query is looked up once: an exact match by normalised key, else its ``top_k``
nearest cached prompts by cosine; the verifier scores every candidate at or above
``MIN_FLOOR`` in batches. After that, any (floor, cutoff, joint model) is scored in
milliseconds, so calibration can search them and the accuracy bench can print many side by side.

Scoring follows the protocol of ``shared/data/README.md``: a hit is correct only on the query's
own cached prompt when the pair is a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from semcache_server.calibration.data import Embedded, LabelledPair, PreparedFile, Score
from semcache_server.calibration.fitting import newton_logistic
from semcache_server.core import guards
from semcache_server.core.keys import normalise_prompt
from semcache_server.core.policy import IDENTICAL
from semcache_server.core.verified_policy import JointModel, VerifiedPolicy

PairScorer = Callable[[Sequence[tuple[str, str]]], npt.NDArray[np.float32]]
"""Scores (query, candidate) pairs in a batch, like `PairModel.logits`."""

MIN_FLOOR = 0.70
"""The lowest gray floor calibration considers; candidates below are never scored."""
TOP_K = 3

Floats = npt.NDArray[np.float64]


@dataclass
class Looked:
    """The asked queries of one file, each with its top-k candidates as arrays.

    ``cosine``, ``logit`` and ``correct`` are [queries, top_k]; a missing candidate has cosine
    -1. ``exact`` marks queries that the exact layer answers (their own cached prompt or not).
    """

    pairs: list[LabelledPair]
    exact: npt.NDArray[np.bool_]
    exact_correct: npt.NDArray[np.bool_]
    cosine: Floats
    logit: Floats
    correct: npt.NDArray[np.bool_]
    prompts: list[list[str]]


def look_up(
    asked: Sequence[LabelledPair], cached: Sequence[str], embedded: Embedded, top_k: int = TOP_K
) -> Looked:
    by_key = {normalise_prompt(prompt): prompt for prompt in cached}
    matrix = embedded.of(cached)
    n = len(asked)
    cosine = np.full((n, top_k), -1.0)
    correct = np.zeros((n, top_k), dtype=bool)
    exact = np.zeros(n, dtype=bool)
    exact_correct = np.zeros(n, dtype=bool)
    prompts: list[list[str]] = [[] for _ in range(n)]
    for start in range(0, n, 1024):
        chunk = asked[start : start + 1024]
        scores = embedded.of([pair.query for pair in chunk]) @ matrix.T
        k = min(top_k, scores.shape[1])
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, pair in enumerate(chunk):
            i = start + row
            same = by_key.get(normalise_prompt(pair.query))
            if same is not None:
                exact[i] = True
                exact_correct[i] = same == pair.cached and pair.duplicate
                continue
            columns = best[row][np.argsort(-scores[row, best[row]])]
            for j, column in enumerate(columns):
                prompts[i].append(cached[int(column)])
                cosine[i, j] = float(scores[row, column])
                correct[i, j] = cached[int(column)] == pair.cached and pair.duplicate
    return Looked(list(asked), exact, exact_correct, cosine, np.zeros((n, top_k)), correct, prompts)


def score_candidates(looked: Looked, logits_of: PairScorer, batch: int = 64) -> None:
    """Fill looked.logit for every candidate at or above MIN_FLOOR (in place)."""
    wanted = [
        (i, j)
        for i in range(len(looked.pairs))
        for j in range(len(looked.prompts[i]))
        if looked.cosine[i, j] >= MIN_FLOOR
    ]
    # Similar lengths together: the cost of a batch follows its longest pair.
    wanted.sort(key=lambda ij: len(looked.pairs[ij[0]].query) + len(looked.prompts[ij[0]][ij[1]]))
    for start in tqdm(range(0, len(wanted), batch), desc="verifying", unit="batch"):
        chunk = wanted[start : start + batch]
        logits = logits_of([(looked.pairs[i].query, looked.prompts[i][j]) for i, j in chunk])
        for (i, j), logit in zip(chunk, logits, strict=True):
            looked.logit[i, j] = float(logit)


def decide(
    looked: Looked, model: JointModel | None, floor: float, cutoff: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(hit, correct hit) per asked query under a verified policy; model None: cosine alone,
    cutoff then being a cosine threshold on the nearest candidate."""
    near = looked.cosine >= floor
    identical = looked.cosine[:, 0] >= IDENTICAL
    if model is None:
        hit = near[:, 0] & (looked.cosine[:, 0] >= cutoff)
        chosen = np.zeros(len(hit), dtype=np.intp)
    else:
        z = model.bias + model.cosine_weight * looked.cosine + model.logit_weight * looked.logit
        probability = np.where(near, 1 / (1 + np.exp(-np.clip(z, -50, 50))), -1.0)
        chosen = np.argmax(probability, axis=1)
        best = probability[np.arange(len(chosen)), chosen]
        hit = (best >= cutoff) | identical
        chosen = np.where(identical, 0, chosen)
    correct = hit & looked.correct[np.arange(len(chosen)), chosen]
    hit = np.where(looked.exact, True, hit)
    correct = np.where(looked.exact, looked.exact_correct, correct)
    return hit, correct


def score(looked: Looked, hit: npt.NDArray[np.bool_], correct: npt.NDArray[np.bool_]) -> Score:
    return Score(
        queries=len(looked.pairs),
        duplicates=sum(pair.duplicate for pair in looked.pairs),
        hits=int(hit.sum()),
        correct=int(correct.sum()),
    )


def fit_joint(
    looked: Looked, floor: float, l2: float = 1e-3, parts: Sequence[int] | None = None
) -> JointModel:
    """Logistic regression of "this candidate is right" on (cosine, logit), over every candidate
    at or above floor, by Newton's method. parts: the number of queries of each file looked is
    the concatenation of; each file then weighs the same in the fit, so that the largest (Quora,
    whose labelling habits the verifier is not taught) does not decide for everyday traffic."""
    mask = looked.cosine >= floor
    x = np.stack([looked.cosine[mask], looked.logit[mask]], axis=1)
    y = looked.correct[mask].astype(np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both right and wrong candidates")
    weight = None
    if parts is not None:
        part_of_query = np.repeat(np.arange(len(parts)), parts)
        part = np.broadcast_to(part_of_query[:, None], mask.shape)[mask]
        counts = np.bincount(part, minlength=len(parts)).astype(np.float64)
        present = max(1, int(np.count_nonzero(counts)))
        weight = len(part) / (present * np.maximum(counts, 1.0))[part]
    w = newton_logistic(x, y, l2, weight)
    return JointModel(float(w[0]), float(w[1]), float(w[2]))


def best_cutoff(
    looked: Looked,
    model: JointModel,
    floor: float,
    target_precision: float,
    strict: Looked | None = None,
) -> tuple[float, Score]:
    """The lowest cutoff whose hits reach target_precision, and that makes no false hit at all
    on strict (the everyday look-alikes: a wrong answer there is what users remember): the most
    recall under both."""
    chosen_cutoff, chosen = 1.0, score(looked, *decide(looked, model, floor, 1.0))
    # What no cutoff refuses (an exact or identical prompt on another pair's entry) is allowed.
    unavoidable = score(strict, *decide(strict, model, floor, 1.0)).false_hits if strict else 0
    for cutoff in np.linspace(0.995, 0.05, 190):
        if (
            strict is not None
            and score(strict, *decide(strict, model, floor, float(cutoff))).false_hits > unavoidable
        ):
            break
        result = score(looked, *decide(looked, model, floor, float(cutoff)))
        if result.hits and result.precision >= target_precision:
            chosen_cutoff, chosen = float(cutoff), result
    return chosen_cutoff, chosen


def with_vetoes(looked: Looked, kinds: Sequence[str]) -> Looked:
    """looked with every candidate a guard of kinds vetoes taken out (as the server does)."""
    if not kinds:
        return looked
    cosine = looked.cosine.copy()
    for i, pair in enumerate(looked.pairs):
        asked = guards.analyse(pair.query)
        for j, prompt in enumerate(looked.prompts[i]):
            found = guards.mismatches(asked, guards.analyse(prompt))
            if any(mismatch.value in kinds for mismatch in found):
                cosine[i, j] = -1.0
    return replace(looked, cosine=cosine)


def concat(parts: Sequence[Looked]) -> Looked:
    return Looked(
        [pair for part in parts for pair in part.pairs],
        np.concatenate([part.exact for part in parts]),
        np.concatenate([part.exact_correct for part in parts]),
        np.concatenate([part.cosine for part in parts]),
        np.concatenate([part.logit for part in parts]),
        np.concatenate([part.correct for part in parts]),
        [prompts for part in parts for prompts in part.prompts],
    )


def looked_file(
    prepared: PreparedFile,
    scorer: PairScorer,
    *,
    verifier_tag: str,
    cache_dir: Path | None,
    top_k: int = TOP_K,
) -> Looked:
    """A prepared file looked up and verified; with cache_dir, the logits are kept on disk under
    a name made of the verifier's tag and the asked pairs, so a second run skips the verifier."""
    looked = look_up(prepared.asked, prepared.cached, prepared.embedded, top_k)
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(verifier_tag.encode())
        for pair, prompts in zip(looked.pairs, looked.prompts, strict=True):
            digest.update("\x00".join([pair.query, *prompts]).encode())
        cache_file = cache_dir / f"verifier-logits-{digest.hexdigest()[:20]}.npy"
        if cache_file.exists():
            looked.logit = np.load(cache_file)
            return looked
    score_candidates(looked, scorer)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache_file, looked.logit)
    return looked


def choose_verified(
    looked: Looked,
    embedder_model_id: str,
    verifier_model_id: str,
    *,
    target_precision: float,
    floors: Sequence[float] = (0.70, 0.75, 0.80, 0.85),
    guards: Sequence[str] = (),
    strict: Looked | None = None,
    parts: Sequence[int] | None = None,
) -> tuple[VerifiedPolicy, Score]:
    """The floor, joint model and cutoff with the most recall at target_precision on looked,
    with no false hit on strict; the guards' vetoes applied to both, as the server applies them."""
    looked = with_vetoes(looked, guards)
    strict = with_vetoes(strict, guards) if strict is not None else None
    best: tuple[VerifiedPolicy, Score] | None = None
    for floor in floors:
        model = fit_joint(looked, floor, parts=parts)
        cutoff, result = best_cutoff(looked, model, floor, target_precision, strict)
        policy = VerifiedPolicy(
            embedder=embedder_model_id,
            verifier_model=verifier_model_id,
            gray_floor=floor,
            cutoff=round(cutoff, 4),
            model=model,
            guards=tuple(guards),
            top_k=looked.cosine.shape[1],
            provenance={
                "target_precision": target_precision,
                "score_on_calibration": result.as_dict(),
            },
        )
        if best is None or result.recall > best[1].recall:
            best = (policy, result)
    assert best is not None
    return best
