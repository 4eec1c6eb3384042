"""The replication adapter alone, on a real redis-server: what a replica's index holds after
the feed, a snapshot, a gap or an expiry. (`test_replicas.py` shows the same through real
`semcache serve` processes, as a user sees it.)"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import redis
from semcache_server.adapters.indexes.tiered import TieredIndex
from semcache_server.adapters.redis_feed import RedisFeed, RedisReplicaSource
from semcache_server.adapters.redis_store import RedisEntryStore
from semcache_server.adapters.replication import IndexReplica, ReplicationSettings
from semcache_server.core.domain import CachedEntry
from semcache_server.testing.redis_process import RedisProcess

MODEL = "test/embedder"
DIMENSIONS = 32
PARTITIONS = ("partition-a", "partition-b")


def entry_id(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()[:32]


def vector_of(number: int) -> np.ndarray:
    rng = np.random.default_rng(number)
    vector = rng.standard_normal(DIMENSIONS).astype(np.float32)
    return vector / np.linalg.norm(vector)


def entry(number: int) -> CachedEntry:
    return CachedEntry(
        entry_id=entry_id(number),
        partition=PARTITIONS[number % 2],
        prompt=f"prompt {number}",
        text=f"answer {number}",
        model="llama3.2",
        system="",
        options={},
        history=(),
        namespace="",
        embedding_model=MODEL,
        created_at=0.0,
    )


class Harness:
    def __init__(self, redis: RedisProcess, tmp_path: Path, feed_max_len: int) -> None:
        self.redis = redis
        self.tmp_path = tmp_path
        self.store = RedisEntryStore.from_url(redis.url, timeout=2.0, feed_max_len=feed_max_len)
        self.replicas: list[IndexReplica] = []

    async def put(self, numbers: range | list[int], ttl: float | None = None) -> None:
        for number in numbers:
            await self.store.put(entry(number), vector_of(number), ttl)

    def replica(self, name: str, graph_rows: int = 100, follow: bool = True) -> IndexReplica:
        feed = RedisFeed.from_url(self.redis.url, 2.0, 0.2, self.store.layout)
        settings = ReplicationSettings(
            snapshot_dir=self.tmp_path / name,
            snapshot_interval=0,
            block_seconds=0.2,
            sweep_interval=0.1,
            retry_seconds=0.1,
        )
        source = RedisReplicaSource(self.store.connection)
        made = IndexReplica(TieredIndex(graph_rows), source, feed, MODEL, settings)
        self.replicas.append(made)
        return made

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.stop()
        await self.store.aclose()


@pytest_asyncio.fixture
async def harness(redis_process: RedisProcess, tmp_path: Path) -> AsyncIterator[Harness]:
    made = Harness(redis_process, tmp_path, feed_max_len=100_000)
    yield made
    await made.close()


async def eventually(check: Callable[[], bool], seconds: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def contents(index: TieredIndex) -> set[tuple[str, str]]:
    return set(index.entries())


async def nearest_ids(index: TieredIndex, numbers: range) -> list[str]:
    """The nearest entry to a slightly moved copy of each entry's vector (an unambiguous answer,
    so two graphs built in different orders must agree on it)."""
    found = []
    for number in numbers:
        rng = np.random.default_rng(number + 10_000)
        probe = vector_of(number) + 0.05 * rng.standard_normal(DIMENSIONS).astype(np.float32)
        neighbours = await index.nearest(PARTITIONS[number % 2], probe, k=1)
        found.append(neighbours[0].entry_id if neighbours else "")
    return found


@pytest.mark.asyncio
async def test_a_snapshot_plus_the_feed_reproduces_the_index(harness: Harness) -> None:
    await harness.put(range(300))  # 150 a partition: both become HNSW graphs (graph_rows 100)
    writer = harness.replica("writer")
    await writer.load()
    writer.start_following()
    await writer.snapshot()
    await writer.stop()
    await harness.put(range(300, 400))
    for number in range(0, 40):
        await harness.store.delete(entry_id(number))

    from_snapshot = harness.replica("writer")  # the same snapshot directory
    from_scratch = harness.replica("scratch")
    for replica in (from_snapshot, from_scratch):
        await replica.load()
        replica.start_following()
    expected = {(PARTITIONS[n % 2], entry_id(n)) for n in range(40, 400)}

    assert await eventually(lambda: contents(from_snapshot.index) == expected)
    assert contents(from_scratch.index) == expected
    assert from_snapshot.index.graph_partitions() and from_scratch.index.graph_partitions()
    live = range(40, 400)
    assert await nearest_ids(from_snapshot.index, live) == [entry_id(n) for n in live]
    assert await nearest_ids(from_scratch.index, live) == [entry_id(n) for n in live]


@pytest.mark.asyncio
async def test_a_follower_applies_puts_deletions_and_expiries(harness: Harness) -> None:
    follower = harness.replica("follower")
    await follower.load()
    follower.start_following()

    await harness.put(range(10))
    await harness.put([10], ttl=0.3)
    assert await eventually(lambda: len(follower.index) == 11)
    await harness.store.delete(entry_id(3))

    gone = (entry_id(3), entry_id(10))
    assert await eventually(lambda: not any(e in follower.index for e in gone))
    assert len(follower.index) == 9


@pytest.mark.asyncio
async def test_a_replica_behind_a_trimmed_feed_rebuilds(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    harness = Harness(redis_process, tmp_path, feed_max_len=10)
    try:
        behind = harness.replica("behind")
        await behind.load()
        await harness.put(range(500))  # the feed keeps only the last ~100 of these changes
        behind.start_following()

        assert await eventually(lambda: len(behind.index) == 500, seconds=5)
    finally:
        await harness.close()


@pytest.mark.asyncio
async def test_a_snapshot_of_another_redis_is_not_loaded(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    harness = Harness(redis_process, tmp_path, feed_max_len=1000)
    try:
        await harness.put(range(20))
        first = harness.replica("shared")
        await first.load()
        await first.snapshot()
        with redis.Redis.from_url(redis_process.url) as client:
            client.flushall()  # a new Redis at the same address: the snapshot's entries are gone
        await harness.put(range(100, 105))

        second = harness.replica("shared")
        await second.load()

        assert {e for _, e in second.index.entries()} == {entry_id(n) for n in range(100, 105)}
    finally:
        await harness.close()
