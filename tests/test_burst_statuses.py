"""A burst on one connection ends in the statuses the README documents: more calls than HTTP/2's
stream limit must meet the server's own limits (and their RESOURCE_EXHAUSTED), never the
transport's REFUSED_STREAM, which a caller sees as UNAVAILABLE and the server never hears of."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama

from tests.conftest import Running
from tests.test_ask import ask

BURST = 1_200
"""More than the 1,024 streams a connection carried before."""


@pytest.mark.asyncio
async def test_more_calls_than_a_connection_used_to_carry_all_get_their_answer(
    semcache: Running, ollama: FakeOllama
) -> None:
    """Identical misses ride one LLM call, so all stay open at once while it answers (exact
    matches only: no embedding, so no embedding queue to shed them)."""
    ollama.behaviour = Behaviour(first_token_delay=2.0)
    statuses: Counter[str] = Counter()
    sources: Counter[int] = Counter()

    async def one() -> None:
        try:
            response = await semcache.stub.Ask(ask("What is a burst?", threshold=0.0), timeout=60)
        except grpc.aio.AioRpcError as error:
            statuses[f"{error.code().name}: {error.details()}"] += 1
            return
        statuses["OK"] += 1
        sources[response.source] += 1

    await asyncio.gather(*(one() for _ in range(BURST)))

    assert statuses == Counter({"OK": BURST})
    assert sources[pb.SOURCE_LLM] == BURST
    assert ollama.call_count() == 1
