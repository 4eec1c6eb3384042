"""--speculative-llm: the LLM starts while the semantic layer decides, and a hit cancels it.

By default only streams speculate (their reader sees the first token sooner); `all` speculates for
unary calls too, and `off` never does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from semcache.v1 import semcache_pb2 as pb
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.domain import Speculation
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess, free_port

from tests.conftest import Running, service_settings, start_service
from tests.test_ask import PARAPHRASE, QUESTION, ask
from tests.test_ask_stream import receive, stream_request


@pytest_asyncio.fixture
async def speculative(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> AsyncIterator[Running]:
    settings = service_settings(redis_process, ollama, speculative_llm=Speculation.ALL)
    running = await start_service(settings, embedder)
    yield running
    await running.stop()


async def stream_source(running: Running, prompt: str) -> int:
    received = await receive(running, stream_request(prompt))
    received.assert_well_formed()
    return int(received.start.source)


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
async def test_by_default_streams_speculate_and_unary_calls_do_not(
    semcache: Running, ollama: FakeOllama
) -> None:
    await semcache.stub.Ask(ask(), timeout=10)

    unary = await semcache.stub.Ask(ask(PARAPHRASE), timeout=10)
    assert unary.source == pb.SOURCE_SEMANTIC
    assert ollama.call_count() == 1  # the unary hit never reached Ollama

    assert await stream_source(semcache, PARAPHRASE) == pb.SOURCE_SEMANTIC
    assert ollama.call_count() == 2  # the streamed hit had started a call, then cancelled it


@pytest.mark.asyncio
async def test_off_never_calls_the_llm_for_a_hit(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    settings = service_settings(redis_process, ollama, speculative_llm=Speculation.OFF)
    running = await start_service(settings, embedder)
    try:
        await running.stub.Ask(ask(), timeout=10)
        assert await stream_source(running, PARAPHRASE) == pb.SOURCE_SEMANTIC
        assert (await running.stub.Ask(ask(PARAPHRASE), timeout=10)).source == pb.SOURCE_SEMANTIC
    finally:
        await running.stop()

    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_an_exact_hit_never_reaches_the_llm(speculative: Running, ollama: FakeOllama) -> None:
    await speculative.stub.Ask(ask(), timeout=10)

    assert await stream_source(speculative, QUESTION) == pb.SOURCE_EXACT
    assert (await speculative.stub.Ask(ask(), timeout=10)).source == pb.SOURCE_EXACT
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_semantic_hit_is_served_when_the_speculative_call_fails(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    warm = await start_service(service_settings(redis_process, ollama), embedder)
    await warm.stub.Ask(ask(), timeout=10)
    await warm.stop()
    offline = service_settings(
        redis_process,
        ollama,
        speculative_llm=Speculation.ALL,
        ollama_host=f"127.0.0.1:{free_port()}",
    )
    running = await start_service(offline, embedder)
    try:
        response = await running.stub.Ask(ask(PARAPHRASE), timeout=10)
    finally:
        await running.stop()

    assert response.source == pb.SOURCE_SEMANTIC
