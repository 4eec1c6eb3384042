"""Semantic hits through the contract with the pair verifier: everyday paraphrases are served,
look-alikes are refused, and every answer says which check decided.

The pairs are the hand-written sets in tests/data (paraphrases.jsonl and look_alikes.jsonl were
written before the verifier was tuned; none of them trains or calibrates it). Each pair gets its
own system prompt, so its query meets only its own cached prompt: one partition a pair. These
tests are the gate for shipping verifier weights: they skip until weights ship.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_server.adapters.verifiers import pair

from tests.conftest import Running
from tests.test_ask import ask

DATA = Path(__file__).parent / "data"

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(not pair.shipped(), reason="no pair verifier weights in this install"),
]


@dataclass(frozen=True)
class Pair:
    query: str
    cached: str
    hit: bool
    kind: str
    source: str


def load(name: str) -> list[Pair]:
    pairs = []
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        pairs.append(
            Pair(raw["query"], raw["cached"], raw["hit"], raw["kind"], raw.get("source", ""))
        )
    return pairs


async def ask_each(semcache: Running, pairs: list[Pair]) -> list[pb.AskResponse]:
    """Store each cached prompt in its own partition, then ask its query there."""
    for index, p in enumerate(pairs):
        stored = await semcache.stub.Ask(ask(p.cached, system=f"pair {index}"), timeout=30)
        assert stored.stored, p.cached
    return [
        await semcache.stub.Ask(ask(p.query, system=f"pair {index}", skip_store=True), timeout=30)
        for index, p in enumerate(pairs)
    ]


def describe(p: Pair, response: pb.AskResponse) -> str:
    return (
        f"{p.kind}: {p.query!r} vs {p.cached!r}: {pb.Source.Name(response.source)} "
        f"cosine {response.similarity:.3f} decided by "
        f"{pb.SemanticCheck.Name(response.decided_by)} score {response.verifier_score:.3f}"
    )


async def test_everyday_paraphrases_are_semantic_hits(semcache: Running) -> None:
    pairs = load("paraphrases.jsonl")
    responses = await ask_each(semcache, pairs)
    missed = [
        describe(p, r)
        for p, r in zip(pairs, responses, strict=True)
        if r.source != pb.SOURCE_SEMANTIC
    ]
    rate = 1 - len(missed) / len(pairs)
    print(f"paraphrases served: {rate:.3f} of {len(pairs)}")
    assert rate >= 0.95, "\n".join(missed)


async def test_the_issue_paraphrases_are_served_and_say_the_verifier_decided(
    semcache: Running,
) -> None:
    pairs = [p for p in load("paraphrases.jsonl") if p.source == "issue-9"]
    assert len(pairs) == 7
    for p, response in zip(pairs, await ask_each(semcache, pairs), strict=True):
        assert response.source == pb.SOURCE_SEMANTIC, describe(p, response)
        assert response.matched_prompt == p.cached
        assert response.decided_by == pb.SEMANTIC_CHECK_VERIFIER
        assert response.HasField("verifier_score") and 0 < response.verifier_score <= 1


async def test_every_look_alike_is_refused(semcache: Running) -> None:
    pairs = [p for p in load("traps.jsonl") + load("look_alikes.jsonl") if not p.hit]
    responses = await ask_each(semcache, pairs)
    served = [
        describe(p, r) for p, r in zip(pairs, responses, strict=True) if r.source != pb.SOURCE_LLM
    ]
    assert not served, "\n".join(served)
    refused_by = {pb.SemanticCheck.Name(r.decided_by) for r in responses}
    assert refused_by <= {
        "SEMANTIC_CHECK_UNSPECIFIED",  # nothing near enough to judge
        "SEMANTIC_CHECK_GUARD",
        "SEMANTIC_CHECK_VERIFIER",
    }


async def test_the_opposite_and_the_reversed_conversion_stay_misses(semcache: Running) -> None:
    pairs = [
        Pair("What is the slowest land animal?", "What is the fastest land animal?", False, "", ""),
        Pair(
            "How do I convert kilometers to miles?",
            "How do I convert miles to kilometers?",
            False,
            "",
            "",
        ),
    ]
    for p, response in zip(pairs, await ask_each(semcache, pairs), strict=True):
        assert response.source == pb.SOURCE_LLM, describe(p, response)
