"""Reading the change feed: the Redis Stream that the entry store appends every change to; and
the replica source, what a replica rebuilds its index from and reports expiries through.

Each change carries a sequence number, counted by the script that made it. A reader that
applied change n expects n+1 next; anything else (the stream was trimmed past it, Redis was flushed
or restored from an older file) is a `FeedGap`, and the reader rebuilds its index from the entries.
A flush or a restore shows without a write too (`verify`): the feed's epoch key is gone or another,
or the sequence counter is behind the last change read.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from semcache_server.adapters.redis_breaker import RedisBreaker
from semcache_server.adapters.redis_connection import RedisRole, unavailable_on_redis_error
from semcache_server.adapters.redis_layout import KeyLayout, text
from semcache_server.core.domain import StoreUnavailable
from semcache_server.core.ports import StoredVector, Vector

_HEAD = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, redis.call('GET', KEYS[2]) or '0'}
"""


@dataclass(frozen=True)
class FeedPosition:
    """The last change applied: its stream id and sequence number."""

    stream_id: str = "0-0"
    seq: int = 0


@dataclass(frozen=True)
class Change:
    op: str
    """'put', 'delete' or 'expire'."""
    entry_id: str
    position: FeedPosition
    partition: str = ""
    embedding_model: str = ""


@dataclass(frozen=True)
class StoredEmbedding:
    partition: str
    embedding_model: str
    vector: Vector


class FeedGap(Exception):
    """Changes were lost between the position and the next change read: rebuild."""


class RedisFeed:
    """Reads the feed on a connection of its own, so a blocking read delays no request."""

    def __init__(
        self, client: aioredis.Redis, layout: KeyLayout, breaker: RedisBreaker | None = None
    ) -> None:
        """breaker: the entry store's, shared (an outage either notices spares the other the
        wait); None: one of its own."""
        self._redis = client
        self._layout = layout
        self._head = client.register_script(_HEAD)
        self._own_breaker = breaker is None
        self.breaker = RedisBreaker(client) if breaker is None else breaker
        self.breaker.reset_on_recovery(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        timeout: float,
        block_seconds: float,
        layout: KeyLayout,
        breaker: RedisBreaker | None = None,
    ) -> RedisFeed:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout + block_seconds,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries=0),
        )
        return cls(client, layout, breaker)

    def _unavailable(self, error: RedisError | OSError) -> StoreUnavailable:
        self.breaker.failed(error)
        return StoreUnavailable(f"Redis: {error or type(error).__name__}")

    async def epoch(self) -> str:
        """This Redis's feed name, made on first use (a flushed Redis gets a new one)."""
        self.breaker.check()
        try:
            await self._redis.set(self._layout.feed_epoch, uuid.uuid4().hex, nx=True)
            raw = await self._redis.get(self._layout.feed_epoch)
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def verify(self, epoch: str, position: FeedPosition) -> None:
        """Raise FeedGap when this Redis is no longer the one the position was read from: its
        epoch is gone or another (FLUSHALL, another Redis), or its sequence counter is behind
        the position (restored from an older file). Read-only, so a full Redis answers it."""
        self.breaker.check()
        try:
            raw_epoch, raw_seq = await self._redis.mget(
                [self._layout.feed_epoch, self._layout.feed_sequence]
            )
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from None
        found = _text(raw_epoch) if raw_epoch is not None else "gone"
        if found != epoch:
            raise FeedGap(f"the feed's epoch is {found}, not {epoch}: Redis flushed or replaced")
        seq = int(_text(raw_seq)) if raw_seq is not None else 0
        if seq < position.seq:
            raise FeedGap(f"the feed counts {seq} changes, not {position.seq}: Redis was restored")

    async def head(self) -> FeedPosition:
        """The newest change's position: a reader that starts here misses nothing after it."""
        self.breaker.check()
        try:
            stream_id, seq = await self._head(keys=[self._layout.feed, self._layout.feed_sequence])
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from None
        return FeedPosition(_text(stream_id), int(_text(seq)))

    async def read(self, after: FeedPosition, block_seconds: float, count: int) -> list[Change]:
        """The changes after a position, waiting up to block_seconds for one; raises FeedGap."""
        self.breaker.check()
        try:
            reply = await self._redis.xread(
                {self._layout.feed: after.stream_id},
                count=count,
                block=max(1, int(block_seconds * 1000)),
            )
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from None
        changes: list[Change] = []
        expected = after.seq + 1
        streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply or [])
        for _stream, records in streams:
            for raw_id, fields in records:
                change = _change(_text(raw_id), fields)
                if change.position.seq != expected:
                    raise FeedGap(
                        f"expected change {expected} after {after.stream_id}, "
                        f"read {change.position.seq}"
                    )
                expected += 1
                changes.append(change)
        return changes

    async def embeddings(self, entry_ids: Sequence[str]) -> dict[str, StoredEmbedding]:
        """The stored embeddings of entries that still exist, in one round trip."""
        if not entry_ids:
            return {}
        self.breaker.check()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.hmget(
                        self._layout.entry(entry_id), ["partition", "embedding_model", "embedding"]
                    )
                rows = await pipe.execute()
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from None
        found = {}
        for entry_id, (partition, model, raw) in zip(entry_ids, rows, strict=True):
            if raw:
                found[entry_id] = StoredEmbedding(
                    _text(partition), _text(model), np.frombuffer(raw, dtype=np.float32)
                )
        return found

    async def aclose(self) -> None:
        if self._own_breaker:
            await self.breaker.aclose()
        await self._redis.aclose()


class RedisReplicaSource(RedisRole):
    """Implements `ReplicaSource` over the shared connection (the feed's reader has its own, for
    its blocking reads)."""

    async def vectors(self, embedding_model: str) -> AsyncIterator[StoredVector]:
        """Every stored embedding of embedding_model, a SCAN step of entries at a time."""
        prefix_length = len(self.layout.entry(""))
        self.connection.breaker.check()
        try:
            async for keys in self._scan_entry_keys():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key, ["partition", "embedding_model", "embedding"])
                    rows = await pipe.execute()
                for key, (partition, model, raw) in zip(keys, rows, strict=True):
                    if not raw or text(model) != embedding_model:
                        continue
                    yield StoredVector(
                        entry_id=key.decode()[prefix_length:],
                        partition=text(partition),
                        vector=np.frombuffer(raw, dtype=np.float32),
                    )
        except (RedisError, OSError) as error:
            raise self.connection.unavailable(error) from None

    @unavailable_on_redis_error
    async def sweep_expired(self, limit: int = 500) -> int:
        """Report entries whose TTL has passed to the feed (and make sure they are gone)."""
        layout = self.layout
        return int(
            await self._scripts.sweep_expired(
                keys=[layout.feed, layout.feed_sequence, layout.expiries],
                args=[self.connection.feed_max_len, layout.entry(""), limit],
            )
        )


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _change(stream_id: str, raw_fields: object) -> Change:
    fields = {_text(k): _text(v) for k, v in cast(dict[bytes, bytes], raw_fields).items()}
    return Change(
        op=fields.get("op", ""),
        entry_id=fields.get("id", ""),
        position=FeedPosition(stream_id, int(fields.get("seq", "0"))),
        partition=fields.get("partition", ""),
        embedding_model=fields.get("model", ""),
    )
