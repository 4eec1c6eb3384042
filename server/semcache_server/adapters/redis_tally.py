"""Counts of what the cache served, added to Redis in batches: every replica adds to the same
counters, and a request never waits for them (core/admin.py's Tally)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict

from semcache_server.adapters.redis_store import RedisEntryStore
from semcache_server.core.domain import Source, StoreUnavailable

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
_FIELD = {Source.EXACT: "exact_hits", Source.SEMANTIC: "semantic_hits", Source.LLM: "llm_calls"}


class RedisTally:
    def __init__(self, store: RedisEntryStore) -> None:
        self._store = store
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
            await self._store.add_counts(pending)
        except StoreUnavailable:
            for namespace, counts in pending.items():
                self._pending[namespace].update(counts)
            raise

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        try:
            await self.flush()
        except StoreUnavailable as error:
            log.warning("counts of the last %.1f s not recorded: %s", FLUSH_SECONDS, error)
