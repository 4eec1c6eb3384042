"""The Redis entry store: cached answers with their embeddings and metadata, in Redis.

It plays the entries' role only (the `EntryStore` port, and the `HotEntrySource` the in-memory
copy reads through); the catalogue, the claims, the tally and the replica source are classes of
their own over the same `RedisConnection` (`adapters/redis_connection.py`). The exact layer is one
round trip (a script that counts the hit and returns the entry); every write and deletion reaches
the change feed in the script that makes it (`adapters/redis_layout.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np
import numpy.typing as npt
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError

from semcache_server.adapters.redis_connection import (
    RedisConnection,
    RedisRole,
    unavailable_on_redis_error,
)
from semcache_server.adapters.redis_layout import (
    DEFAULT_FEED_MAX_LEN,
    DEFAULT_PREFIX,
    FIELDS,
    decode_entry,
    encode_entry,
)
from semcache_server.core.domain import CachedEntry


class RedisEntryStore(RedisRole):
    """Entries by id: fetched (a hit counted or not, with the time they have left), counted,
    written, deleted. Implements `EntryStore` and `HotEntrySource`."""

    def __init__(self, connection: RedisConnection, *, owns_connection: bool = False) -> None:
        """owns_connection: aclose() closes the connection too (a store made by from_url)."""
        super().__init__(connection)
        self._owns_connection = owns_connection

    @classmethod
    def from_url(
        cls,
        url: str,
        timeout: float,
        prefix: str = DEFAULT_PREFIX,
        feed_max_len: int = DEFAULT_FEED_MAX_LEN,
    ) -> RedisEntryStore:
        """A store on a connection of its own, for a tool or a test that needs entries alone;
        the server shares one connection among every role (`app.build_cache`)."""
        connection = RedisConnection.from_url(url, timeout, prefix, feed_max_len)
        return cls(connection, owns_connection=True)

    @property
    def reachable(self) -> bool:
        """False while the breaker skips Redis: its changes cannot reach this replica then."""
        return self.connection.breaker.closed

    async def fetch_hit(self, entry_id: str) -> CachedEntry | None:
        entry, _ = await self.fetch_hit_with_ttl(entry_id)
        return entry

    @unavailable_on_redis_error
    async def fetch_hit_with_ttl(self, entry_id: str) -> tuple[CachedEntry | None, int | None]:
        """The exact layer's one round trip: the entry, its hit counted, and the ms it has left
        to live (None: no TTL). EVALSHA is sent directly: redis-py's script object costs more
        than the round trip itself on this path; it is loaded again if Redis lost it (a restart,
        SCRIPT FLUSH)."""
        key = self.layout.entry(entry_id)
        fetch_hit = self._scripts.fetch_hit
        try:
            values = await self._redis.evalsha(fetch_hit.sha, 1, key, *FIELDS)
        except NoScriptError:
            values = await fetch_hit(keys=[key], args=list(FIELDS))
        except ResponseError as error:
            if not isinstance(error, OutOfMemoryError) and "OOM" not in str(error):
                raise
            return await self.fetch_with_ttl(entry_id)  # a full Redis that refused the script
        if not values:
            return None, None
        ttl_ms = int(values[-1])
        return decode_entry(entry_id, values[:-1]), ttl_ms if ttl_ms >= 0 else None

    @unavailable_on_redis_error
    async def fetch(self, entry_id: str) -> CachedEntry | None:
        values = cast(
            list[bytes | None], await self._redis.hmget(self.layout.entry(entry_id), list(FIELDS))
        )
        return decode_entry(entry_id, values) if values[0] is not None else None

    @unavailable_on_redis_error
    async def fetch_with_ttl(self, entry_id: str) -> tuple[CachedEntry | None, int | None]:
        """The entry as it is and the ms it has left to live (None: no TTL), in one round trip."""
        key = self.layout.entry(entry_id)
        async with self._redis.pipeline(transaction=True) as pipeline:
            pipeline.hmget(key, list(FIELDS))
            pipeline.pttl(key)
            values, ttl_ms = await pipeline.execute()
        if values[0] is None:
            return None, None
        return decode_entry(entry_id, values), int(ttl_ms) if int(ttl_ms) >= 0 else None

    @unavailable_on_redis_error
    async def record_hit(self, entry_id: str) -> int:
        return int(await self._scripts.record_hit(keys=[self.layout.entry(entry_id)]))

    @unavailable_on_redis_error
    async def record_hits(self, counts: Mapping[str, int]) -> None:
        """Add hits counted elsewhere (served from memory), in one round trip; an entry gone
        meanwhile stays gone."""
        record_hit = self._scripts.record_hit
        async with self._redis.pipeline(transaction=False) as pipeline:
            for entry_id, count in counts.items():
                await record_hit(keys=[self.layout.entry(entry_id)], args=[count], client=pipeline)
            await pipeline.execute()

    @unavailable_on_redis_error
    async def put(
        self,
        entry: CachedEntry,
        embedding: npt.NDArray[np.float32] | None,
        ttl_seconds: float | None,
    ) -> None:
        # One script: a reader sees the whole entry or none of it, and the feed reports it. A
        # rewrite of an existing entry (a refresh after skip_lookup) keeps its hit count.
        ttl_ms = max(1, int(ttl_seconds * 1000)) if ttl_seconds else 0
        await self._scripts.put(
            keys=[*self.layout.feed_keys(entry.entry_id), self.layout.listing(entry.namespace)],
            args=[
                entry.entry_id,
                ttl_ms,
                self.connection.feed_max_len,
                entry.partition,
                entry.embedding_model,
                *encode_entry(entry, embedding),
            ],
        )

    @unavailable_on_redis_error
    async def delete(self, entry_id: str) -> bool:
        """False when there was no such entry; a deletion reaches every replica by the feed."""
        return await self._delete_entry(entry_id)

    async def aclose(self) -> None:
        """Closes the connection only when this store made it (from_url)."""
        if self._owns_connection:
            await self.connection.aclose()
