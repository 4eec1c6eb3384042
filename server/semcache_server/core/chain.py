"""The cache chain: exact layer, then semantic layer, then the LLM, cheapest first; and what the
LLM answers is stored.

Every answer is a stream of events (an Origin, text deltas, a Completion); the unary call joins it.
A miss boards the flight (`core/flights.py`) already answering the same question, or launches one:
concurrent identical misses make one LLM call, on this replica and across replicas (the flights'
claims). `_generate` is the one place that decides whether an LLM answer is stored. LLM calls pass
admission control (`core/admission.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from semcache_server.core import keys
from semcache_server.core.admin import NoTally, Tally
from semcache_server.core.admission import Admission
from semcache_server.core.domain import (
    Answer,
    AnswerEvent,
    CacheControl,
    CachedEntry,
    Completion,
    FinishReason,
    GenerationTimeout,
    Judgement,
    Origin,
    Query,
    SemanticStatus,
    Source,
    Speculation,
    TextDelta,
    excerpt,
)
from semcache_server.core.flights import Flight, FlightKey, Flights, Landing
from semcache_server.core.layers import ExactLayer, SemanticLayer, SemanticRequest
from semcache_server.core.observing import observer, timed
from semcache_server.core.ports import LLMBackend, LLMEvent, LLMFinish, Stage
from semcache_server.core.validation import Limits, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainSettings:
    """The chain's part of the service settings; `semcache_server.settings` holds the defaults."""

    ttl_seconds: float | None
    """None: entries never expire."""
    replay_chunk_chars: int
    speculative_llm: Speculation
    """When the LLM starts alongside the semantic lookup; a hit cancels it."""
    limits: Limits
    max_generation_seconds: float
    """The longest an LLM call may take, whatever the callers' deadlines."""
    llm_send_patience: float = 0.005
    """How long other work waits for the LLM request to leave (a new connection takes longest);
    internal tuning, not a service setting."""


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
        settings: ChainSettings,
        llm_calls: Admission,
        flights: Flights,
        tally: Tally | None = None,
    ) -> None:
        """llm_calls bounds the LLM calls in flight and waiting (single-flight riders make none);
        flights are the LLM calls under way, which identical misses board."""
        self._exact = exact
        self._semantic = semantic
        self._llm = llm
        self._settings = settings
        self._flights = flights
        self._llm_calls = llm_calls
        self._tally: Tally = tally if tally is not None else NoTally()

    @property
    def limits(self) -> Limits:
        """What a request may carry; the edge checks the counts of repeated fields with them
        before converting a request."""
        return self._settings.limits

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
        semantic = self._semantic.begin(query, control)
        status = semantic.skipped
        judgement: Judgement | None = None
        nearest: float | None = None
        key: FlightKey = (entry_id, control.skip_store)
        flight: Flight | None = None
        shared = False
        try:
            if not control.skip_lookup:
                with timed(Stage.EXACT_LOOKUP):
                    entry = await self._exact.lookup(entry_id)
                if entry is not None and not control.too_old(entry, time.time()):
                    self._tally.count(query.namespace, Source.EXACT, entry.completion_tokens)
                    async for event in self._replay(
                        entry, query.tenant, Source.EXACT, 1.0, started, None
                    ):
                        yield event
                    return
            flight = self._flights.board(key)
            shared = flight is not None
            if flight is None and not control.skip_lookup and semantic.skipped is None:
                if self._speculates(streaming):
                    # Hide the semantic lookup behind the LLM's own time to first token; a hit
                    # leaves the flight, which cancels a call nobody else rides.
                    flight = await self._launch(key, query, control, entry_id, semantic)
                outcome = await semantic.lookup()
                status, judgement = outcome.status, outcome.judgement
                nearest = outcome.nearest
                if outcome.hit is not None:
                    hit = outcome.hit.entry
                    self._tally.count(query.namespace, Source.SEMANTIC, hit.completion_tokens)
                    async for event in self._replay(
                        outcome.hit.entry,
                        query.tenant,
                        Source.SEMANTIC,
                        outcome.hit.similarity,
                        started,
                        status,
                        outcome.judgement,
                        nearest,
                    ):
                        yield event
                    return
            if flight is None:
                flight = self._flights.board(key)  # another caller may have launched one meanwhile
                shared = flight is not None
            if flight is None:
                flight = await self._launch(key, query, control, entry_id, semantic)
            yield Origin(
                source=Source.LLM,
                model=query.model,
                lookup_seconds=time.monotonic() - started,
                semantic_status=status,
                decided_by=judgement.decided_by if judgement else None,
                verifier_score=judgement.score if judgement else None,
                judge_seconds=judgement.judge_seconds if judgement else None,
                shared_llm_call=shared or flight.remote,
                nearest_similarity=nearest,
                guard_findings=judgement.guard_findings if judgement else (),
            )
            async for text in flight.ride():
                yield TextDelta(text)
            landing = flight.landing
            assert landing is not None
            self._tally.count(query.namespace, Source.LLM)
            finish = landing.finish
            yield Completion(
                stored=landing.stored,
                entry_id=entry_id if landing.stored else "",
                finish_reason=finish.finish_reason if finish else None,
                prompt_tokens=finish.prompt_tokens if finish else 0,
                completion_tokens=finish.completion_tokens if finish else 0,
                total_seconds=time.monotonic() - started,
            )
        finally:
            if flight is not None:
                flight.leave()
            semantic.close()

    async def _launch(
        self,
        key: FlightKey,
        query: Query,
        control: CacheControl,
        entry_id: str,
        semantic: SemanticRequest,
    ) -> Flight:
        """Start the LLM call as a flight others may board; returns once its request has left.

        The flight holds the semantic request too (it stores the answer with it), so the request
        closes when both the caller and the flight are done with it. A refresh (skip_lookup)
        always asks the LLM: it neither claims the question nor waits for another replica.
        """
        semantic.hold()

        async def generate(flight: Flight) -> Landing:
            return await self._generate(flight, query, control, entry_id, semantic)

        return await self._flights.launch(
            key, generate, claim=not control.skip_lookup, landed=semantic.close
        )

    async def _generate(
        self,
        flight: Flight,
        query: Query,
        control: CacheControl,
        entry_id: str,
        semantic: SemanticRequest,
    ) -> Landing:
        """The one place that decides whether an LLM answer is stored: only when the LLM finished
        it by itself, the text is not blank, and the callers allowed storing."""
        await self._llm_calls.acquire()
        llm: PrefetchedStream | None = None
        finish: LLMFinish | None = None
        # The bound holds whatever the callers' deadlines (a caller may set none), and it ends
        # before the store: a call past it stores nothing.
        bound = asyncio.timeout(self._settings.max_generation_seconds)
        try:
            try:
                async with bound:
                    llm = PrefetchedStream(self._llm, query)
                    await llm.request_sent(self._settings.llm_send_patience)
                    flight.departed.set()
                    if not control.skip_store:
                        # The entry needs an embedding for later semantic hits; make it while the
                        # LLM talks.
                        semantic.embed_ahead()
                    async with contextlib.aclosing(llm.events()) as stream:
                        async for event in stream:
                            if isinstance(event, TextDelta):
                                flight.append(event.text)
                            else:
                                finish = event
            except TimeoutError:
                if not bound.expired():
                    raise
                seconds = self._settings.max_generation_seconds
                log.warning(
                    "an LLM call to model %r ran past the server's bound of %g s; cancelled",
                    excerpt(query.model),
                    seconds,
                )
                raise GenerationTimeout(
                    f"the LLM did not finish the answer within {seconds:g} s, the most this "
                    "server allows; nothing was stored"
                ) from None
            stored = False
            if (
                finish is not None
                and finish.finish_reason is FinishReason.STOP
                and "".join(flight.deltas).strip()
                and not control.skip_store
            ):
                ttl = (
                    control.ttl_seconds
                    if control.ttl_seconds is not None
                    else self._settings.ttl_seconds
                )
                stored = await semantic.store(
                    entry_id, "".join(flight.deltas), ttl, finish.completion_tokens
                )
            return Landing(stored, finish)
        finally:
            if llm is not None:
                await llm.aclose()
            self._llm_calls.release()

    def _speculates(self, streaming: bool) -> bool:
        mode = self._settings.speculative_llm
        return mode is Speculation.ALL or (mode is Speculation.STREAMS and streaming)

    async def _replay(
        self,
        entry: CachedEntry,
        tenant: str,
        source: Source,
        similarity: float,
        started: float,
        semantic_status: SemanticStatus | None,
        judgement: Judgement | None = None,
        nearest: float | None = None,
    ) -> AsyncGenerator[AnswerEvent, None]:
        """A stored answer as events. Who asked it, when and how often is told only to the tenant
        that stored it (in a shared namespace another tenant gets the answer alone)."""
        owner = entry.owned_by(tenant)
        observer().tokens_saved(entry.completion_tokens)
        age = max(0.0, time.time() - entry.created_at)
        yield Origin(
            source=source,
            model=entry.model,
            lookup_seconds=time.monotonic() - started,
            similarity=similarity,
            matched_prompt=entry.prompt if owner else "",
            entry_id=entry.entry_id,
            cached_at=entry.created_at if owner else None,
            hits=entry.hits if owner else 0,
            age_seconds=age if owner else None,
            semantic_status=semantic_status,
            decided_by=judgement.decided_by if judgement else None,
            verifier_score=judgement.score if judgement else None,
            judge_seconds=judgement.judge_seconds if judgement else None,
            nearest_similarity=nearest,
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
