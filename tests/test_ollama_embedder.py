"""The `ollama` embedder: prompts embedded by an Ollama embedding model over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import pytest_asyncio
import redis
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_server import app
from semcache_server.adapters.embedders.ollama import OllamaEmbedder
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import service_settings
from tests.test_ask import ask


@pytest_asyncio.fixture
async def stub_with_ollama_embedder(
    redis_process: RedisProcess, ollama: FakeOllama
) -> AsyncIterator[semcache_pb2_grpc.SemcacheServiceStub]:
    settings = service_settings(redis_process, ollama, embedder="ollama")
    service = await app.start(settings, embedder=OllamaEmbedder(ollama.url, "nomic-embed-text"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
    await service.stop(grace=None)


@pytest.mark.asyncio
async def test_entries_carry_the_ollama_models_embedding(
    stub_with_ollama_embedder: semcache_pb2_grpc.SemcacheServiceStub,
    ollama: FakeOllama,
    redis_process: RedisProcess,
) -> None:
    response = await stub_with_ollama_embedder.Ask(ask("What is Redis?"), timeout=10)

    with redis.Redis.from_url(redis_process.url) as client:
        entry = client.hgetall(f"semcache:v1:entry:{response.entry_id}")
    vector = np.frombuffer(entry[b"embedding"], dtype=np.float32)
    assert entry[b"embedding_model"] == b"ollama/nomic-embed-text"
    assert np.allclose(vector, ollama.embedding_for("What is Redis?"), atol=1e-6)
    assert ollama.call_count("/api/embed") == 1


@pytest.mark.asyncio
async def test_a_prompt_embedded_close_by_is_a_semantic_hit(
    stub_with_ollama_embedder: semcache_pb2_grpc.SemcacheServiceStub, ollama: FakeOllama
) -> None:
    ollama.embedding_overrides["Tell me about Redis"] = ollama.embedding_for("What is Redis?")
    await stub_with_ollama_embedder.Ask(ask("What is Redis?"), timeout=10)

    response = await stub_with_ollama_embedder.Ask(ask("Tell me about Redis"), timeout=10)

    assert response.source == pb.SOURCE_SEMANTIC
    assert response.matched_prompt == "What is Redis?"
    assert ollama.call_count("/api/chat") == 1


@pytest.mark.asyncio
async def test_a_failing_embedder_is_a_miss_not_a_failed_request(
    stub_with_ollama_embedder: semcache_pb2_grpc.SemcacheServiceStub, ollama: FakeOllama
) -> None:
    ollama.model_behaviours["nomic-embed-text"] = Behaviour(error_status=500)

    response = await stub_with_ollama_embedder.Ask(ask("What is Redis?"), timeout=10)
    again = await stub_with_ollama_embedder.Ask(ask("What is Redis?"), timeout=10)

    assert response.source == pb.SOURCE_LLM
    assert response.semantic_status == pb.SEMANTIC_STATUS_UNAVAILABLE
    assert response.stored  # exact-only entry: no embedding to store
    assert again.source == pb.SOURCE_EXACT
