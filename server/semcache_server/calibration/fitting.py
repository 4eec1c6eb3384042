"""Fitting a `CalibratedPolicy` to the lookups of labelled pairs (see `command` for the method)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from semcache_server.calibration.data import Lookup, Score
from semcache_server.core import guards
from semcache_server.core.policy import CalibratedPolicy, GrayZoneModel

DEFAULT_TARGET_PRECISION = 0.85
"""Precision on the calibration half of Quora Question Pairs that the shipped policy is fitted to.

Not 0.90: with MiniLM that is reached only at a recall of about 0.20, and it misses plain
paraphrases ("What's the capital city of Austria?"). Quora's labels are noisy: in an audit of the
false hits at this setting, about two in three were the same question asked twice (unlabelled
duplicates or label noise), so 0.85 measured is roughly 0.94 real. See the bench report.
"""
DEFAULT_GRAY_FLOOR = 0.80
DEFAULT_L2 = 1.0
_GRID_STEP = 0.0025


def fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = DEFAULT_L2
) -> GrayZoneModel:
    """L2-regularised logistic regression by Newton's method on standardised features.

    A handful of features and a few thousand pairs: Newton converges in a few steps, and the
    small, penalised model is what keeps the fit from learning the calibration half by heart.
    """
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both correct and wrong gray-zone candidates")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    w = newton_logistic((x - mean) / scale, y, l2)
    return GrayZoneModel(
        features=guards.FEATURE_NAMES,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in w[:-1]),
        bias=float(w[-1]),
    )


def newton_logistic(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    l2: float,
    sample_weight: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """L2-regularised logistic regression by Newton's method: the weights of x's columns, then
    the intercept (which is not shrunk). Few features and thousands of rows converge in a few
    steps. sample_weight: how much each row counts (default: 1 each)."""
    z = np.hstack([x, np.ones((x.shape[0], 1))])
    s = np.ones(x.shape[0]) if sample_weight is None else sample_weight
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0
    w = np.zeros(z.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        gradient = z.T @ (s * (p - y)) + penalty * w
        hessian = (z * (s * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return w


def _inert_model() -> GrayZoneModel:
    size = len(guards.FEATURE_NAMES)
    return GrayZoneModel(
        guards.FEATURE_NAMES, (0.0,) * size, (1.0,) * size, (0.0,) * size, bias=0.0
    )


@dataclass(frozen=True)
class _Candidate:
    lookup: Lookup
    vetoed: bool
    features: tuple[float, ...]


def _lowest_accept_above(candidates: Sequence[_Candidate], target: float, floor: float) -> float:
    """The lowest cosine from which guarded candidates alone reach the target precision."""
    kept = sorted((c.lookup.similarity, c.lookup.correct) for c in candidates if not c.vetoed)
    similarities = np.array([s for s, _ in kept])
    correct = np.array([ok for _, ok in kept], dtype=np.float64)
    # suffix sums: hits and correct hits at or above each candidate threshold
    for threshold in np.arange(floor, 1.0 + 1e-9, _GRID_STEP):
        start = int(np.searchsorted(similarities, threshold))
        hits = len(kept) - start
        if hits and correct[start:].sum() / hits >= target:
            return float(round(threshold, 4))
    return 1.0


def choose_policy(
    lookups: Sequence[Lookup],
    embedder_model_id: str,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    gray_floor: float = DEFAULT_GRAY_FLOOR,
    l2: float = DEFAULT_L2,
) -> tuple[CalibratedPolicy, Score]:
    """Fit the policy on lookups (the method: `semcache_server.calibration.command`); returns it
    with its score there."""
    exact = [lookup for lookup in lookups if lookup.exact]
    candidates = []
    for lookup in lookups:
        if lookup.exact or lookup.similarity < gray_floor:
            continue
        a, b = guards.analyse(lookup.pair.query), guards.analyse(lookup.nearest)
        candidates.append(
            _Candidate(
                lookup,
                bool(guards.mismatches(a, b)),
                guards.features(a, b, lookup.similarity),
            )
        )
    accept_above = _lowest_accept_above(candidates, target_precision, gray_floor)
    gray = [c for c in candidates if not c.vetoed and c.lookup.similarity < accept_above]
    above = [c for c in candidates if not c.vetoed and c.lookup.similarity >= accept_above]
    x = np.array([c.features for c in gray], dtype=np.float64).reshape(
        len(gray), len(guards.FEATURE_NAMES)
    )
    y = np.array([c.lookup.correct for c in gray], dtype=np.float64)
    if len(np.unique(y)) < 2:
        # Nothing to learn from (tiny data): no gray zone, a guarded threshold at accept_above.
        gray_floor, gray, y = accept_above, [], y[:0]
        model = _inert_model()
    else:
        model = fit_logistic(x, y, l2)
    scores = np.array([model.probability(c.features) for c in gray])

    base_hits = len(exact) + len(above)
    base_correct = sum(lookup.correct for lookup in exact) + sum(c.lookup.correct for c in above)
    order = np.argsort(-scores, kind="stable")
    hits = base_hits + np.arange(1, len(order) + 1)
    correct = base_correct + np.cumsum(y[order])
    meets = np.nonzero(correct / hits >= target_precision)[0]
    if len(meets):
        last = int(meets[np.argmax(correct[meets])])
        cutoff = float(scores[order][last])
        accepted = [gray[i] for i in order[: last + 1]]
    else:
        cutoff, accepted = 1.0, []
    # Nothing below the lowest accepted cosine was ever a hit here: do not even fetch it.
    lowest = min((c.lookup.similarity for c in accepted), default=accept_above)
    floor = max(gray_floor, float(np.floor(lowest * 200) / 200))

    score = Score(
        queries=len(lookups),
        duplicates=sum(lookup.pair.duplicate for lookup in lookups),
        hits=base_hits + len(accepted),
        correct=base_correct + sum(c.lookup.correct for c in accepted),
    )
    policy = CalibratedPolicy(
        embedder=embedder_model_id,
        gray_floor=round(floor, 4),
        accept_above=accept_above,
        cutoff=cutoff,
        model=model,
        provenance={
            "target_precision": target_precision,
            "gray_floor_searched": gray_floor,
            "l2": l2,
            "guards": [m.value for m in guards.Mismatch],
            "gray_zone_pairs_fitted": len(gray),
            "vetoed_by_guards": sum(c.vetoed for c in candidates),
            "score_on_calibration": score.as_dict(),
        },
    )
    return policy, score
