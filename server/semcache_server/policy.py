"""When a semantic neighbour is close enough to reuse its answer.

A HitPolicy sees both prompts and their cosine similarity, so guards against look-alike prompts
(a changed number, a negation) can be added without touching the semantic layer.
"""

from __future__ import annotations

import enum
from typing import Protocol

IDENTICAL = 1.0 - 1e-5
"""Cosine of two identical unit float32 vectors may fall a hair below 1."""


class Verdict(enum.Enum):
    HIT = "hit"
    TOO_FAR = "too_far"
    """Below the threshold."""
    REJECTED_BY_GUARD = "rejected_by_guard"
    """Close enough by cosine, but a guard found the prompts ask different things."""


class HitPolicy(Protocol):
    @property
    def floor(self) -> float:
        """Below this similarity no candidate is even considered, so it is never fetched."""
        ...

    async def judge(
        self, prompt: str, candidate: str, similarity: float, threshold: float | None
    ) -> Verdict:
        """Whether the candidate's answer answers prompt; threshold is the caller's override."""
        ...


class ThresholdPolicy:
    """A static cosine threshold: the baseline every other policy is measured against."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @property
    def floor(self) -> float:
        return self.threshold

    async def judge(
        self, prompt: str, candidate: str, similarity: float, threshold: float | None
    ) -> Verdict:
        required = self.threshold if threshold is None else threshold
        return Verdict.HIT if similarity >= min(required, IDENTICAL) else Verdict.TOO_FAR
