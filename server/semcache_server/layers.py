"""The two cache layers in front of the LLM. Both fail open: a broken Redis or embedder is a miss
and a log line, never a failed request."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from semcache_server.domain import (
    CachedEntry,
    EmbedderUnavailable,
    Query,
    SemanticStatus,
    StoreUnavailable,
)
from semcache_server.embedders import Embedder
from semcache_server.index import Vector, VectorIndex
from semcache_server.policy import IDENTICAL, HitPolicy, Verdict
from semcache_server.store import EntryStore

log = logging.getLogger(__name__)


class OutageLog:
    """Logs the first failure of a dependency and its recovery, not every failed request."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._down = False

    def failed(self, error: Exception) -> None:
        if not self._down:
            log.warning("%s unavailable, serving without it: %s", self._name, error)
        self._down = True

    def succeeded(self) -> None:
        if self._down:
            log.warning("%s is back", self._name)
        self._down = False


class ExactLayer:
    def __init__(self, store: EntryStore, outages: OutageLog) -> None:
        self._store = store
        self._outages = outages

    async def lookup(self, entry_id: str) -> CachedEntry | None:
        try:
            entry = await self._store.fetch_hit(entry_id)
        except StoreUnavailable as error:
            self._outages.failed(error)
            return None
        self._outages.succeeded()
        return entry


@dataclass(frozen=True)
class SemanticHit:
    entry: CachedEntry
    similarity: float


@dataclass(frozen=True)
class SemanticOutcome:
    hit: SemanticHit | None
    status: SemanticStatus


_SEARCHED_MISS = SemanticOutcome(None, SemanticStatus.SEARCHED)
_UNAVAILABLE = SemanticOutcome(None, SemanticStatus.UNAVAILABLE)


class SemanticLayer:
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        store: EntryStore,
        policy: HitPolicy,
        store_outages: OutageLog,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.policy = policy
        self._store = store
        self._store_outages = store_outages
        self._embedder_outages = OutageLog(f"embedder {embedder.model_id}")

    async def embed(self, prompt: str) -> Vector | None:
        try:
            vector: Vector = (await self.embedder.embed([prompt]))[0]
        except EmbedderUnavailable as error:
            self._embedder_outages.failed(error)
            return None
        self._embedder_outages.succeeded()
        return vector

    async def lookup(
        self, query: Query, partition: str, vector: Vector, threshold: float | None
    ) -> SemanticOutcome:
        neighbours = self.index.nearest(partition, vector, k=1)
        if not neighbours:
            return _SEARCHED_MISS
        nearest = neighbours[0]
        floor = self.policy.floor if threshold is None else min(threshold, IDENTICAL)
        if nearest.similarity < floor:
            return _SEARCHED_MISS
        try:
            entry = await self._store.fetch(nearest.entry_id)
            if entry is None:  # expired or deleted behind the index's back
                self.index.remove(nearest.entry_id)
                return _SEARCHED_MISS
            if entry.partition != partition:
                return _SEARCHED_MISS
            verdict = await self.policy.judge(
                query.prompt, entry.prompt, nearest.similarity, threshold
            )
            if verdict is Verdict.REJECTED_BY_GUARD:
                return SemanticOutcome(None, SemanticStatus.REJECTED_BY_GUARD)
            if verdict is not Verdict.HIT:
                return _SEARCHED_MISS
            hits = await self._store.record_hit(entry.entry_id)
        except StoreUnavailable as error:
            self._store_outages.failed(error)
            return _UNAVAILABLE
        self._store_outages.succeeded()
        hit = SemanticHit(replace(entry, hits=hits), nearest.similarity)
        return SemanticOutcome(hit, SemanticStatus.SEARCHED)

    def remember(self, partition: str, entry_id: str, vector: Vector) -> None:
        self.index.add(partition, entry_id, vector)

    async def rebuild(self) -> int:
        """Load every stored embedding of this embedder into the index; raises StoreUnavailable."""
        loaded = 0
        async for stored in self._store.vectors(self.embedder.model_id):
            self.index.add(stored.partition, stored.entry_id, stored.vector)
            loaded += 1
        return loaded
