"""--speculative-llm: the LLM starts while the semantic layer decides, and a hit cancels it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from semcache.v1 import semcache_pb2 as pb
from semcache_server.embedders.local import LocalEmbedder

from tests.conftest import Running, service_settings, start_service
from tests.ollama_fake import Behaviour, FakeOllama
from tests.redis_process import RedisProcess, free_port
from tests.test_ask import PARAPHRASE, QUESTION, ask


@pytest_asyncio.fixture
async def speculative(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> AsyncIterator[Running]:
    settings = service_settings(redis_process, ollama, speculative_llm=True)
    running = await start_service(settings, embedder)
    yield running
    await running.stop()


@pytest.mark.asyncio
async def test_a_miss_is_answered_once_and_stored(speculative: Running, ollama: FakeOllama) -> None:
    response = await speculative.stub.Ask(ask(), timeout=10)
    exact = await speculative.stub.Ask(ask(), timeout=10)

    assert response.source == pb.SOURCE_LLM and response.stored
    assert response.text == ollama.reply_for(QUESTION)
    assert exact.source == pb.SOURCE_EXACT
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_semantic_hit_cancels_the_speculative_llm_call(
    speculative: Running, ollama: FakeOllama
) -> None:
    await speculative.stub.Ask(ask(), timeout=10)
    ollama.behaviour = Behaviour(first_token_delay=1.0)

    response = await speculative.stub.Ask(ask(PARAPHRASE), timeout=10)

    assert response.source == pb.SOURCE_SEMANTIC
    assert ollama.call_count() == 2  # the speculative call was made...
    assert await ollama.wait_for_disconnect_async(5)  # ...and closed, not left generating
    assert response.text == ollama.reply_for(QUESTION)


@pytest.mark.asyncio
async def test_a_semantic_hit_is_served_when_the_speculative_call_fails(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    warm = await start_service(service_settings(redis_process, ollama), embedder)
    await warm.stub.Ask(ask(), timeout=10)
    await warm.stop()
    offline = service_settings(
        redis_process, ollama, speculative_llm=True, ollama_host=f"127.0.0.1:{free_port()}"
    )
    running = await start_service(offline, embedder)
    try:
        response = await running.stub.Ask(ask(PARAPHRASE), timeout=10)
    finally:
        await running.stop()

    assert response.source == pb.SOURCE_SEMANTIC
