"""The typed interfaces the cache core needs from the outside world.

The core (chain, layers, policies) is written against these protocols only; the adapters in
`semcache_server.adapters` implement them, and only the composition root (`semcache_server.app`)
knows both. A test or a benchmark can hand in any object that fits.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from semcache_server.core.domain import (
    CachedEntry,
    Candidate,
    FinishReason,
    Judgement,
    Query,
    TextDelta,
)

Vector = npt.NDArray[np.float32]
"""One unit-length float32 embedding."""

Vectors = npt.NDArray[np.float32]
"""Rows of unit-length float32 embeddings, one a text."""


# --- embedder -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embeddings:
    """Unit vectors of texts, with what the model could not read of each."""

    vectors: Vectors
    unread: Sequence[str]
    """For each text, the parts its vector says nothing of, joined ("" for most prompts): what
    lies past the model's window, and spans its vocabulary maps to an unknown token (an emoji, a
    very long word). Two prompts that differ only there embed alike, so the semantic layer lets
    them match only when those parts are identical."""


class Embedder(Protocol):
    """Turns prompts into unit vectors; the semantic layer compares them by cosine."""

    @property
    def model_id(self) -> str:
        """Names the embedding model; entries embedded by another model are never compared."""
        ...

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Raises EmbedderUnavailable when the model cannot answer."""
        ...

    async def aclose(self) -> None: ...


# --- vector index ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    entry_id: str
    similarity: float


class VectorIndex(Protocol):
    """Nearest cached prompts within one partition (a pre-filter, never a post-filter)."""

    def add(self, partition: str, entry_id: str, vector: Vector) -> None:
        """Add or replace the vector of an entry (vectors are unit length).

        Must be safe to call from a worker thread: it may wait for a search or a snapshot, so
        the semantic layer calls it off the event loop.
        """
        ...

    def remove(self, entry_id: str) -> None: ...

    async def nearest(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        """The k most similar entries of the partition, most similar first.

        Async so that an index whose search costs more than a few tens of microseconds can run
        it off the event loop.
        """
        ...

    def __len__(self) -> int: ...


# --- storage, by role -----------------------------------------------------------------------
#
# One Redis plays several roles, and each caller sees only the role it needs: the layers read and
# write entries (EntryStore), single-flight takes claims (Claims), the admin core reads the
# catalogue and the chain counts what it served (EntryCatalog and Tally, in core/admin.py). Two
# adapters around the store have ports here too, so every role is listed in one place: the
# in-memory copy of hot entries reads through a HotEntrySource, and the index replica loads and
# sweeps through a ReplicaSource.


class EntryStore(Protocol):
    """Cached answers with their embeddings; every failure raises StoreUnavailable."""

    async def fetch_hit(self, entry_id: str) -> CachedEntry | None:
        """The entry with its hit count raised by one, or None when there is none."""
        ...

    async def fetch(self, entry_id: str) -> CachedEntry | None:
        """The entry as it is, for a layer that decides before it counts a hit."""
        ...

    async def record_hit(self, entry_id: str) -> int:
        """Count a hit; the new count, or 0 when the entry is gone."""
        ...

    async def delete(self, entry_id: str) -> bool:
        """False when there was no such entry."""
        ...

    async def put(
        self, entry: CachedEntry, embedding: Vector | None, ttl_seconds: float | None
    ) -> None: ...


class Claims(Protocol):
    """The short lock that says "this question's answer is being generated" across replicas;
    every failure raises StoreUnavailable."""

    async def claim(self, entry_id: str, token: str, seconds: float) -> bool:
        """Take the claim, or renew it when token holds it already; False when another token
        has it. Expires by itself after seconds."""
        ...

    async def release(self, entry_id: str, token: str) -> None:
        """Drop the claim, only if token still holds it."""
        ...


class HotEntrySource(EntryStore, Protocol):
    """The store as a copy of its hot entries in memory sees it: entries with the time they have
    left, hits counted elsewhere added in bulk, and whether its changes can reach us at all."""

    async def fetch_hit_with_ttl(self, entry_id: str) -> tuple[CachedEntry | None, int | None]:
        """As fetch_hit, with the ms the entry has left to live (None: no TTL)."""
        ...

    async def fetch_with_ttl(self, entry_id: str) -> tuple[CachedEntry | None, int | None]:
        """As fetch, with the ms the entry has left to live (None: no TTL)."""
        ...

    async def record_hits(self, counts: Mapping[str, int]) -> None:
        """Add hits counted elsewhere, entry id -> hits; an entry gone meanwhile stays gone."""
        ...

    @property
    def reachable(self) -> bool:
        """False while the store is skipped as unreachable: no change can be heard of then."""
        ...


@dataclass(frozen=True)
class StoredVector:
    """An entry's embedding as stored, for rebuilding an index."""

    entry_id: str
    partition: str
    vector: Vector


class ReplicaSource(Protocol):
    """What a replica's index is rebuilt from, and where expiries are reported to the change
    feed every replica follows; every failure raises StoreUnavailable."""

    def vectors(self, embedding_model: str) -> AsyncIterator[StoredVector]:
        """Every stored embedding of that embedding model."""
        ...

    async def sweep_expired(self, limit: int = 500) -> int:
        """Report up to limit entries whose TTL has passed; how many were reported."""
        ...


# --- LLM backend ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMFinish:
    """The LLM's closing message: only its arrival proves the answer is complete."""

    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0


LLMEvent = TextDelta | LLMFinish

RequestSent = Callable[[], None]
"""Called once the request has left for the LLM: other work may start without delaying it."""


class LLMBackend(Protocol):
    def stream(
        self, query: Query, on_sent: RequestSent | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        """Yield the answer's text as it is produced, then one LLMFinish.

        Closing the iterator early must stop the generation. Failures raise LLMUnavailable,
        LLMStreamBroken, ModelNotFound or LLMRejected. A backend that cannot tell when its
        request left may never call on_sent; callers bound their wait for it.
        """
        ...

    async def aclose(self) -> None: ...


# --- hit policy -----------------------------------------------------------------------------


class HitPolicy(Protocol):
    """Whether a semantic neighbour's answer answers the query.

    A policy sees the query and the nearest cached prompts with their cosines, so guards and a
    pair verifier work without touching the semantic layer. The per-request threshold override
    is resolved before a policy is asked (`semcache_server.core.policy.for_request`), so a
    policy has one rule.
    """

    @property
    def floor(self) -> float:
        """Below this similarity no candidate is even considered, so it is never fetched."""
        ...

    @property
    def candidates(self) -> int:
        """How many nearest neighbours (at or above the floor) the policy wants to see."""
        ...

    async def judge(self, prompt: str, candidates: Sequence[Candidate]) -> Judgement:
        """candidates: nearest first, each at or above the floor, at least one."""
        ...


class Verifier(Protocol):
    """Reads a query and cached prompts together and scores each pair."""

    @property
    def model_id(self) -> str: ...

    async def scores(self, query: str, candidates: Sequence[str]) -> Sequence[float]:
        """One logit per candidate: above 0, more likely its answer answers the query."""
        ...

    async def aclose(self) -> None: ...


class Judge(Protocol):
    """An LLM asked whether a cached answer can be reused, where the verifier is unsure."""

    @property
    def model_id(self) -> str: ...

    async def same_answer(self, query: str, cached: str) -> bool | None:
        """True or False as the judge says; None when it could not say (a miss)."""
        ...

    async def aclose(self) -> None: ...


# --- request observer -----------------------------------------------------------------------


class Stage(enum.Enum):
    """A timed step of a request, as its observer hears of it."""

    EXACT_LOOKUP = "exact_lookup"
    """The exact layer's lookup (one Redis round trip, or a hot entry in memory)."""
    EMBEDDING = "embedding"
    """Embedding the prompt (micro-batching included, the wait for admission not)."""
    SEARCH = "search"
    """The vector index's nearest-neighbour search in the request's partition."""
    VERIFICATION = "verification"
    """The hit policy's judgement of the candidates: guards, pair verifier, LLM judge."""
    LLM_FIRST_TOKEN = "llm_first_token"
    """From the LLM request to its first token."""
    LLM_TOTAL = "llm_total"
    """From the LLM request to its final message."""


class LLMOutcome(enum.Enum):
    """How an LLM call ended."""

    COMPLETED = "completed"
    """Its final message arrived."""
    CANCELLED = "cancelled"
    """Closed before its end: a semantic hit after a speculative start, the last rider left,
    or the server's bound on generation ran out."""
    UNAVAILABLE = "unavailable"
    STREAM_BROKEN = "stream_broken"
    MODEL_NOT_FOUND = "model_not_found"
    REJECTED = "rejected"
    FAILED = "failed"
    """Any other error."""


class RequestObserver(Protocol):
    """Hears what the core does for one request, as it does it.

    The edge makes one for each call (metrics, the request log); the core finds it through
    `semcache_server.core.observing.observer()`, a no-op when nobody listens. Tasks started for
    the request (an LLM call, an embedding) report to the request that started them, possibly
    after it ended. Every method is cheap and never raises.
    """

    def stage(self, stage: Stage, seconds: float) -> None: ...

    def nearest(self, similarity: float) -> None:
        """The cosine of the nearest cached prompt the semantic search found, hit or not."""
        ...

    def tokens_saved(self, tokens: int) -> None:
        """A hit served an answer that took the LLM this many tokens (0: not recorded)."""
        ...

    def shed(self, resource: str) -> None:
        """Admission control refused work of this request: too many wait for resource."""
        ...

    def llm_call(self, outcome: LLMOutcome, completion_tokens: int) -> None:
        """An LLM call this request started ended (riders of a single flight are not told)."""
        ...
