"""The cache chain: exact layer, then semantic layer, then the LLM, cheapest first.

Every answer is a stream of events (an Origin, text deltas, a Completion); the unary call joins it.
`_generate` is the one place that decides whether an LLM answer is stored: only when the LLM
finished it by itself, the text is not blank, and the caller allowed storing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from semcache_server import keys
from semcache_server.domain import (
    Answer,
    AnswerEvent,
    CacheControl,
    CachedEntry,
    Completion,
    FinishReason,
    Origin,
    Query,
    SemanticStatus,
    Source,
    StoreUnavailable,
    TextDelta,
)
from semcache_server.index import Vector
from semcache_server.layers import ExactLayer, OutageLog, SemanticLayer
from semcache_server.llm import LLMBackend, LLMEvent, LLMFinish
from semcache_server.store import EntryStore
from semcache_server.validation import Limits, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainSettings:
    ttl_seconds: float | None = None
    replay_chunk_chars: int = 64
    max_semantic_temperature: float = 1.0
    """Above it the semantic layer is skipped: sampling asks for variety."""
    speculative_llm: bool = False
    """Start the LLM alongside the semantic lookup; a hit cancels it (see PrefetchedStream)."""
    limits: Limits = field(default_factory=Limits)


class PrefetchedStream:
    """Runs an LLM stream ahead of its reader, buffering its events.

    The LLM starts while the semantic layer is still deciding; cancel() closes the HTTP stream
    when a hit makes the answer unnecessary, so Ollama stops generating for nobody.
    """

    _END = object()

    def __init__(self, stream: AsyncGenerator[LLMEvent, None]) -> None:
        self._buffer: asyncio.Queue[object] = asyncio.Queue()
        self._pump_task = asyncio.create_task(self._pump(stream))

    async def _pump(self, stream: AsyncGenerator[LLMEvent, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    self._buffer.put_nowait(event)
        except Exception as error:  # handed to the reader, raised there
            self._buffer.put_nowait(error)
        finally:
            self._buffer.put_nowait(self._END)

    async def events(self) -> AsyncGenerator[LLMEvent, None]:
        while (item := await self._buffer.get()) is not self._END:
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]

    async def cancel(self) -> None:
        """Idempotent: the owner calls it whatever happened to the reader."""
        if not self._pump_task.done():
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task


class CacheChain:
    def __init__(
        self,
        exact: ExactLayer,
        semantic: SemanticLayer,
        llm: LLMBackend,
        store: EntryStore,
        store_outages: OutageLog,
        settings: ChainSettings,
    ) -> None:
        self._exact = exact
        self._semantic = semantic
        self._llm = llm
        self._store = store
        self._store_outages = store_outages
        self._settings = settings

    async def ask(self, query: Query, control: CacheControl) -> Answer:
        origin: Origin | None = None
        parts: list[str] = []
        async with contextlib.aclosing(self.ask_stream(query, control)) as events:
            async for event in events:
                if isinstance(event, Origin):
                    origin = event
                elif isinstance(event, TextDelta):
                    parts.append(event.text)
                else:
                    assert origin is not None
                    return Answer("".join(parts), origin, event)
        raise AssertionError("an answer stream ended without a Completion")

    async def ask_stream(
        self, query: Query, control: CacheControl
    ) -> AsyncGenerator[AnswerEvent, None]:
        validate(query, control, self._settings.limits)
        started = time.monotonic()
        entry_id = keys.entry_id(query)
        partition = keys.partition_id(query, self._semantic.embedder.model_id)
        vector: Vector | None = None

        status = self._semantic_skip(query, control)
        speculative: PrefetchedStream | None = None
        try:
            if not control.skip_lookup:
                entry = await self._exact.lookup(entry_id)
                if entry is not None:
                    async for event in self._replay(entry, Source.EXACT, 1.0, started, None):
                        yield event
                    return
                if status is None:
                    if self._settings.speculative_llm:
                        # Hide the semantic lookup behind the LLM's own time to first token;
                        # a hit cancels the call before it has produced anything to waste.
                        speculative = PrefetchedStream(self._llm.stream(query))
                    vector = await self._semantic.embed(query.prompt)
                    status = SemanticStatus.UNAVAILABLE
                    if vector is not None:
                        outcome = await self._semantic.lookup(
                            query, partition, vector, control.similarity_threshold
                        )
                        status = outcome.status
                        if outcome.hit is not None:
                            if speculative is not None:
                                await speculative.cancel()
                            async for event in self._replay(
                                outcome.hit.entry,
                                Source.SEMANTIC,
                                outcome.hit.similarity,
                                started,
                                status,
                            ):
                                yield event
                            return

            yield Origin(
                source=Source.LLM,
                model=query.model,
                lookup_seconds=time.monotonic() - started,
                semantic_status=status,
            )
            llm_events = speculative.events() if speculative else self._llm.stream(query)
            async for event in self._generate(
                query, control, entry_id, partition, vector, started, llm_events
            ):
                yield event
        finally:
            if speculative is not None:
                await speculative.cancel()

    def _semantic_skip(self, query: Query, control: CacheControl) -> SemanticStatus | None:
        """Why the semantic layer must not answer this request, or None when it may."""
        if control.skip_lookup:
            return SemanticStatus.SKIPPED_LOOKUP
        if control.similarity_threshold is not None and control.similarity_threshold == 0:
            return SemanticStatus.SKIPPED_EXACT_ONLY  # 0 means exact matches only
        if query.history and not control.semantic_with_history:
            return SemanticStatus.SKIPPED_HISTORY
        temperature = query.options.temperature
        if temperature is not None and temperature > self._settings.max_semantic_temperature:
            return SemanticStatus.SKIPPED_TEMPERATURE
        return None

    async def _replay(
        self,
        entry: CachedEntry,
        source: Source,
        similarity: float,
        started: float,
        semantic_status: SemanticStatus | None,
    ) -> AsyncGenerator[AnswerEvent, None]:
        yield Origin(
            source=source,
            model=entry.model,
            lookup_seconds=time.monotonic() - started,
            similarity=similarity,
            matched_prompt=entry.prompt,
            entry_id=entry.entry_id,
            cached_at=entry.created_at,
            hits=entry.hits,
            semantic_status=semantic_status,
        )
        size = self._settings.replay_chunk_chars
        for offset in range(0, len(entry.text), size):
            yield TextDelta(entry.text[offset : offset + size])
        yield Completion(
            stored=False,
            entry_id=entry.entry_id,
            finish_reason=None,
            total_seconds=time.monotonic() - started,
        )

    async def _generate(
        self,
        query: Query,
        control: CacheControl,
        entry_id: str,
        partition: str,
        vector: Vector | None,
        started: float,
        llm_events: AsyncGenerator[LLMEvent, None],
    ) -> AsyncGenerator[AnswerEvent, None]:
        embedding: asyncio.Task[Vector | None] | None = None
        if not control.skip_store and vector is None:
            # The entry needs an embedding for later semantic hits; make it while the LLM talks.
            embedding = asyncio.create_task(self._semantic.embed(query.prompt))
        parts: list[str] = []
        finish: LLMFinish | None = None
        try:
            async with contextlib.aclosing(llm_events) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                        yield event
                    else:
                        finish = event
            text = "".join(parts)
            stored = False
            if (
                finish is not None
                and finish.finish_reason is FinishReason.STOP
                and text.strip()
                and not control.skip_store
            ):
                if embedding is not None:
                    vector = await embedding
                stored = await asyncio.shield(self._put(query, text, entry_id, partition, vector))
        finally:
            if embedding is not None and not embedding.done():
                embedding.cancel()
        yield Completion(
            stored=stored,
            entry_id=entry_id if stored else "",
            finish_reason=finish.finish_reason if finish else None,
            prompt_tokens=finish.prompt_tokens if finish else 0,
            completion_tokens=finish.completion_tokens if finish else 0,
            total_seconds=time.monotonic() - started,
        )

    async def _put(
        self, query: Query, text: str, entry_id: str, partition: str, vector: Vector | None
    ) -> bool:
        entry = CachedEntry(
            entry_id=entry_id,
            partition=partition,
            prompt=query.prompt,
            text=text,
            model=query.model,
            system=query.system,
            options=query.options.as_dict(),
            history=query.history,
            namespace=query.namespace,
            embedding_model=self._semantic.embedder.model_id if vector is not None else "",
            created_at=time.time(),
        )
        try:
            await self._store.put(entry, vector, self._settings.ttl_seconds)
        except StoreUnavailable as error:
            self._store_outages.failed(error)
            return False
        self._store_outages.succeeded()
        if vector is not None:
            self._semantic.remember(partition, entry_id, vector)
        return True
