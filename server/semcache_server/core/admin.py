"""What operators and tenants may do to the cache's contents: look, count, purge (issue #13).

Every call has a scope: one namespace (a tenant's call reaches its own entries only) or all of them
(an operator's). A namespace's figures and pages come from its own entries only: another tenant's
cannot change them, not even by their number. Deletions go through the store's change feed, so
every replica's index and hot entries drop them. Invalidations scan the entries: O(entries), meant
for operators, not requests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from semcache_server.core import keys
from semcache_server.core.domain import CachedEntry, InvalidRequest, Source
from semcache_server.core.validation import is_blank

MAX_PAGE = 500
DEFAULT_PAGE = 50
ENTRY_ID = re.compile(r"[0-9a-f]{32}")
"""What `keys.entry_id` makes; anything else is a caller's mistake, not an absent entry."""


@dataclass(frozen=True)
class Scope:
    """The entries a call reaches: one namespace, or every one (namespace None: an operator's
    call); in a shared namespace a tenant reaches only the entries it stored (owner)."""

    namespace: str | None
    owner: str | None = None

    def reaches(self, entry: CachedEntry) -> bool:
        return (self.namespace is None or entry.namespace == self.namespace) and (
            self.owner is None or entry.owned_by(self.owner)
        )


@dataclass(frozen=True)
class Listed:
    """An entry as the catalogue reports it; text is empty in scans and pages."""

    entry: CachedEntry
    expires_at: float | None
    """Epoch seconds; None when it never expires."""


@dataclass(frozen=True)
class Counts:
    """What the cache served, from the counters every replica adds to."""

    exact_hits: int = 0
    semantic_hits: int = 0
    llm_calls: int = 0
    tokens_saved: int = 0


@dataclass(frozen=True)
class Stats:
    entries: int
    counts: Counts
    index_entries: int
    """This replica's index, every namespace: 0 in one namespace's figures."""
    redis_memory_bytes: int
    """Everything Redis holds: 0 in one namespace's figures."""

    @property
    def hits(self) -> int:
        return self.counts.exact_hits + self.counts.semantic_hits

    @property
    def hit_ratio(self) -> float:
        answered = self.hits + self.counts.llm_calls
        return self.hits / answered if answered else 0.0


class Tally(Protocol):
    """Counts what the cache served, for the stats every replica adds to."""

    def count(self, namespace: str, source: Source, tokens_saved: int = 0) -> None: ...


class NoTally:
    def count(self, namespace: str, source: Source, tokens_saved: int = 0) -> None:
        return None


class EntryCatalog(Protocol):
    """The store seen whole, for admin calls; every failure raises StoreUnavailable."""

    def scan(self, namespace: str | None) -> AsyncIterator[Listed]:
        """Every entry (of one namespace, read without reading others', or all), without its
        text."""
        ...

    async def page(
        self, namespace: str | None, cursor: str, count: int
    ) -> tuple[list[Listed], str]:
        """About count entries from cursor ("" to start), and the next cursor ("" at the end);
        a namespace's pages hold its entries only, however many others there are. A cursor this
        catalogue did not give out raises InvalidRequest."""
        ...

    async def count(self, namespace: str | None) -> int:
        """The entries stored now (of one namespace, counted without reading others', or all)."""
        ...

    async def get(self, entry_id: str) -> Listed | None: ...

    async def delete(self, entry_id: str) -> bool:
        """False when there was no such entry."""
        ...

    async def counts(self, namespace: str | None) -> Counts: ...

    async def memory_bytes(self) -> int: ...


@dataclass(frozen=True)
class PromptSelector:
    prompt: str
    model: str = ""

    @cached_property
    def _normalised(self) -> str:
        """Once, not once an entry: the prompt may be long."""
        return keys.normalise_prompt(self.prompt)

    def matches(self, entry: CachedEntry) -> bool:
        return keys.normalise_prompt(entry.prompt) == self._normalised and (
            not self.model or entry.model == self.model
        )


@dataclass(frozen=True)
class ModelSelector:
    model: str

    def matches(self, entry: CachedEntry) -> bool:
        return entry.model == self.model


@dataclass(frozen=True)
class EmbeddingModelSelector:
    embedding_model: str

    def matches(self, entry: CachedEntry) -> bool:
        return entry.embedding_model == self.embedding_model


@dataclass(frozen=True)
class AllSelector:
    def matches(self, entry: CachedEntry) -> bool:
        return True


Selector = PromptSelector | ModelSelector | EmbeddingModelSelector | AllSelector


class CacheAdmin:
    def __init__(self, catalog: EntryCatalog, index_size: Callable[[], int]) -> None:
        """index_size: the entries in this replica's vector index, for the stats."""
        self._catalog = catalog
        self._index_size = index_size

    async def get(self, scope: Scope, entry_id: str) -> Listed | None:
        """None also when the entry is out of scope: a tenant cannot learn another's ids."""
        if not ENTRY_ID.fullmatch(entry_id):
            raise InvalidRequest(
                "entry_id", "is not an entry id: 32 hexadecimal digits, as Ask returns them"
            )
        listed = await self._catalog.get(entry_id)
        return listed if listed is not None and scope.reaches(listed.entry) else None

    async def delete(self, scope: Scope, entry_id: str) -> bool:
        if await self.get(scope, entry_id) is None:
            return False
        return await self._catalog.delete(entry_id)

    async def invalidate(self, scope: Scope, selector: Selector) -> int:
        if isinstance(selector, PromptSelector) and is_blank(selector.prompt):
            raise InvalidRequest("prompt.prompt", "must not be empty or blank")
        matching = [
            listed.entry.entry_id
            async for listed in self._catalog.scan(scope.namespace)
            if scope.reaches(listed.entry) and selector.matches(listed.entry)
        ]
        removed = 0
        for entry_id in matching:
            removed += await self._catalog.delete(entry_id)
        return removed

    async def page(self, scope: Scope, page_size: int, token: str) -> tuple[list[Listed], str]:
        """At least page_size entries (0: DEFAULT_PAGE), or the last ones with token "". One
        catalogue step may bring none: a SCAN step reads about count keys, and the change feed,
        the counters and the listings are keys too; an owner's scope drops others' entries. So
        steps are taken, each asking for what the page still lacks, until it is full or the
        listing ends; the last step may bring a few more than asked, and they stay in the page,
        since a cursor cannot resume inside a step."""
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidRequest("page_size", f"must be in [0, {MAX_PAGE}], got {page_size}")
        wanted = page_size or DEFAULT_PAGE
        page: list[Listed] = []
        while True:
            listed, token = await self._catalog.page(scope.namespace, token, wanted - len(page))
            page.extend(item for item in listed if scope.reaches(item.entry))
            if len(page) >= wanted or not token:
                return page, token

    async def stats(self, scope: Scope) -> Stats:
        """The figures of the scope only: a namespace's leave out the index and Redis's memory,
        which every namespace fills (one tenant would watch another's entries arrive)."""
        if scope.owner is None:
            entries = await self._catalog.count(scope.namespace)
        else:
            entries = 0
            async for listed in self._catalog.scan(scope.namespace):
                entries += scope.reaches(listed.entry)
        whole = scope.namespace is None
        return Stats(
            entries=entries,
            counts=await self._catalog.counts(scope.namespace),
            index_entries=self._index_size() if whole else 0,
            redis_memory_bytes=await self._catalog.memory_bytes() if whole else 0,
        )
