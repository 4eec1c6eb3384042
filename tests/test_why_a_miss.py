"""A miss says how close it came and what refused it: the nearest cached prompt's similarity, the
check that decided, and what a guard found, in the response and in the request log."""

from __future__ import annotations

import logging

import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request

from tests.conftest import Running
from tests.test_ask import MODEL, ask
from tests.test_request_log import REQUESTS_LOGGER, logged

STORED = "What is the boiling point of water at 1 atm?"
ANOTHER_NUMBER = "What is the boiling point of water at 2 atm?"
PARAPHRASE = "What's the boiling point of water at 1 atm?"  # cosine 0.993
UNRELATED = "Who painted the ceiling of the Sistine Chapel?"


@pytest.mark.asyncio
async def test_a_look_alike_refused_by_a_guard_says_what_the_guard_found(
    semcache: Running,
) -> None:
    await semcache.stub.Ask(ask(STORED), timeout=10)

    response = await semcache.stub.Ask(ask(ANOTHER_NUMBER, skip_store=True), timeout=10)
    streamed = [
        message
        async for message in semcache.stub.AskStream(
            build_request(pb.AskStreamRequest, ANOTHER_NUMBER, model=MODEL, skip_store=True),
            timeout=10,
        )
    ]

    assert response.source == pb.SOURCE_LLM
    assert response.decided_by == pb.SEMANTIC_CHECK_GUARD
    assert list(response.guard_findings) == ["number"]
    assert response.HasField("nearest_similarity") and response.nearest_similarity > 0.9
    start = streamed[0].start
    assert start.decided_by == pb.SEMANTIC_CHECK_GUARD
    assert list(start.guard_findings) == ["number"]
    assert start.nearest_similarity == pytest.approx(response.nearest_similarity, abs=1e-6)


@pytest.mark.asyncio
async def test_a_miss_far_from_every_cached_prompt_says_how_far(semcache: Running) -> None:
    await semcache.stub.Ask(ask(STORED), timeout=10)

    response = await semcache.stub.Ask(ask(UNRELATED), timeout=10)

    assert response.source == pb.SOURCE_LLM
    assert response.HasField("nearest_similarity") and response.nearest_similarity < 0.5
    assert response.decided_by == pb.SEMANTIC_CHECK_UNSPECIFIED  # none near enough to judge
    assert not response.guard_findings


@pytest.mark.asyncio
async def test_hits_and_an_empty_partition_carry_what_applies(semcache: Running) -> None:
    first = await semcache.stub.Ask(ask(STORED), timeout=10)
    exact = await semcache.stub.Ask(ask(STORED), timeout=10)
    semantic = await semcache.stub.Ask(ask(PARAPHRASE, skip_store=True), timeout=10)

    assert not first.HasField("nearest_similarity")  # nothing cached in its partition yet
    assert exact.source == pb.SOURCE_EXACT and not exact.HasField("nearest_similarity")
    assert semantic.source == pb.SOURCE_SEMANTIC
    assert semantic.nearest_similarity == pytest.approx(semantic.similarity, abs=1e-6)


@pytest.mark.asyncio
async def test_the_request_log_names_the_check_and_the_guards_findings(
    semcache: Running, caplog: pytest.LogCaptureFixture
) -> None:
    await semcache.stub.Ask(ask(STORED), timeout=10)
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        await semcache.stub.Ask(ask(ANOTHER_NUMBER, skip_store=True), timeout=10)

    (line,) = logged(caplog)
    assert line["decided_by"] == "guard"
    assert line["guard_findings"] == ["number"]
    assert line["nearest_similarity"] > 0.9
