"""The two cache layers in front of the LLM. Both fail open: a broken Redis or embedder is a miss
and a log line, never a failed request.

The semantic layer owns its state: the embedder, the index, the hit policy and, for each request,
a `SemanticRequest` that knows the request's partition and embeds its prompt at most once, for the
lookup and for the write alike. The chain asks it questions and never handles a vector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from semcache_server.core import keys
from semcache_server.core.admission import Admission
from semcache_server.core.domain import (
    CacheControl,
    CachedEntry,
    Candidate,
    EmbedderUnavailable,
    Judgement,
    Overloaded,
    Query,
    SemanticStatus,
    StoreUnavailable,
    Verdict,
)
from semcache_server.core.observing import observer, timed
from semcache_server.core.outages import OutageLog
from semcache_server.core.policy import ExactOnlyPolicy, for_request
from semcache_server.core.ports import Embedder, EntryStore, HitPolicy, Stage, Vector, VectorIndex

log = logging.getLogger(__name__)


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
class PromptEmbedding:
    vector: Vector
    unread: str
    """What the embedding model could not read of the prompt; see `Embeddings.unread`."""


@dataclass(frozen=True)
class SemanticHit:
    entry: CachedEntry
    similarity: float


@dataclass(frozen=True)
class SemanticOutcome:
    hit: SemanticHit | None
    status: SemanticStatus
    judgement: Judgement | None = None
    """The policy's decision, when a candidate was near enough to be judged."""
    nearest: float | None = None
    """The similarity of the nearest cached prompt the search found, near enough or not."""


_SEARCHED_MISS = SemanticOutcome(None, SemanticStatus.SEARCHED)
_SEARCHED_PARTLY_READ_MISS = SemanticOutcome(None, SemanticStatus.SEARCHED_PARTLY_READ)
_UNAVAILABLE = SemanticOutcome(None, SemanticStatus.UNAVAILABLE)


class SemanticLayer:
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        store: EntryStore,
        policy: HitPolicy,
        store_outages: OutageLog,
        *,
        max_temperature: float,
        embeddings: Admission,
    ) -> None:
        self._embedder = embedder
        self._index = index
        self._store = store
        self._policy = policy
        self._store_outages = store_outages
        self._embedder_outages = OutageLog(f"embedder {embedder.model_id}")
        self._max_temperature = max_temperature
        self._embeddings = embeddings

    @property
    def embedding_model(self) -> str:
        return self._embedder.model_id

    @property
    def indexed(self) -> int:
        """How many embeddings the index holds."""
        return len(self._index)

    def begin(self, query: Query, control: CacheControl) -> SemanticRequest:
        """The layer's state for one request; close() it when the request ends."""
        policy = for_request(self._policy, control.similarity_threshold)
        skipped = self._skip_reason(query, control, policy)
        return SemanticRequest(self, query, control, policy, skipped)

    def _skip_reason(
        self, query: Query, control: CacheControl, policy: HitPolicy
    ) -> SemanticStatus | None:
        """Why the semantic layer must not answer this request, or None when it may."""
        if control.skip_lookup:
            return SemanticStatus.SKIPPED_LOOKUP
        if isinstance(policy, ExactOnlyPolicy):
            return SemanticStatus.SKIPPED_EXACT_ONLY
        if query.history and not control.semantic_with_history:
            return SemanticStatus.SKIPPED_HISTORY
        temperature = query.options.temperature
        if temperature is not None and temperature > self._max_temperature:
            return SemanticStatus.SKIPPED_TEMPERATURE
        return None

    async def embed(self, prompt: str) -> PromptEmbedding | None:
        """None when the embedder failed; raises Overloaded when too many embeddings wait."""
        await self._embeddings.acquire()
        try:
            with timed(Stage.EMBEDDING):
                embeddings = await self._embedder.embed([prompt])
        except EmbedderUnavailable as error:
            self._embedder_outages.failed(error)
            return None
        finally:
            self._embeddings.release()
        self._embedder_outages.succeeded()
        return PromptEmbedding(embeddings.vectors[0], embeddings.unread[0])

    async def _search(
        self, request: SemanticRequest, embedding: PromptEmbedding, policy: HitPolicy
    ) -> SemanticOutcome:
        partition = request.partition(embedding.unread)
        searched = _SEARCHED_PARTLY_READ_MISS if embedding.unread else _SEARCHED_MISS
        with timed(Stage.SEARCH):
            neighbours = await self._index.nearest(partition, embedding.vector, k=policy.candidates)
        if neighbours:
            observer().nearest(neighbours[0].similarity)
            searched = replace(searched, nearest=neighbours[0].similarity)
        near = [n for n in neighbours if n.similarity >= policy.floor]
        if not near:
            return searched
        try:
            entries: list[tuple[CachedEntry, float]] = []
            for neighbour in near:
                entry = await self._store.fetch(neighbour.entry_id)
                if entry is None:  # expired or deleted behind the index's back
                    await asyncio.to_thread(self._index.remove, neighbour.entry_id)
                elif entry.partition == partition and not request.control.too_old(
                    entry, time.time()
                ):
                    entries.append((entry, neighbour.similarity))
            if not entries:
                return searched
            with timed(Stage.VERIFICATION):
                judgement = await policy.judge(
                    request.query.prompt,
                    [Candidate(entry.prompt, similarity) for entry, similarity in entries],
                )
            if judgement.verdict is not Verdict.HIT or judgement.chosen is None:
                status = (
                    SemanticStatus.REJECTED_BY_GUARD
                    if judgement.verdict is Verdict.REJECTED_BY_GUARD
                    else searched.status
                )
                return SemanticOutcome(None, status, judgement, searched.nearest)
            entry, similarity = entries[judgement.chosen]
            hits = await self._store.record_hit(entry.entry_id)
        except StoreUnavailable as error:
            self._store_outages.failed(error)
            return _UNAVAILABLE
        self._store_outages.succeeded()
        hit = SemanticHit(replace(entry, hits=hits), similarity)
        return SemanticOutcome(hit, searched.status, judgement, searched.nearest)

    async def _write(
        self, entry: CachedEntry, vector: Vector | None, ttl_seconds: float | None
    ) -> bool:
        """Store the entry, then index its vector; False when Redis is down."""
        try:
            await self._store.put(entry, vector, ttl_seconds)
        except StoreUnavailable as error:
            self._store_outages.failed(error)
            return False
        self._store_outages.succeeded()
        if vector is not None:
            # Off the loop: adding to a large graph takes about a millisecond, and longer while
            # the index writes a snapshot of that partition.
            await asyncio.to_thread(self._index.add, entry.partition, entry.entry_id, vector)
        return True


class SemanticRequest:
    """What the semantic layer knows about one request: may it answer, in which partition, and
    the prompt's embedding, made at most once whether the lookup or the write asks first."""

    def __init__(
        self,
        layer: SemanticLayer,
        query: Query,
        control: CacheControl,
        policy: HitPolicy,
        skipped: SemanticStatus | None,
    ) -> None:
        self.query = query
        self.control = control
        """How the request uses the cache (its max_age filters candidates)."""
        self.skipped = skipped
        """Why the layer may not answer this request; None when it may."""
        self._layer = layer
        self._policy = policy
        self._embedding: asyncio.Future[PromptEmbedding | None] | None = None
        self._holders = 1

    def partition(self, unread: str) -> str:
        """Where the prompt's entry lives: computed only once embedded (an exact hit never needs
        it), since what the model could not read of the prompt is part of it."""
        return keys.partition_id(self.query, self._layer.embedding_model, unread)

    async def lookup(self) -> SemanticOutcome:
        """Search the partition and judge the nearest entry (only when `skipped` is None)."""
        assert self.skipped is None, "the chain asks only a layer that may answer"
        embedding = await self._embedded()
        if embedding is None:
            return _UNAVAILABLE
        return await self._layer._search(self, embedding, self._policy)

    def embed_ahead(self) -> None:
        """Start embedding now, in the background, for a write that will want it later.

        A lookup whose embedding failed left nothing behind, so this tries again: an entry
        stored without a vector would never become a semantic candidate.
        """
        if self._embedding is None:
            self._embedding = asyncio.ensure_future(self._layer.embed(self.query.prompt))

    async def store(
        self, entry_id: str, text: str, ttl_seconds: float | None, completion_tokens: int = 0
    ) -> bool:
        """Write the answer with its embedding (when the embedder works); False when not stored.

        Once the embedding is there, the write is shielded: a caller that leaves at the last moment
        does not leave an answer it fully received out of the cache.
        """
        try:
            embedding = await self._embedded()
        except Overloaded:
            embedding = None  # stored for exact hits only: better than not at all
        vector = embedding.vector if embedding is not None else None
        query = self.query
        entry = CachedEntry(
            entry_id=entry_id,
            partition=self.partition(embedding.unread if embedding is not None else ""),
            prompt=query.prompt,
            text=text,
            model=query.model,
            system=query.system,
            options=query.options.as_dict(),
            history=query.history,
            namespace=query.namespace,
            embedding_model=self._layer.embedding_model if vector is not None else "",
            created_at=time.time(),
            owner=query.tenant,
            completion_tokens=completion_tokens,
        )
        return await asyncio.shield(self._layer._write(entry, vector, ttl_seconds))

    def hold(self) -> None:
        """Another owner (an LLM flight that will store with it): close() must be called once
        more before the request really closes."""
        self._holders += 1

    def close(self) -> None:
        """Stop an embedding nobody will read, and collect the failure of one nobody read."""
        self._holders -= 1
        if self._holders > 0 or self._embedding is None:
            return
        if not self._embedding.done():
            self._embedding.cancel()
        elif not self._embedding.cancelled() and self._embedding.exception() is not None:
            log.debug("an embedding nobody read failed", exc_info=self._embedding.exception())

    async def _embedded(self) -> PromptEmbedding | None:
        """The prompt's embedding, made once for the lookup and the write (which may run at the
        same time, when the LLM is asked speculatively). A failure is not remembered, so a later
        ask (the write after the lookup) tries again; a caller that leaves does not cancel an
        embedding the other one waits for."""
        if self._embedding is None:
            self._embedding = asyncio.ensure_future(self._layer.embed(self.query.prompt))
        embedding = self._embedding
        try:
            embedded = await asyncio.shield(embedding)
        except Overloaded:
            if self._embedding is embedding:
                self._embedding = None
            raise
        if embedded is None and self._embedding is embedding:
            self._embedding = None
        return embedded
