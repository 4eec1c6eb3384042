"""Hit policies against look-alike traps: prompts one number, negation, swapped pair, entity or
opposite away from a cached prompt must not be served its answer; true paraphrases still must.

The pairs live in tests/data/traps.jsonl and run through the real local embedder, the default
policy, and a SemanticLayer over a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from semcache_server import app
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.calibration.data import (
    distinct_cached,
    embed_texts,
    nearest_lookups,
    read_pairs,
)
from semcache_server.core import guards, keys
from semcache_server.core.domain import CacheControl, Candidate, Query, SemanticStatus, Verdict
from semcache_server.core.layers import SemanticLayer
from semcache_server.core.policy import (
    FALLBACK_THRESHOLD,
    CalibratedPolicy,
    ExactOnlyPolicy,
    GuardedThresholdPolicy,
    default_policy,
    for_request,
)
from semcache_server.core.ports import HitPolicy
from semcache_server.settings import Settings
from semcache_server.testing.redis_process import RedisProcess

TRAPS = Path(__file__).parent / "data" / "traps.jsonl"
SHARED_DATA = Path(
    os.environ.get("SEMCACHE_DATA_DIR", Path(__file__).parents[2] / "shared" / "data")
)
MODEL_ID = "local/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Trap:
    kind: str
    query: str
    cached: str
    hit: bool
    known_miss: str | None
    """A paraphrase this version is known to miss, and why: kept in the set, not hidden."""


@dataclass(frozen=True)
class Judged:
    trap: Trap
    similarity: float
    verdict: Verdict


def load_traps() -> list[Trap]:
    traps = []
    for line in TRAPS.read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        traps.append(
            Trap(raw["kind"], raw["query"], raw["cached"], raw["hit"], raw.get("known_miss"))
        )
    return traps


@pytest.fixture(scope="module")
def similarities(embedder: LocalEmbedder) -> dict[tuple[str, str], float]:
    """Cosine of every trap pair by the real local embedder (embedded once for the module)."""
    traps = load_traps()
    texts = sorted({text for trap in traps for text in (trap.query, trap.cached)})
    vectors = asyncio.run(embedder.embed(texts)).vectors
    row = {text: index for index, text in enumerate(texts)}
    return {
        (t.query, t.cached): float(vectors[row[t.query]] @ vectors[row[t.cached]]) for t in traps
    }


async def verdict(
    policy: HitPolicy, threshold: float | None, prompt: str, candidate: str, similarity: float
) -> Verdict:
    """The verdict on one pair under a request's threshold override (None: the policy's own)."""
    judgement = await for_request(policy, threshold).judge(
        prompt, [Candidate(candidate, similarity)]
    )
    return judgement.verdict


async def judge_all(
    policy: CalibratedPolicy | GuardedThresholdPolicy,
    similarities: dict[tuple[str, str], float],
    threshold: float | None = None,
) -> list[Judged]:
    judged = []
    for trap in load_traps():
        similarity = similarities[(trap.query, trap.cached)]
        judgement = await verdict(policy, threshold, trap.query, trap.cached, similarity)
        judged.append(Judged(trap, similarity, judgement))
    return judged


def describe(judged: list[Judged]) -> str:
    return "\n".join(
        f"{j.trap.kind}: {j.trap.query!r} vs {j.trap.cached!r} "
        f"(cosine {j.similarity:.3f}) -> {j.verdict.value}"
        for j in judged
    )


def calibrated() -> CalibratedPolicy:
    policy = default_policy(MODEL_ID)
    assert isinstance(policy, CalibratedPolicy)
    return policy


def test_the_trap_set_is_large_and_varied() -> None:
    traps = load_traps()
    kinds = {trap.kind for trap in traps if not trap.hit}
    assert len(traps) >= 60
    assert {"number", "negation", "order", "entity", "opposite"} <= kinds
    assert sum(trap.hit for trap in traps) >= 20


@pytest.mark.asyncio
async def test_the_default_policy_serves_no_trap(
    similarities: dict[tuple[str, str], float],
) -> None:
    judged = await judge_all(calibrated(), similarities)
    served = [j for j in judged if not j.trap.hit and j.verdict is Verdict.HIT]
    assert not served, "traps served a look-alike's answer:\n" + describe(served)


@pytest.mark.asyncio
async def test_the_default_policy_serves_paraphrases(
    similarities: dict[tuple[str, str], float],
) -> None:
    judged = await judge_all(calibrated(), similarities)
    missed = [
        j for j in judged if j.trap.hit and not j.trap.known_miss and j.verdict is not Verdict.HIT
    ]
    assert not missed, "paraphrases missed:\n" + describe(missed)


@pytest.mark.asyncio
async def test_known_misses_are_still_missed_so_the_list_stays_true(
    similarities: dict[tuple[str, str], float],
) -> None:
    judged = await judge_all(calibrated(), similarities)
    fixed = [j for j in judged if j.trap.known_miss and j.verdict is Verdict.HIT]
    assert not fixed, "now served: drop their known_miss note:\n" + describe(fixed)


@pytest.mark.asyncio
async def test_guards_refuse_every_trap_whatever_the_threshold(
    similarities: dict[tuple[str, str], float],
) -> None:
    # At 0.3 the cosine admits nearly anything: what stops the traps is the guards alone.
    judged = await judge_all(GuardedThresholdPolicy(0.3), similarities)
    passed = [j for j in judged if not j.trap.hit and j.verdict is not Verdict.REJECTED_BY_GUARD]
    assert not passed, "no guard objected to:\n" + describe(passed)


@pytest.mark.asyncio
async def test_guards_let_paraphrases_through(
    similarities: dict[tuple[str, str], float],
) -> None:
    judged = await judge_all(GuardedThresholdPolicy(0.3), similarities)
    rejected = [
        j
        for j in judged
        if j.trap.hit
        and j.verdict is Verdict.REJECTED_BY_GUARD
        and "guard" not in (j.trap.known_miss or "")
    ]
    assert not rejected, "guards rejected paraphrases:\n" + describe(rejected)


@pytest.mark.asyncio
async def test_an_override_replaces_the_cosine_rule_but_keeps_the_guards(
    similarities: dict[tuple[str, str], float],
) -> None:
    policy = calibrated()
    trap = ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?")
    paraphrase = (
        "What are the benefits of working remotely?",
        "What are the advantages of remote work?",
    )
    assert await verdict(policy, 0.5, *trap, similarities[trap]) is Verdict.REJECTED_BY_GUARD
    # below the calibrated gray zone, so only an override lets it hit
    assert similarities[paraphrase] < policy.floor
    assert await verdict(policy, None, *paraphrase, similarities[paraphrase]) is Verdict.TOO_FAR
    assert await verdict(policy, 0.8, *paraphrase, similarities[paraphrase]) is Verdict.HIT
    assert await verdict(policy, 0.9, *paraphrase, similarities[paraphrase]) is Verdict.TOO_FAR


@pytest.mark.asyncio
async def test_an_override_of_one_takes_identical_embeddings_only_and_skips_the_guards() -> None:
    policy = calibrated()
    assert await verdict(policy, 1.0, "Is it hot?", "Is it not hot?", 0.999) is Verdict.TOO_FAR
    # same vector, different casing: to the cache these are one prompt
    assert await verdict(policy, 1.0, "convert 2 to 3", "Convert 2 to 3", 1.0 - 1e-6) is Verdict.HIT


def test_default_policy_is_the_shipped_calibration_of_the_embedder() -> None:
    policy = calibrated()
    assert policy.embedder == MODEL_ID
    assert 0 < policy.floor <= policy.accept_above <= 1
    assert policy.provenance["split"] == "calibration"


@pytest.mark.asyncio
async def test_an_operator_threshold_gives_a_guarded_static_policy() -> None:
    policy = default_policy(MODEL_ID, 0.9)
    assert isinstance(policy, GuardedThresholdPolicy)
    assert policy.floor == 0.9
    trap = ("Is Python faster than Java?", "Is Java faster than Python?")
    assert await verdict(policy, None, *trap, 0.99) is Verdict.REJECTED_BY_GUARD
    assert await verdict(policy, None, "Is Python fast?", "Is Python quick?", 0.95) is Verdict.HIT
    assert (
        await verdict(policy, None, "Is Python fast?", "Is Python quick?", 0.85) is Verdict.TOO_FAR
    )


@pytest.mark.asyncio
async def test_an_operator_threshold_of_zero_means_exact_only_unless_a_request_overrides() -> None:
    policy = default_policy(MODEL_ID, 0.0)
    assert isinstance(policy, ExactOnlyPolicy)
    assert policy.floor > 1
    assert (
        await verdict(policy, None, "Is Python fast?", "Is Python quick?", 0.99) is Verdict.TOO_FAR
    )
    assert await verdict(policy, 0.9, "Is Python fast?", "Is Python quick?", 0.99) is Verdict.HIT


def test_an_embedder_without_calibration_gets_the_strict_guarded_fallback() -> None:
    policy = default_policy("ollama/some-model-nobody-calibrated")
    assert isinstance(policy, GuardedThresholdPolicy)
    assert policy.threshold == FALLBACK_THRESHOLD


def test_a_threshold_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        default_policy(MODEL_ID, 1.5)
    with pytest.raises(ValueError, match="threshold"):
        default_policy(MODEL_ID, float("nan"))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Convert 30 Celsius to Fahrenheit", "Convert 30 Fahrenheit to Celsius", "swapped_roles"),
        ("What is the capital of Austria?", "What is the capital of Australia?", "entity"),
        ("Is a 3rd year student eligible?", "Is a 2nd year student eligible?", "number"),
        ("The girl isn't lying on the grass", "The girl is lying on the grass", "negation"),
        ("A person is folding a tortilla", "A person is unfolding a tortilla", "opposite"),
        ("Is Python faster than Java?", "Is Java faster than Python?", "swapped_roles"),
        ("What causes type I diabetes?", "What causes type II diabetes?", "number"),
        ("Who won World War I?", "Who won World War II?", "number"),
    ],
)
def test_each_guard_names_what_differs(a: str, b: str, expected: str) -> None:
    found = guards.mismatches(guards.analyse(a), guards.analyse(b))
    assert expected in {mismatch.value for mismatch in found}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "What is the difference between an introvert and an extrovert?",
            "What is the difference between an extrovert and an introvert?",
        ),
        (
            "What are the best 3rd party apps for the Apple Watch?",
            "What are the best third-party Apple Watch apps?",
        ),
        ("What is your review of Pokémon GO?", "What is your review of Pokemon Go?"),
        ("Why is India so poor?", "Why are Indian people so poor?"),
        ("How do I lose weight without dieting?", "How can I lose weight with no diet?"),
        ("What are your regrets from your 20's?", "What are your regrets from your 20s?"),
    ],
)
def test_guards_leave_alone_what_only_looks_different(a: str, b: str) -> None:
    assert guards.mismatches(guards.analyse(a), guards.analyse(b)) == ()


@pytest_asyncio.fixture
async def trap_layer(
    redis_process: RedisProcess, embedder: LocalEmbedder
) -> AsyncIterator[SemanticLayer]:
    settings = Settings(redis_timeout=2.0, verifier="off")  # the lexical policy under test
    cache = await app.build_cache(settings, redis_process.url, embedder=embedder)
    yield cache.semantic
    await cache.aclose()


@pytest.mark.asyncio
async def test_the_semantic_layer_over_redis_serves_paraphrases_and_refuses_traps(
    trap_layer: SemanticLayer,
) -> None:
    layer = trap_layer
    traps = load_traps()
    # One namespace a pair, so each query meets exactly its own cached prompt.
    queries = [Query(t.query, "llama3.2", namespace=f"trap-{i}") for i, t in enumerate(traps)]
    for trap, query in zip(traps, queries, strict=True):
        entry_query = Query(trap.cached, query.model, namespace=query.namespace)
        write = layer.begin(entry_query, CacheControl())
        assert await write.store(keys.entry_id(entry_query), f"answer to {trap.cached}", None)

    wrong = []
    for trap, query in zip(traps, queries, strict=True):
        outcome = await layer.begin(query, CacheControl()).lookup()
        served = outcome.hit is not None
        if trap.known_miss:
            continue
        if served != trap.hit:
            wrong.append(f"{trap.kind}: {trap.query!r} vs {trap.cached!r}: {outcome.status.value}")
        if served:
            assert outcome.hit is not None and outcome.hit.entry.prompt == trap.cached
        elif trap.kind == "order":
            # cosine alone would serve these (0.99 and up): the guard is what refused them
            assert outcome.status is SemanticStatus.REJECTED_BY_GUARD
    assert not wrong, "\n".join(wrong)


@pytest.mark.asyncio
async def test_sick_contradictions_rarely_pass_the_default_policy(embedder: LocalEmbedder) -> None:
    path = SHARED_DATA / "sick_contradictions_dev.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared benchmark data is not in the repository)")
    pairs = read_pairs(path)
    cached = distinct_cached(pairs)
    embedded = await embed_texts(
        embedder, [*cached, *(p.query for p in pairs)], label="embedding SICK"
    )
    policy = calibrated()
    false_hits = 0
    for lookup in nearest_lookups(pairs, cached, embedded):
        verdict = policy.decide(lookup.pair.query, lookup.nearest, lookup.similarity)
        false_hits += lookup.exact or verdict is Verdict.HIT  # every pair is a contradiction
    assert false_hits / len(pairs) <= 0.01
    assert np.isfinite(embedded.vectors).all()
