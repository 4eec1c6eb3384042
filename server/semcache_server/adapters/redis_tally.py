"""Counts of what the cache served, added to Redis in batches: every replica adds to the same
counters (the catalogue reads them, adapters/redis_catalog.py), and a request never waits for
them (core/admin.py's Tally)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping

from semcache_server.adapters.redis_connection import (
    RedisConnection,
    RedisRole,
    unavailable_on_redis_error,
)
from semcache_server.core.domain import Source, StoreUnavailable

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
_FIELD = {Source.EXACT: "exact_hits", Source.SEMANTIC: "semantic_hits", Source.LLM: "llm_calls"}


class RedisTally(RedisRole):
    """Implements `Tally` over the shared connection; aclose() flushes what is left."""

    def __init__(self, connection: RedisConnection) -> None:
        super().__init__(connection)
        self._pending: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._flusher: asyncio.Task[None] | None = None

    def count(self, namespace: str, source: Source, tokens_saved: int = 0) -> None:
        counts = self._pending[namespace]
        counts[_FIELD[source]] += 1
        if tokens_saved:
            counts["tokens_saved"] += tokens_saved
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="semcache-tally")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        with contextlib.suppress(StoreUnavailable):
            await self.flush()

    async def flush(self) -> None:
        """Counts Redis could not take are kept for the next flush, not lost."""
        if not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(Counter)
        try:
            await self._add(pending)
        except StoreUnavailable:
            for namespace, counts in pending.items():
                self._pending[namespace].update(counts)
            raise

    @unavailable_on_redis_error
    async def _add(self, counts: Mapping[str, Counter[str]]) -> None:
        """Add what this replica counted (namespace -> field -> amount), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipeline:
            for namespace, fields in counts.items():
                for field, amount in fields.items():
                    pipeline.hincrby(self.layout.counts(namespace), field, amount)
            await pipeline.execute()

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        try:
            await self.flush()
        except StoreUnavailable as error:
            log.warning("counts of the last %.1f s not recorded: %s", FLUSH_SECONDS, error)
