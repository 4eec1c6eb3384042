"""Two names of one thing (an abbreviation and its expansion, a short and a full product name)
are one name to the guards: asking with the other is a paraphrase, not another entity."""

from __future__ import annotations

import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_server.core import guards

from tests.conftest import Running
from tests.test_ask import ask


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How do I sort an array in JS?", "How do I sort an array in JavaScript?"),
        ("What is the population of the USA?", "What is the population of the United States?"),
        ("How do I scale a deployment in K8s?", "How do I scale a deployment in Kubernetes?"),
    ],
)
def test_an_alias_is_not_another_entity(query: str, cached: str) -> None:
    assert "entity" not in guards.findings(query, cached)
    assert "entity" not in guards.findings(cached, query)


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How do I sort an array in JS?", "How do I sort an array in Python?"),
        ("What is the capital of Austria?", "What is the capital of Australia?"),
        ("What is the population of the USA?", "What is the population of the United Kingdom?"),
    ],
)
def test_another_name_is_still_another_entity(query: str, cached: str) -> None:
    assert "entity" in guards.findings(query, cached)


def test_an_exact_case_alias_does_not_match_the_common_word() -> None:
    """ "US" is the country; "us" is a pronoun, and names no group."""
    assert guards.analyse("Can the US veto it?").alias_groups
    assert not guards.analyse("Can you help us?").alias_groups


@pytest.mark.asyncio
async def test_a_question_asked_with_the_other_name_is_a_semantic_hit(semcache: Running) -> None:
    stored = await semcache.stub.Ask(ask("How do I sort an array in JavaScript?"), timeout=10)

    response = await semcache.stub.Ask(ask("How do I sort an array in JS?"), timeout=10)

    assert response.source == pb.SOURCE_SEMANTIC and response.text == stored.text
