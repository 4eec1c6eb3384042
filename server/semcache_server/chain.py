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
    Speculation,
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
    speculative_llm: Speculation = Speculation.STREAMS
    """When the LLM starts alongside the semantic lookup; a hit cancels it."""
    limits: Limits = field(default_factory=Limits)
    llm_send_patience: float = 0.005
    """How long other work waits for the LLM request to leave (a new connection takes longest)."""


class PrefetchedStream:
    """An LLM stream started at once, in its own task, up to its first event.

    Starting early hides work behind the LLM's own time to first token: the semantic lookup
    when speculating, and the Origin message on a plain miss. Only the first event is read
    ahead; the reader takes the rest straight from the stream. aclose() closes the HTTP
    stream, so Ollama stops generating for nobody when a hit makes the answer unnecessary.
    """

    def __init__(self, llm: LLMBackend, query: Query) -> None:
        self._sent = asyncio.Event()
        self._stream = llm.stream(query, on_sent=self._sent.set)
        self._first = asyncio.ensure_future(anext(self._stream))

    async def request_sent(self, patience: float) -> None:
        """Returns once the request has left, the call has failed, or patience has run out.

        Work started before then (an embedding, a gRPC write) would delay the request itself.
        """
        sent = asyncio.ensure_future(self._sent.wait())
        await asyncio.wait(
            {sent, self._first}, timeout=patience, return_when=asyncio.FIRST_COMPLETED
        )
        sent.cancel()

    async def events(self) -> AsyncGenerator[LLMEvent, None]:
        try:
            first = await self._first
        except StopAsyncIteration:
            return
        yield first
        async for event in self._stream:
            yield event

    async def aclose(self) -> None:
        """Idempotent: the owner calls it whatever happened to the reader."""
        if not self._first.done():
            self._first.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._first
        elif not self._first.cancelled():
            self._first.exception()  # retrieved: a failure nobody read is not worth a warning
        await self._stream.aclose()


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
        async with contextlib.aclosing(self.ask_stream(query, control, streaming=False)) as events:
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
        self, query: Query, control: CacheControl, *, streaming: bool = True
    ) -> AsyncGenerator[AnswerEvent, None]:
        """The answer as events; `streaming` says whether the caller reads them as they come."""
        validate(query, control, self._settings.limits)
        started = time.monotonic()
        entry_id = keys.entry_id(query)
        partition = keys.partition_id(query, self._semantic.embedder.model_id)
        vector: Vector | None = None

        status = self._semantic_skip(query, control)
        llm: PrefetchedStream | None = None
        try:
            if not control.skip_lookup:
                entry = await self._exact.lookup(entry_id)
                if entry is not None:
                    async for event in self._replay(entry, Source.EXACT, 1.0, started, None):
                        yield event
                    return
                if status is None:
                    if self._speculates(streaming):
                        # Hide the semantic lookup behind the LLM's own time to first token;
                        # a hit cancels the call before it has produced anything to waste.
                        llm = await self._start_llm(query)
                    vector = await self._semantic.embed(query.prompt)
                    status = SemanticStatus.UNAVAILABLE
                    if vector is not None:
                        outcome = await self._semantic.lookup(
                            query, partition, vector, control.similarity_threshold
                        )
                        status = outcome.status
                        if outcome.hit is not None:
                            if llm is not None:
                                await llm.aclose()
                            async for event in self._replay(
                                outcome.hit.entry,
                                Source.SEMANTIC,
                                outcome.hit.similarity,
                                started,
                                status,
                            ):
                                yield event
                            return

            if llm is None:
                llm = await self._start_llm(query)
            yield Origin(
                source=Source.LLM,
                model=query.model,
                lookup_seconds=time.monotonic() - started,
                semantic_status=status,
            )
            async for event in self._generate(
                query, control, entry_id, partition, vector, started, llm.events()
            ):
                yield event
        finally:
            if llm is not None:
                await llm.aclose()

    async def _start_llm(self, query: Query) -> PrefetchedStream:
        """Starts the LLM call and lets it send its request before anything else runs."""
        llm = PrefetchedStream(self._llm, query)
        await llm.request_sent(self._settings.llm_send_patience)
        return llm

    def _speculates(self, streaming: bool) -> bool:
        mode = self._settings.speculative_llm
        return mode is Speculation.ALL or (mode is Speculation.STREAMS and streaming)

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
