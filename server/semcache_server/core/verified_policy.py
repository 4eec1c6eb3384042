"""The verified policy: a pair verifier decides in a gray zone of cosine.

A cosine threshold cannot tell a paraphrase ("Who painted the Mona Lisa?" / "Which artist
created the Mona Lisa?", 0.91) from a look-alike ("fastest" / "slowest land animal", 0.95): both
are near in embedding space. A cross-encoder that reads both prompts together can. So:

- below ``gray_floor`` nothing hits (and nothing is even fetched);
- an identical embedding is the same prompt, a hit without asking anyone;
- otherwise the nearest ``top_k`` candidates go to the verifier in one batch, and one decision
  learned from both signals, a logistic model over (cosine, verifier logit), gives each a
  probability; the most probable candidate hits when it reaches ``cutoff``;
- the guards named in ``guards`` (only those measured precise on paraphrases) veto before that;
- with an LLM judge configured, a probability inside ``judge_band`` (the verifier unsure) is
  decided by the judge instead; a judge that fails or times out means a miss.

Fitted per embedder and verifier by `semcache calibrate --verifier`, shipped as JSON beside the
other policies. The verifier itself is handed in by the composition root.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from semcache_server.core import guards
from semcache_server.core.domain import (
    Candidate,
    Check,
    Judgement,
    Verdict,
    VerifierUnavailable,
)
from semcache_server.core.outages import OutageLog
from semcache_server.core.policy import IDENTICAL
from semcache_server.core.ports import Judge, Verifier

log = logging.getLogger(__name__)

VERIFIED_FORMAT = 2

_verifier_outages = OutageLog("pair verifier")


@dataclass(frozen=True)
class JointModel:
    """Logistic regression over (cosine, verifier logit): one decision from both signals."""

    cosine_weight: float
    logit_weight: float
    bias: float

    def probability(self, cosine: float, logit: float) -> float:
        z = self.bias + self.cosine_weight * cosine + self.logit_weight * logit
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


@dataclass(frozen=True)
class VerifiedPolicy:
    embedder: str
    """The embedding model the cosines come from."""
    verifier_model: str
    gray_floor: float
    cutoff: float
    """The probability a candidate needs to be a hit."""
    model: JointModel
    guards: tuple[str, ...] = ()
    """The `guards.Mismatch` kinds that veto a candidate before the verifier sees it."""
    top_k: int = 3
    provenance: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    judge_band: tuple[float, float] = (0.2, 0.8)
    """Probabilities where the verifier is unsure: there the LLM judge decides, if there is one."""
    verifier: Verifier | None = field(default=None, hash=False, compare=False)
    """Handed in at start-up (`with_verifier`); a policy without one refuses every candidate."""
    llm_judge: Judge | None = field(default=None, hash=False, compare=False)

    @property
    def floor(self) -> float:
        return self.gray_floor

    @property
    def candidates(self) -> int:
        return self.top_k

    def with_verifier(self, verifier: Verifier, judge: Judge | None = None) -> VerifiedPolicy:
        if verifier.model_id != self.verifier_model:
            raise ValueError(
                f"this policy was fitted for verifier {self.verifier_model!r}, "
                f"not {verifier.model_id!r}"
            )
        return replace(self, verifier=verifier, llm_judge=judge)

    def vetoed(self, prompt: str, candidate: str) -> bool:
        if not self.guards:
            return False
        found = guards.mismatches(guards.analyse(prompt), guards.analyse(candidate))
        return any(mismatch.value in self.guards for mismatch in found)

    async def judge(self, prompt: str, candidates: Sequence[Candidate]) -> Judgement:
        if candidates[0].similarity >= IDENTICAL:
            return Judgement(Verdict.HIT, Check.COSINE, 0)
        kept = [i for i, c in enumerate(candidates) if not self.vetoed(prompt, c.prompt)]
        if not kept:
            found = guards.findings(prompt, candidates[0].prompt)
            return Judgement(Verdict.REJECTED_BY_GUARD, Check.GUARD, guard_findings=found)
        if self.verifier is None:
            return Judgement(Verdict.TOO_FAR, Check.VERIFIER)
        try:
            logits = await self.verifier.scores(prompt, [candidates[i].prompt for i in kept])
        except VerifierUnavailable as error:
            _verifier_outages.failed(error)
            return Judgement(Verdict.TOO_FAR, Check.VERIFIER)
        _verifier_outages.succeeded()
        probabilities = [
            self.model.probability(candidates[i].similarity, logit)
            for i, logit in zip(kept, logits, strict=True)
        ]
        best = max(range(len(kept)), key=probabilities.__getitem__)
        score = probabilities[best]
        low, high = self.judge_band
        if self.llm_judge is not None and low <= score < high:
            started = time.monotonic()
            same = await self.llm_judge.same_answer(prompt, candidates[kept[best]].prompt)
            seconds = time.monotonic() - started
            if same:
                return Judgement(Verdict.HIT, Check.JUDGE, kept[best], score, seconds)
            return Judgement(Verdict.TOO_FAR, Check.JUDGE, None, score, seconds)
        if score >= self.cutoff:
            return Judgement(Verdict.HIT, Check.VERIFIER, kept[best], score)
        return Judgement(Verdict.TOO_FAR, Check.VERIFIER, None, score)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": VERIFIED_FORMAT,
            "kind": "verified",
            "embedder": self.embedder,
            "verifier": self.verifier_model,
            "gray_floor": self.gray_floor,
            "cutoff": self.cutoff,
            "top_k": self.top_k,
            "guards": list(self.guards),
            "judge_band": list(self.judge_band),
            "model": {
                "cosine_weight": self.model.cosine_weight,
                "logit_weight": self.model.logit_weight,
                "bias": self.model.bias,
            },
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> VerifiedPolicy:
        if raw.get("format") != VERIFIED_FORMAT or raw.get("kind") != "verified":
            raise ValueError("not a verified policy")
        model = raw["model"]
        band = raw.get("judge_band", (0.2, 0.8))
        return cls(
            embedder=str(raw["embedder"]),
            verifier_model=str(raw["verifier"]),
            gray_floor=float(raw["gray_floor"]),
            cutoff=float(raw["cutoff"]),
            model=JointModel(
                float(model["cosine_weight"]), float(model["logit_weight"]), float(model["bias"])
            ),
            guards=tuple(raw.get("guards", ())),
            top_k=int(raw.get("top_k", 3)),
            judge_band=(float(band[0]), float(band[1])),
            provenance=dict(raw.get("provenance", {})),
        )
