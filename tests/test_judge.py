"""The optional LLM judge: asked only where the verifier is unsure, through the real ollama
client against the Ollama-protocol server; yes is a hit, no, silence or a late answer a miss."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio
from semcache_server.adapters.verifiers.ollama_judge import OllamaJudge, judge_prompt
from semcache_server.core.domain import Candidate, Check, Judgement, Verdict
from semcache_server.core.verified_policy import JointModel, VerifiedPolicy
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama

QUERY = "Which artist created the Mona Lisa?"
CACHED = "Who painted the Mona Lisa?"
JUDGE_MODEL = "llama3.2"

pytestmark = pytest.mark.asyncio


class FixedVerifier:
    """A verifier that always gives the same logit, to place a pair where the test wants it."""

    def __init__(self, logit: float) -> None:
        self.logit = logit
        self.calls = 0

    @property
    def model_id(self) -> str:
        return "test/fixed"

    async def scores(self, query: str, candidates: Sequence[str]) -> Sequence[float]:
        self.calls += 1
        return [self.logit] * len(candidates)

    async def aclose(self) -> None:
        return None


def policy(logit: float, judge: OllamaJudge | None) -> VerifiedPolicy:
    """probability = sigmoid(logit): 0 -> 0.5 (unsure), 4 -> 0.98 (sure)."""
    fitted = VerifiedPolicy(
        embedder="test/embedder",
        verifier_model="test/fixed",
        gray_floor=0.5,
        cutoff=0.9,
        model=JointModel(cosine_weight=0.0, logit_weight=1.0, bias=0.0),
        judge_band=(0.2, 0.8),
    )
    return fitted.with_verifier(FixedVerifier(logit), judge)


@pytest_asyncio.fixture
async def judge(ollama: FakeOllama, request: pytest.FixtureRequest) -> AsyncIterator[OllamaJudge]:
    """A judge on the Ollama-protocol server; a test marked judge_timeout(s) sets its timeout."""
    marker = request.node.get_closest_marker("judge_timeout")
    judge = OllamaJudge(ollama.url, JUDGE_MODEL, marker.args[0] if marker else 2.0)
    yield judge
    await judge.aclose()


async def ask_unsure(judge: OllamaJudge) -> Judgement:
    """A pair the verifier is unsure about (probability 0.5), so the judge decides."""
    return await policy(0.0, judge).judge(QUERY, [Candidate(CACHED, 0.9)])


async def test_an_unsure_verifier_defers_to_a_judge_that_says_yes(
    ollama: FakeOllama, judge: OllamaJudge
) -> None:
    ollama.replies[judge_prompt(QUERY, CACHED)] = "yes"
    judgement = await ask_unsure(judge)
    assert judgement.verdict is Verdict.HIT and judgement.chosen == 0
    assert judgement.decided_by is Check.JUDGE
    assert judgement.judge_seconds is not None and judgement.judge_seconds > 0
    assert ollama.call_count() == 1


async def test_a_judge_that_says_no_makes_a_miss(ollama: FakeOllama, judge: OllamaJudge) -> None:
    ollama.replies[judge_prompt(QUERY, CACHED)] = "No."
    judgement = await ask_unsure(judge)
    assert judgement.verdict is Verdict.TOO_FAR
    assert judgement.decided_by is Check.JUDGE


@pytest.mark.judge_timeout(0.3)
@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(first_token_delay=1.0), Behaviour(error_status=500)],
    ids=["late", "failing"],
)
async def test_a_late_or_failing_judge_means_a_miss(
    ollama: FakeOllama, judge: OllamaJudge, behaviour: Behaviour
) -> None:
    ollama.replies[judge_prompt(QUERY, CACHED)] = "yes"
    ollama.behaviour = behaviour
    judgement = await ask_unsure(judge)
    assert judgement.verdict is Verdict.TOO_FAR
    assert judgement.decided_by is Check.JUDGE


async def test_a_judge_that_answers_neither_yes_nor_no_means_a_miss(judge: OllamaJudge) -> None:
    judgement = await ask_unsure(judge)  # the server echoes the prompt back
    assert judgement.verdict is Verdict.TOO_FAR


async def test_a_sure_verifier_never_asks_the_judge(ollama: FakeOllama, judge: OllamaJudge) -> None:
    sure_hit = await policy(4.0, judge).judge(QUERY, [Candidate(CACHED, 0.9)])
    sure_miss = await policy(-4.0, judge).judge(QUERY, [Candidate(CACHED, 0.9)])
    assert sure_hit.verdict is Verdict.HIT and sure_hit.decided_by is Check.VERIFIER
    assert sure_miss.verdict is Verdict.TOO_FAR and sure_miss.decided_by is Check.VERIFIER
    assert ollama.call_count() == 0
