"""The semantic layer's per-request state, through the chain the composition root wires: the
prompt is embedded once for lookup and write, and a failed lookup embedding is tried again for
the write, so the entry still becomes a semantic candidate."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis
from semcache_server import app
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.domain import (
    CacheControl,
    EmbedderUnavailable,
    Query,
    SemanticStatus,
    Source,
)
from semcache_server.core.ports import Embeddings
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import service_settings

pytestmark = pytest.mark.asyncio


class CountingEmbedder:
    """The real embedder, counting calls, failing the first `failures` of them."""

    def __init__(self, inner: LocalEmbedder, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        self.calls += 1
        if self.calls <= self.failures:
            raise EmbedderUnavailable("a blip")
        return await self.inner.embed(texts)

    async def aclose(self) -> None:
        return None


async def ask_twice(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: CountingEmbedder
) -> tuple[Source, SemanticStatus | None, bool, Source]:
    settings = service_settings(redis_process, ollama, verifier="off")
    cache = await app.build_cache(settings, redis_process.url, embedder=embedder)
    try:
        first = await cache.chain.ask(
            Query("How do I reverse a list in Python?", "llama3.2"), CacheControl()
        )
        again = await cache.chain.ask(
            Query("How can I reverse a Python list?", "llama3.2"), CacheControl(skip_store=True)
        )
    finally:
        await cache.aclose()
    return (
        first.origin.source,
        first.origin.semantic_status,
        first.completion.stored,
        again.origin.source,
    )


async def test_a_miss_embeds_its_prompt_once_for_lookup_and_write(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    counting = CountingEmbedder(embedder)
    source, status, stored, paraphrase = await ask_twice(redis_process, ollama, counting)
    assert (source, status, stored) == (Source.LLM, SemanticStatus.SEARCHED, True)
    assert paraphrase is Source.SEMANTIC
    assert counting.calls == 2  # one a request: the miss, then the paraphrase


async def test_a_failed_lookup_embedding_is_tried_again_for_the_write(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    flaky = CountingEmbedder(embedder, failures=1)
    source, status, stored, paraphrase = await ask_twice(redis_process, ollama, flaky)
    assert (source, status, stored) == (Source.LLM, SemanticStatus.UNAVAILABLE, True)
    with redis.Redis.from_url(redis_process.url) as client:
        (key,) = client.keys("semcache:v1:entry:*")
        assert client.hget(key, "embedding")  # stored with its vector after all
    assert paraphrase is Source.SEMANTIC
