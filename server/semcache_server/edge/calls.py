"""The call pipeline every front goes through, knowing no transport.

A front (gRPC's interceptor and servicers in `edge/grpc/`, the HTTP handlers in `edge/http/`)
opens a call with `Calls.begin`, names its caller with the authenticator `Calls.naming` gives
(the same API keys on every front), asks the cache through `Calls.ask` / `Calls.ask_stream`, and
ends the call with the status it answered (`edge/errors.py` names them). Between these the
pipeline keeps one `CallRecord`: the core reports its stages to it (`core/observing.py`), the
chain's answer events say where the answer came from (the `Origin`) and how it finished (the
`Completion`), and when the call ends the record goes to the metrics and the request log. The
caller is also kept in a context variable (`current_caller`) for whatever runs inside the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator
from contextvars import ContextVar

from semcache_server.core.chain import CacheChain
from semcache_server.core.domain import (
    Answer,
    AnswerEvent,
    CacheControl,
    Caller,
    Completion,
    Origin,
    Query,
    Source,
)
from semcache_server.core.observing import observe, observer
from semcache_server.core.ports import LLMOutcome, Stage
from semcache_server.core.validation import Limits
from semcache_server.edge.auth import Authenticator, Metadata
from semcache_server.edge.metrics import Metrics
from semcache_server.edge.request_log import RequestLog

log = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 64
_NOT_IN_REQUEST_ID = re.compile(r"[^A-Za-z0-9._:-]")

PASSTHROUGH = "passthrough"
"""The record's source for a call the cache did not model, passed to Ollama as it was."""

_caller: ContextVar[Caller | None] = ContextVar("semcache_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the call being served here, once authenticated; None before or outside."""
    return _caller.get()


def request_id(given: str | bytes | None) -> str:
    """The caller's request id (gRPC's x-request-id metadata, HTTP's X-Request-Id header), kept
    to letters, digits and `._:-` and clipped to 64 characters (it goes into log lines and
    headers); a new one when there is none left."""
    if isinstance(given, str):
        cleaned = _NOT_IN_REQUEST_ID.sub("", given)[:MAX_REQUEST_ID_CHARS]
        if cleaned:
            return cleaned
    return uuid.uuid4().hex


class CallRecord:
    """One call as it goes: the core's reports (it is the call's `RequestObserver`), where its
    answer came from and how it finished, and how the call ended. Process-wide counts go to the
    metrics as they come, so an LLM call that outlives its caller is still counted."""

    def __init__(self, rpc: str, request_id: str, metrics: Metrics | None) -> None:
        self.rpc = rpc
        self.request_id = request_id
        self._metrics = metrics
        self._started = time.perf_counter()
        self.tenant: str | None = None
        """Set once the call is authenticated."""
        self.prompt: str | None = None
        self.matched_prompt: str | None = None
        self.source: str | None = None
        """exact, semantic, llm, or passthrough; None until an answer starts."""
        self.passthrough_reason: str | None = None
        self.similarity: float | None = None
        """Of the served entry, for a hit."""
        self.nearest_similarity: float | None = None
        """Of the nearest cached prompt the semantic search found."""
        self.semantic_status: str | None = None
        self.decided_by: str | None = None
        """The check that accepted or refused the nearest candidate (cosine, guard, ...)."""
        self.verifier_score: float | None = None
        self.guard_findings: list[str] = []
        self.shared_llm_call = False
        self.stored = False
        self.stages: dict[Stage, float] = {}
        self.saved_tokens = 0
        self.completion_tokens = 0
        self.llm_outcome: LLMOutcome | None = None
        self.shed_resources: list[str] = []
        self.status = "OK"
        self.error = ""
        self.seconds = 0.0

    # --- what the core reports (RequestObserver) ------------------------------------------------

    def stage(self, stage: Stage, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        if self._metrics is not None:
            self._metrics.stage(stage, seconds)

    def nearest(self, similarity: float) -> None:
        self.nearest_similarity = similarity

    def tokens_saved(self, tokens: int) -> None:
        self.saved_tokens += tokens
        if self._metrics is not None:
            self._metrics.saved(tokens)

    def shed(self, resource: str) -> None:
        self.shed_resources.append(resource)
        if self._metrics is not None:
            self._metrics.shed_work(resource)

    def llm_call(self, outcome: LLMOutcome, completion_tokens: int) -> None:
        self.llm_outcome = outcome
        self.completion_tokens += completion_tokens
        if self._metrics is not None:
            self._metrics.llm_call(outcome, completion_tokens)

    # --- the chain's answer events ----------------------------------------------------------

    def asked(self, query: Query) -> None:
        self.prompt = query.prompt

    def answered(self, origin: Origin) -> None:
        self.source = origin.source.value
        if origin.source in (Source.EXACT, Source.SEMANTIC):
            self.similarity = origin.similarity
        self.matched_prompt = origin.matched_prompt or None
        self.shared_llm_call = origin.shared_llm_call
        if origin.semantic_status is not None:
            self.semantic_status = origin.semantic_status.value
        if origin.decided_by is not None:
            self.decided_by = origin.decided_by.value
        self.verifier_score = origin.verifier_score
        self.guard_findings = list(origin.guard_findings)

    def finished(self, completion: Completion) -> None:
        self.stored = completion.stored

    def passed_through(self, reason: str) -> None:
        """The call went to Ollama as it was, uncached, because of reason (a field's name)."""
        self.source = PASSTHROUGH
        self.passthrough_reason = reason

    def end(self, status: str, error: str) -> None:
        self.seconds = time.perf_counter() - self._started
        self.status = status
        self.error = error


class _TenantNaming:
    """An authenticator that also tells the call's record and context who the caller is."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def caller(self, metadata: Metadata) -> Caller:
        caller = self._authenticator.caller(metadata)
        record = observer()
        if isinstance(record, CallRecord):
            record.tenant = caller.tenant
        _caller.set(caller)
        return caller


class Calls:
    """The pipeline: opens, feeds and reports each call's record, whatever its front."""

    def __init__(self, chain: CacheChain, metrics: Metrics | None, request_log: RequestLog) -> None:
        self._chain = chain
        self._metrics = metrics
        self._log = request_log

    @property
    def limits(self) -> Limits:
        return self._chain.limits

    def naming(self, authenticator: Authenticator) -> Authenticator:
        """authenticator, telling each call's record and context its caller."""
        return _TenantNaming(authenticator)

    def begin(self, rpc: str, request_id: str) -> CallRecord:
        """Open a call's record, observed by the core for the rest of this task (and the tasks it
        starts): each front calls it in the call's own task, whose context ends with it."""
        record = CallRecord(rpc, request_id, self._metrics)
        observe(record)
        return record

    async def ask(self, query: Query, control: CacheControl) -> Answer:
        """The chain's whole answer, told to the call's record."""
        record = observer()
        if isinstance(record, CallRecord):
            record.asked(query)
        answer = await self._chain.ask(query, control)
        if isinstance(record, CallRecord):
            record.answered(answer.origin)
            record.finished(answer.completion)
        return answer

    async def ask_stream(
        self, query: Query, control: CacheControl
    ) -> AsyncGenerator[AnswerEvent, None]:
        """The chain's answer events, each told to the call's record as it passes."""
        record = observer()
        if isinstance(record, CallRecord):
            record.asked(query)
        async with contextlib.aclosing(self._chain.ask_stream(query, control)) as events:
            async for event in events:
                if isinstance(record, CallRecord):
                    if isinstance(event, Origin):
                        record.answered(event)
                    elif isinstance(event, Completion):
                        record.finished(event)
                yield event

    def end(self, record: CallRecord, status: str, error: str) -> None:
        """Ends the record now, and reports it once the response or status is on its way: the
        log line (tens of microseconds) stays off the caller's latency. Never raises: a failure
        here must not change what the caller gets."""
        try:
            record.end(status, error)
        except Exception:
            log.exception("observing a call failed")
            return
        try:
            asyncio.get_running_loop().call_soon(self._report, record)
        except RuntimeError:  # no loop: a stream finalised outside one
            self._report(record)

    def _report(self, record: CallRecord) -> None:
        try:
            if self._metrics is not None:
                self._metrics.call(
                    record.rpc,
                    record.source,
                    record.status,
                    record.seconds,
                    record.nearest_similarity,
                    record.stored,
                )
            self._log.write(record)
        except Exception:
            log.exception("observing a call failed")
