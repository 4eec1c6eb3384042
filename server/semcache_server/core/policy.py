"""When a semantic neighbour is close enough to reuse its answer.

A HitPolicy sees both prompts and their cosine similarity, so guards against look-alike prompts
(a changed number, a negation) work without touching the semantic layer. The policies:

- `ThresholdPolicy`: a bare static cosine threshold, the baseline the others are measured against.
- `GuardedThresholdPolicy`: a static threshold plus the lexical guards of `core.guards`. The
  server uses it when an operator sets ``--similarity-threshold``, and as the fallback for an
  embedder that has no calibration.
- `ExactOnlyPolicy`: threshold 0, no semantic hits.
- `CalibratedPolicy`: the default. Fitted per embedding model by `semcache calibrate` and shipped
  as JSON in ``core/policies/``. It has a gray zone: below ``floor`` a
  neighbour is too far; from ``accept_above`` up it is a hit unless a guard objects; in between a
  small logistic model over the cosine and lexical features (`guards.features`) decides.

How the per-request threshold override (``CacheControl.similarity_threshold``, checked with
``is None``) combines with all this is decided in one place, `for_request`, which hands the
semantic layer the one policy that judges the request:

- ``None``: the policy's own rule (threshold, or gray zone and model).
- ``0``: exact matches only (`EXACT_ONLY`); the semantic layer does not even search.
- ``0 < t < 1``: ``t`` replaces the cosine rule entirely (threshold, floor, gray zone and model):
  a neighbour with cosine ``>= t`` is a hit unless a guard objects (`GuardedThresholdPolicy`). The
  guards still apply, so a low override cannot turn "Celsius to Fahrenheit" into "Fahrenheit to
  Celsius".
- ``1``: only an identical embedding is a hit, and the guards are skipped: two prompts with the
  same vector are, to this cache, the same prompt.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from semcache_server.core import guards
from semcache_server.core.domain import Candidate, Check, Judgement, Verdict
from semcache_server.core.ports import HitPolicy, Judge, Verifier

log = logging.getLogger(__name__)

IDENTICAL = 1.0 - 1e-5
"""Cosine of two identical unit float32 vectors may fall a hair below 1."""

FALLBACK_THRESHOLD = 0.95
"""Guarded static threshold for an embedder without a calibration file: thresholds do not transfer
between embedding models, so an unknown one gets a strict setting rather than a borrowed one."""

POLICY_FORMAT = 1


class OneCandidate:
    """A policy that looks at the nearest candidate only, through its `verdict`."""

    @property
    def candidates(self) -> int:
        return 1

    async def judge(self, prompt: str, candidates: Sequence[Candidate]) -> Judgement:
        nearest = candidates[0]
        verdict = self.verdict(prompt, nearest.prompt, nearest.similarity)
        if verdict is Verdict.REJECTED_BY_GUARD:
            found = guards.findings(prompt, nearest.prompt)
            return Judgement(verdict, Check.GUARD, guard_findings=found)
        return Judgement(verdict, Check.COSINE, 0 if verdict is Verdict.HIT else None)

    def verdict(self, prompt: str, candidate: str, similarity: float) -> Verdict:
        raise NotImplementedError


class ThresholdPolicy(OneCandidate):
    """A static cosine threshold: the baseline every other policy is measured against."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @property
    def floor(self) -> float:
        return self.threshold

    def verdict(self, prompt: str, candidate: str, similarity: float) -> Verdict:
        return Verdict.HIT if similarity >= min(self.threshold, IDENTICAL) else Verdict.TOO_FAR


def guard_verdict(prompt: str, candidate: str) -> Verdict:
    """HIT when no guard objects to reusing candidate's answer for prompt."""
    found = guards.mismatches(guards.analyse(prompt), guards.analyse(candidate))
    if found:
        log.debug("guard %s: %r vs %r", ",".join(m.value for m in found), prompt, candidate)
        return Verdict.REJECTED_BY_GUARD
    return Verdict.HIT


def threshold_verdict(prompt: str, candidate: str, similarity: float, threshold: float) -> Verdict:
    """The guarded static rule, shared by GuardedThresholdPolicy and every request override."""
    if threshold >= IDENTICAL:
        return Verdict.HIT if similarity >= IDENTICAL else Verdict.TOO_FAR
    if similarity < threshold:
        return Verdict.TOO_FAR
    return guard_verdict(prompt, candidate)


class GuardedThresholdPolicy(OneCandidate):
    """A static cosine threshold plus the lexical guards (see the module docstring)."""

    def __init__(self, threshold: float) -> None:
        _check_threshold(threshold)
        self.threshold = threshold

    @property
    def floor(self) -> float:
        return min(self.threshold, IDENTICAL)

    def verdict(self, prompt: str, candidate: str, similarity: float) -> Verdict:
        return threshold_verdict(prompt, candidate, similarity, self.threshold)

    def __repr__(self) -> str:
        return f"GuardedThresholdPolicy({self.threshold})"


class ExactOnlyPolicy(OneCandidate):
    """Threshold 0, for the server or one request: no semantic hits, so no semantic search."""

    @property
    def floor(self) -> float:
        return math.inf

    def verdict(self, prompt: str, candidate: str, similarity: float) -> Verdict:
        return Verdict.TOO_FAR

    def __repr__(self) -> str:
        return "ExactOnlyPolicy()"


EXACT_ONLY = ExactOnlyPolicy()


@dataclass(frozen=True)
class GrayZoneModel:
    """Logistic regression over `guards.FEATURE_NAMES`, on standardised features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def __post_init__(self) -> None:
        if self.features != guards.FEATURE_NAMES:
            raise ValueError(
                f"model features {list(self.features)} differ from this version's "
                f"{list(guards.FEATURE_NAMES)}: recalibrate the policy"
            )
        sizes = {len(self.mean), len(self.scale), len(self.weights)}
        if sizes != {len(self.features)}:
            raise ValueError("mean, scale and weights must have one value per feature")

    def probability(self, values: Sequence[float]) -> float:
        """Estimated chance that the cached answer answers the prompt."""
        logit = self.bias + sum(
            w * (v - m) / s
            for w, v, m, s in zip(self.weights, values, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))


@dataclass(frozen=True)
class CalibratedPolicy(OneCandidate):
    """The default policy: guards everywhere, a learned gray zone, fitted per embedder."""

    embedder: str
    """The embedding model this was calibrated for: cosines of another model mean other things."""
    gray_floor: float
    """Neighbours below this cosine are too far (never fetched)."""
    accept_above: float
    """From this cosine up a neighbour is a hit unless a guard objects."""
    cutoff: float
    """In the gray zone, a hit needs the model's probability at or above this."""
    model: GrayZoneModel
    provenance: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """How and on what it was calibrated, with the figures it reached there."""

    def __post_init__(self) -> None:
        if not 0 < self.gray_floor <= self.accept_above <= 1:
            raise ValueError("need 0 < gray_floor <= accept_above <= 1")

    @property
    def floor(self) -> float:
        return self.gray_floor

    def verdict(self, prompt: str, candidate: str, similarity: float) -> Verdict:
        return self.decide(prompt, candidate, similarity)

    def decide(self, prompt: str, candidate: str, similarity: float) -> Verdict:
        """The policy's own rule, synchronous: cheap enough (tens of microseconds) to run inline."""
        if similarity < self.gray_floor:
            return Verdict.TOO_FAR
        a, b = guards.analyse(prompt), guards.analyse(candidate)
        found = guards.mismatches(a, b)
        if found:
            log.debug("guard %s: %r vs %r", ",".join(m.value for m in found), prompt, candidate)
            return Verdict.REJECTED_BY_GUARD
        if similarity >= self.accept_above:
            return Verdict.HIT
        score = self.model.probability(guards.features(a, b, similarity))
        return Verdict.HIT if score >= self.cutoff else Verdict.TOO_FAR

    def to_json(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "embedder": self.embedder,
            "gray_floor": self.gray_floor,
            "accept_above": self.accept_above,
            "cutoff": self.cutoff,
            "model": {
                "kind": "logistic",
                "features": list(self.model.features),
                "mean": list(self.model.mean),
                "scale": list(self.model.scale),
                "weights": list(self.model.weights),
                "bias": self.model.bias,
            },
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CalibratedPolicy:
        if raw.get("format") != POLICY_FORMAT:
            raise ValueError(f"unsupported policy format {raw.get('format')!r}")
        model = raw["model"]
        if model.get("kind") != "logistic":
            raise ValueError(f"unsupported gray-zone model {model.get('kind')!r}")
        return cls(
            embedder=str(raw["embedder"]),
            gray_floor=float(raw["gray_floor"]),
            accept_above=float(raw["accept_above"]),
            cutoff=float(raw["cutoff"]),
            model=GrayZoneModel(
                features=tuple(model["features"]),
                mean=tuple(float(x) for x in model["mean"]),
                scale=tuple(float(x) for x in model["scale"]),
                weights=tuple(float(x) for x in model["weights"]),
                bias=float(model["bias"]),
            ),
            provenance=dict(raw.get("provenance", {})),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> CalibratedPolicy:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def shipped(cls, embedder_model_id: str) -> CalibratedPolicy | None:
        """The calibration shipped in the package for this embedder, or None."""
        entry = (
            resources.files("semcache_server.core")
            / "policies"
            / policy_file_name(embedder_model_id)
        )
        if not entry.is_file():
            return None
        policy = cls.from_json(json.loads(entry.read_text(encoding="utf-8")))
        if policy.embedder != embedder_model_id:
            raise ValueError(
                f"{entry.name} was calibrated for {policy.embedder!r}, not {embedder_model_id!r}"
            )
        return policy


def policy_file_name(embedder_model_id: str) -> str:
    """The package data file of an embedder's policy: "local/all-MiniLM-L6-v2" ->
    "local--all-MiniLM-L6-v2.json"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", embedder_model_id).strip("-") + ".json"


def _check_threshold(threshold: float) -> None:
    if math.isnan(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"a similarity threshold must be in [0, 1], got {threshold}")


def shipped_policy_json(file_name: str) -> dict[str, Any] | None:
    """A policy file shipped in the package, parsed, or None when there is none."""
    entry = resources.files("semcache_server.core") / "policies" / file_name
    if not entry.is_file():
        return None
    raw: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
    return raw


def verified_policy_file_name(embedder_model_id: str, verifier_model_id: str) -> str:
    """ "local/all-MiniLM-L6-v2" + "local/minilm-pair-verifier" ->
    "local--all-MiniLM-L6-v2+local--minilm-pair-verifier.json"."""
    return (
        policy_file_name(embedder_model_id).removesuffix(".json")
        + "+"
        + policy_file_name(verifier_model_id)
    )


def default_policy(
    embedder_model_id: str,
    threshold: float | None = None,
    verifier: Verifier | None = None,
    judge: Judge | None = None,
) -> HitPolicy:
    """The policy a server runs with.

    threshold is the operator's ``--similarity-threshold``: when set, a guarded static threshold
    at that value (0 = exact matches only). When None: with a verifier, the verified policy
    fitted for this embedder and verifier; else the lexical policy calibrated for this embedder;
    else a strict guarded threshold (FALLBACK_THRESHOLD) for an embedder nobody calibrated.
    """
    if threshold is not None:
        _check_threshold(threshold)
        if threshold == 0:
            return EXACT_ONLY
        return GuardedThresholdPolicy(threshold)
    if verifier is not None:
        from semcache_server.core.verified_policy import VerifiedPolicy

        raw = shipped_policy_json(verified_policy_file_name(embedder_model_id, verifier.model_id))
        if raw is not None:
            return VerifiedPolicy.from_json(raw).with_verifier(verifier, judge)
        log.warning(
            "no verified policy for embedder %s with verifier %s; using the lexical policy",
            embedder_model_id,
            verifier.model_id,
        )
    calibrated = CalibratedPolicy.shipped(embedder_model_id)
    if calibrated is not None:
        return calibrated
    log.warning(
        "no calibrated policy for embedder %s; using a guarded threshold of %.2f "
        "(run `semcache calibrate` to calibrate one)",
        embedder_model_id,
        FALLBACK_THRESHOLD,
    )
    return GuardedThresholdPolicy(FALLBACK_THRESHOLD)


def for_request(policy: HitPolicy, threshold: float | None) -> HitPolicy:
    """The policy that judges one request: the server's, or the request's threshold override.

    The one place the override is interpreted (see the module docstring); validation has already
    checked that it lies in [0, 1].
    """
    if threshold is None:
        return policy
    if threshold == 0:
        return EXACT_ONLY
    return GuardedThresholdPolicy(threshold)
