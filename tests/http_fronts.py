"""A served semcache with its HTTP front on, for the tests of the Ollama and OpenAI APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.ports import Verifier
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess, free_port

from tests.conftest import Running, service_settings, start_service


async def serve_http(
    redis: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
    **overrides: object,
) -> Running:
    settings = service_settings(redis, ollama, http_port=free_port(), **overrides)
    return await start_service(settings, embedder, verifier)


def base_url(running: Running) -> str:
    return f"http://127.0.0.1:{running.service.http_port}"


@pytest_asyncio.fixture
async def http_semcache(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> AsyncIterator[Running]:
    running = await serve_http(redis_process, ollama, embedder, verifier)
    yield running
    await running.stop()
