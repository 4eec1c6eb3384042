"""The embedded default's Redis: owned by the service, kept across restarts, stopped with it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_server import app
from semcache_server.adapters.embedded_redis import process_running
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.settings import Settings
from semcache_server.testing.ollama_protocol import FakeOllama

from tests.test_ask import ask


@pytest.mark.asyncio
async def test_stopping_the_service_stops_its_redis_and_a_restart_finds_the_entries(
    tmp_path: Path, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    settings = Settings(port=0, state_dir=tmp_path / "state", ollama_host=ollama.url)
    sources = []
    pids = []
    for _ in range(2):
        service = await app.start(settings, embedder=embedder)
        assert service.embedded_redis is not None
        pids.append(service.embedded_redis.pid)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            sources.append((await stub.Ask(ask(), timeout=10)).source)
        await service.stop(grace=None)

    assert sources == [pb.SOURCE_LLM, pb.SOURCE_EXACT]
    assert not any(process_running(pid) for pid in pids)
