"""A full Redis (maxmemory reached, noeviction) refuses writes, not reads: stored answers are
still served, and a miss is answered by the LLM without being stored. An eviction policy that may
drop what the cache must keep is named at start-up. Real redis-server processes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import OutOfMemoryError
from semcache.v1 import semcache_pb2 as pb
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.test_redis_faults import start_up_log
from tests.test_replicas import ask

STORED = "How many legs does a spider have?"
PARAPHRASE = "How many legs do spiders have?"
FILLER = b"x" * 65_536
MARGIN = 1 << 20


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(
        tmp_path / "redis", extra_args=["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]
    ).start()
    yield process
    process.stop()


def fill(url: str) -> int:
    """Write until Redis refuses with OOM; the number of values it took. Then maxmemory goes a
    little below what Redis holds, so that the buffers a closed connection frees leave it full."""
    with redis.Redis.from_url(url) as client:
        for number in range(10_000):
            try:
                client.set(f"filler:{number}", FILLER)
            except OutOfMemoryError:
                used = int(client.info("memory")["used_memory"])
                client.config_set("maxmemory", used - MARGIN)
                return number
    raise AssertionError("Redis took 640 MB without refusing a write: no maxmemory?")


def test_a_full_redis_still_serves_stored_answers(
    tmp_path: Path, small_redis: RedisProcess, ollama: FakeOllama
) -> None:
    replica = ServeProcess(
        tmp_path / "state", ollama.url, ["--redis-url", small_redis.url, "--redis-timeout", "0.3"]
    ).start()
    try:
        stored = ask(replica.target, STORED)
        filled = fill(small_redis.url)
        again = ask(replica.target, STORED)
        similar = ask(replica.target, PARAPHRASE)
        fresh = ask(replica.target, "What is the boiling point of water at sea level?")
        fresh_again = ask(replica.target, "What is the boiling point of water at sea level?")
    finally:
        _, output = replica.terminate()

    assert stored.source == pb.SOURCE_LLM and stored.stored
    assert filled > 0
    assert again.source == pb.SOURCE_EXACT and again.text == stored.text
    assert similar.source == pb.SOURCE_SEMANTIC and similar.text == stored.text
    assert fresh.source == pb.SOURCE_LLM and fresh.text and not fresh.stored
    assert fresh_again.source == pb.SOURCE_LLM  # nothing was stored
    assert "maxmemory-policy" not in output  # noeviction is right


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("policy", "warned"),
    [("noeviction", False), ("allkeys-lru", True), ("volatile-ttl", True)],
)
async def test_start_up_names_an_eviction_policy_that_may_drop_the_feed_or_the_claims(
    tmp_path: Path,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warned: bool,
) -> None:
    records = await start_up_log(tmp_path, ollama, embedder, caplog, ["--maxmemory-policy", policy])

    warnings = [record for record in records if "maxmemory-policy" in record.getMessage()]
    assert [record.levelno for record in warnings] == ([logging.WARNING] if warned else [])
    assert all(policy in record.getMessage() for record in warnings)
