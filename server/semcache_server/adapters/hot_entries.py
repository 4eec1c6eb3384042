"""Hot entries: an in-process copy of recently served entries in front of the Redis store.

An exact hit that needs Redis waits for a round trip, and under grpc.aio any real I/O in a handler
costs another turn of the event loop: measured here, 1.66x a bare gRPC round trip against 1.22x
when the entry is already in memory (issue #11). So entries that were just served are kept, up to
`capacity`, and served again from memory.

Staleness is bounded by the change feed, which every replica follows anyway: each change (a put,
a deletion, an expiry) drops the entry here (`forget`), a rebuild drops them all (`clear`), and
the copy is used only while the follower has read the feed within `FOLLOW_PATIENCE` seconds
(`confirm`) and Redis's breaker is closed: in an outage the cache is a miss, as without copies.
A change made on this replica drops its entry at once; one made on another replica arrives
within the feed's lag (about 10 ms; see bench/replicas.py). An entry with a TTL is not kept past
its deadline.

Hits served from memory are counted here and added to Redis in batches, so an entry's `hits` is
exact on the replica that serves it and catches up on the others within `FLUSH_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from semcache_server.core.domain import CachedEntry, StoreUnavailable
from semcache_server.core.ports import HotEntrySource, Vector

log = logging.getLogger(__name__)

FOLLOW_PATIENCE = 2.0
"""Seconds after the follower's last read of the feed during which copies may be served; the
follower reads at least every --redis-timeout plus its 0.5-s block."""
FLUSH_SECONDS = 0.2
"""How often hits served from memory are added to Redis."""


@dataclass(frozen=True)
class _Hot:
    entry: CachedEntry
    expires_at: float | None
    """time.monotonic() deadline of an entry with a TTL."""


class HotEntries:
    """The EntryStore the cache layers use: a bounded copy of hot entries over the store
    (a `HotEntrySource`: the Redis entry store in the server).

    `forget`, `clear` and `confirm` are for the feed follower (adapters/replication.py).
    """

    def __init__(self, store: HotEntrySource, capacity: int) -> None:
        self._store = store
        self._capacity = capacity
        self._hot: OrderedDict[str, _Hot] = OrderedDict()
        self._pending_hits: Counter[str] = Counter()
        self._changes = 0
        """Counts invalidations: an entry read while one happened is not kept."""
        self._confirmed_at = float("-inf")
        self._flusher: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._hot)

    # --- the feed follower's side ---------------------------------------------------------

    def confirm(self) -> None:
        """The follower has just read the feed: what it has not reported has not changed."""
        self._confirmed_at = time.monotonic()

    def forget(self, entry_id: str) -> None:
        self._changes += 1
        self._hot.pop(entry_id, None)

    def clear(self) -> None:
        self._changes += 1
        self._hot.clear()

    # --- EntryStore -----------------------------------------------------------------------

    async def fetch_hit(self, entry_id: str) -> CachedEntry | None:
        return await self._read(entry_id, self._store.fetch_hit_with_ttl, count_hit=True)

    async def fetch(self, entry_id: str) -> CachedEntry | None:
        return await self._read(entry_id, self._store.fetch_with_ttl, count_hit=False)

    async def _read(
        self,
        entry_id: str,
        from_redis: Callable[[str], Awaitable[tuple[CachedEntry | None, int | None]]],
        *,
        count_hit: bool,
    ) -> CachedEntry | None:
        """The copy when there is a fresh one, else the entry from Redis, kept for next time."""
        hot = self._fresh(entry_id)
        if hot is not None:
            if count_hit:
                self._count_hit(entry_id)
            return replace(hot, hits=hot.hits + self._pending_hits[entry_id])
        changes = self._changes
        entry, ttl_ms = await from_redis(entry_id)
        if entry is not None:
            self._keep(entry, ttl_ms, changes)
        return entry

    async def record_hit(self, entry_id: str) -> int:
        hot = self._fresh(entry_id)
        if hot is None:
            return await self._store.record_hit(entry_id)
        self._count_hit(entry_id)
        return hot.hits + self._pending_hits[entry_id]

    async def delete(self, entry_id: str) -> bool:
        self.forget(entry_id)
        return await self._store.delete(entry_id)

    async def put(
        self, entry: CachedEntry, embedding: Vector | None, ttl_seconds: float | None
    ) -> None:
        self.forget(entry.entry_id)
        await self._store.put(entry, embedding, ttl_seconds)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(StoreUnavailable):
            await self._flush()

    # --- inside ---------------------------------------------------------------------------

    def _fresh(self, entry_id: str) -> CachedEntry | None:
        if time.monotonic() - self._confirmed_at > FOLLOW_PATIENCE:
            return None  # the follower is behind: a change may be unreported
        if not self._store.reachable:
            return None  # Redis is out: its changes cannot reach us, and callers see a miss
        hot = self._hot.get(entry_id)
        if hot is None:
            return None
        if hot.expires_at is not None and time.monotonic() >= hot.expires_at:
            del self._hot[entry_id]
            return None
        self._hot.move_to_end(entry_id)
        return hot.entry

    def _keep(self, entry: CachedEntry, ttl_ms: int | None, changes_before: int) -> None:
        if self._capacity <= 0 or changes_before != self._changes:
            return  # changed while it was read: the copy may be older than the change
        expires_at = None if ttl_ms is None else time.monotonic() + ttl_ms / 1000
        self._hot[entry.entry_id] = _Hot(entry, expires_at)
        self._hot.move_to_end(entry.entry_id)
        while len(self._hot) > self._capacity:
            self._hot.popitem(last=False)

    def _count_hit(self, entry_id: str) -> None:
        self._pending_hits[entry_id] += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="semcache-hot-hits")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            await self._flush()
        except StoreUnavailable as error:
            log.debug("hit counts not recorded yet: %s", error)

    async def _flush(self) -> None:
        """Add the hits counted here to Redis. The copies keep their own count until replaced
        (a copy is refetched, with Redis's count, once it drops out)."""
        if not self._pending_hits:
            return
        counts, self._pending_hits = self._pending_hits, Counter()
        try:
            await self._store.record_hits(counts)
        except StoreUnavailable:
            self._pending_hits.update(counts)  # counted later rather than lost
            raise
        for entry_id, count in counts.items():
            hot = self._hot.get(entry_id)
            if hot is not None:
                counted = replace(hot.entry, hits=hot.entry.hits + count)
                self._hot[entry_id] = replace(hot, entry=counted)
