"""The catalogue: the Redis store seen whole, for admin calls (the `EntryCatalog` port of
core/admin.py). It pages and counts a namespace through the namespace's own listing (kept by the
scripts that store, delete and expire entries, `adapters/redis_layout.py`), so a tenant's figures
and pages read its own entries only; and it reads the counters every replica's tally adds to."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import cast

from redis.exceptions import RedisError, ResponseError

from semcache_server.adapters.redis_connection import RedisRole, unavailable_on_redis_error
from semcache_server.adapters.redis_layout import FIELDS, decode_entry, text
from semcache_server.core.admin import Counts, Listed
from semcache_server.core.domain import InvalidRequest

log = logging.getLogger(__name__)

MAX_CURSOR = 2**64 - 1
"""Redis's cursors are unsigned 64-bit numbers."""
_CURSOR = re.compile(r"[1-9][0-9]{0,19}")


def _cursor(token: str) -> int:
    """A page token as the catalogue gives them out: "" to start, else a cursor in plain ASCII
    decimal; nothing else reaches Redis (a huge one would fail there as an error of Redis's)."""
    if not token:
        return 0
    if not _CURSOR.fullmatch(token) or int(token) > MAX_CURSOR:
        raise InvalidRequest(
            "page_token", "is not one this server gave out: pass next_page_token as it came"
        )
    return int(token)


class RedisCatalog(RedisRole):
    """Implements `EntryCatalog`: scans, pages, counts, single entries, deletions, the counters
    and Redis's memory."""

    async def scan(self, namespace: str | None) -> AsyncIterator[Listed]:
        """Every entry of namespace (None: all), without its text: batches of 1,000 ids from the
        namespace's listing (or a SCAN of every entry), each read in one pipelined round trip."""
        self.connection.breaker.check()
        try:
            if namespace is None:
                async for keys in self._scan_entry_keys():
                    for listed in await self._listed(self._ids(keys)):
                        yield listed
                return
            await self._complete_listings()
            cursor = 0
            while True:
                cursor, ids = await self._listing_step(namespace, cursor, 1000)
                for listed in await self._listed(ids):
                    yield listed
                if cursor == 0:
                    return
        except (RedisError, OSError) as error:
            raise self.connection.unavailable(error) from None

    @unavailable_on_redis_error
    async def page(
        self, namespace: str | None, cursor: str, count: int
    ) -> tuple[list[Listed], str]:
        """One step of about count entries through namespace's listing (ZSCAN), or through every
        entry (SCAN) for None. A cursor of Redis's, so a page may hold fewer (an entry gone
        since), and the listing ends when the next cursor is ""."""
        position = _cursor(cursor)
        if namespace is None:
            position, keys = await self._redis.scan(
                position, match=self.layout.entry("*"), count=count
            )
            ids = self._ids(cast(list[bytes], keys))
        else:
            await self._complete_listings()
            position, ids = await self._listing_step(namespace, position, count)
        return await self._listed(ids), str(position) if position else ""

    @unavailable_on_redis_error
    async def count(self, namespace: str | None) -> int:
        """Entries stored now: namespace's listing, or every entry key (SCAN) for None."""
        if namespace is None:
            return sum([len(keys) async for keys in self._scan_entry_keys()])
        await self._complete_listings()
        return int(await self._scripts.count_listed(keys=[self.layout.listing(namespace)]))

    @unavailable_on_redis_error
    async def get(self, entry_id: str) -> Listed | None:
        found = await self._listed([entry_id], with_text=True)
        return found[0] if found else None

    @unavailable_on_redis_error
    async def delete(self, entry_id: str) -> bool:
        """False when there was no such entry; a deletion reaches every replica by the feed."""
        return await self._delete_entry(entry_id)

    @unavailable_on_redis_error
    async def counts(self, namespace: str | None) -> Counts:
        if namespace is not None:
            keys = [self.layout.counts(namespace)]
        else:
            keys = [key async for key in self._redis.scan_iter(self.layout.counts("*"))]
        totals: dict[str, int] = {}
        for key in keys:
            for field, value in (await self._redis.hgetall(key)).items():
                name = field.decode() if isinstance(field, bytes) else str(field)
                totals[name] = totals.get(name, 0) + int(value)
        return Counts(**{name: totals.get(name, 0) for name in Counts.__dataclass_fields__})

    @unavailable_on_redis_error
    async def memory_bytes(self) -> int:
        info = await self._redis.info("memory")
        return int(info.get("used_memory", 0))

    # --- inside ---------------------------------------------------------------------------

    async def _listing_step(self, namespace: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ZSCAN step: a cursor as SCAN's (an entry listed throughout is reached once at
        least), and about count ids."""
        cursor, pairs = await self._redis.zscan(self.layout.listing(namespace), cursor, count=count)
        return int(cursor), [text(cast(bytes, member)) for member, _ in pairs]

    async def _complete_listings(self) -> None:
        """List every entry in its namespace's listing, once per Redis: the entries an older
        semcache stored before listings existed (they are read by SCAN, all of them, so the
        first such admin call takes seconds at a million entries); a flushed Redis loses the
        mark too and is listed again."""
        if await self._redis.exists(self.layout.listings_complete):
            return
        args = [self.layout.listing(""), self.layout.entry("")]
        async for keys in self._scan_entry_keys():
            await self._scripts.list_existing(keys=keys, args=args)
        try:
            await self._redis.set(self.layout.listings_complete, "1")
        except ResponseError as error:  # a full Redis: listed all the same, marked next time
            log.debug("cannot mark the listings complete: %s", error)
            return
        log.info("every entry is listed in its namespace's listing now")

    async def _listed(self, ids: list[str], *, with_text: bool = False) -> list[Listed]:
        """The entries and their deadlines, in one round trip, skipping those gone meanwhile.
        A plain pipeline, not MULTI: a full Redis refuses every command of a transaction."""
        fields = [name for name in FIELDS if with_text or name != "text"]
        async with self._redis.pipeline(transaction=False) as pipeline:
            for entry_id in ids:
                pipeline.hmget(self.layout.entry(entry_id), fields)
                pipeline.pttl(self.layout.entry(entry_id))
            replies = await pipeline.execute()
        now = time.time()
        listed = []
        for index, entry_id in enumerate(ids):
            values, ttl_ms = replies[2 * index], int(replies[2 * index + 1])
            if values[0] is None or ttl_ms == -2:
                continue  # gone, or expired between the two reads
            row = dict(zip(fields, values, strict=True))
            entry = decode_entry(entry_id, [row.get(name) for name in FIELDS])
            listed.append(Listed(entry, now + ttl_ms / 1000 if ttl_ms >= 0 else None))
        return listed
