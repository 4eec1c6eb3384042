"""What each call of the semcache.v1 services did, for the metrics and the request log.

`CallObserving` is a grpc.aio server interceptor. For each call it takes the caller's
`x-request-id` (or makes one) and sends it back in the trailing metadata (and at once, in the
initial metadata, of a stream); it makes a `CallRecord`, which the core reports its stages to
(`core/observing.py`); it reads where the answer came from in the responses; and when the call
ends, whatever its status, it hands the record to the metrics and writes the request log line.
Health checks and reflection are not observed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from semcache.v1 import semcache_pb2 as pb

from semcache_server.core.domain import Caller
from semcache_server.core.observing import observe, observer
from semcache_server.core.ports import LLMOutcome, Stage
from semcache_server.edge.auth import Authenticator, Metadata
from semcache_server.edge.metrics import Metrics
from semcache_server.edge.request_log import RequestLog

log = logging.getLogger(__name__)

OBSERVED_PREFIX = "/semcache.v1."
"""Calls of these services are observed; health checks and reflection are not."""
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 64
_NOT_IN_REQUEST_ID = re.compile(r"[^A-Za-z0-9._:-]")

_SOURCES = {pb.SOURCE_EXACT: "exact", pb.SOURCE_SEMANTIC: "semantic", pb.SOURCE_LLM: "llm"}


def request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's x-request-id, kept to letters, digits and `._:-` and clipped to 64
    characters (it goes into log lines and headers); a new one when there is none left."""
    for name, value in metadata or ():
        if name == REQUEST_ID_KEY and isinstance(value, str):
            cleaned = _NOT_IN_REQUEST_ID.sub("", value)[:MAX_REQUEST_ID_CHARS]
            if cleaned:
                return cleaned
    return uuid.uuid4().hex


class CallRecord:
    """One call as it goes: the core's reports (it is the call's `RequestObserver`), what the
    responses said, and how it ended. Process-wide counts go to the metrics as they come, so an
    LLM call that outlives its caller is still counted."""

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
        """exact, semantic or llm; None until an answer starts."""
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

    # --- what the edge sees -----------------------------------------------------------------

    def request(self, message: object) -> None:
        prompt = getattr(message, "prompt", None)
        self.prompt = prompt if isinstance(prompt, str) else None

    def response(self, message: object) -> None:
        if isinstance(message, pb.AskResponse):
            self._answered(message)
            self.stored = message.stored
        elif isinstance(message, pb.AskStreamResponse):
            kind = message.WhichOneof("event")
            if kind == "start":
                self._answered(message.start)
            elif kind == "end":
                self.stored = message.end.stored

    def _answered(self, message: pb.AskResponse | pb.AskStreamStart) -> None:
        self.source = _SOURCES.get(message.source)
        if self.source in ("exact", "semantic"):
            self.similarity = message.similarity
        self.matched_prompt = message.matched_prompt or None
        self.shared_llm_call = message.shared_llm_call
        if message.semantic_status != pb.SEMANTIC_STATUS_UNSPECIFIED:
            name = pb.SemanticStatus.Name(message.semantic_status)
            self.semantic_status = name.removeprefix("SEMANTIC_STATUS_").lower()
        if message.decided_by != pb.SEMANTIC_CHECK_UNSPECIFIED:
            check = pb.SemanticCheck.Name(message.decided_by)
            self.decided_by = check.removeprefix("SEMANTIC_CHECK_").lower()
        if message.HasField("verifier_score"):
            self.verifier_score = message.verifier_score
        self.guard_findings = list(message.guard_findings)

    def end(self, status: str, error: str) -> None:
        self.seconds = time.perf_counter() - self._started
        self.status = status
        self.error = error


class TenantNaming:
    """An authenticator that also tells the call's record who the caller is."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def caller(self, metadata: Metadata) -> Caller:
        caller = self._authenticator.caller(metadata)
        record = observer()
        if isinstance(record, CallRecord):
            record.tenant = caller.tenant
        return caller


def _status(context: grpc.aio.ServicerContext, error: BaseException | None) -> tuple[str, str]:
    """The call's status name and message, as the caller receives them."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED", "the call was cancelled"
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        return str(code.name), str(context.details() or "")
    if error is not None:
        return "UNKNOWN", type(error).__name__
    return "OK", ""


UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class CallObserving(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Observes every call of the semcache.v1 services, unary and server-streaming alike."""

    def __init__(self, metrics: Metrics | None, request_log: RequestLog) -> None:
        self._metrics = metrics
        self._log = request_log
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """By method: the handler gRPC found, and the observing one made for it once."""

    def naming(self, authenticator: Authenticator) -> Authenticator:
        """authenticator, telling each call's record its tenant."""
        return TenantNaming(authenticator)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(OBSERVED_PREFIX):
            return handler
        found, wrapped = self._wrapped.get(method, (None, None))
        if found is not handler:
            wrapped = self._wrap(method.rpartition("/")[2], handler)
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(rpc, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(rpc, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # semcache.v1 has no client-streaming calls

    def _begin(self, rpc: str, context: grpc.aio.ServicerContext, request: object) -> CallRecord:
        record = CallRecord(rpc, request_id(context.invocation_metadata()), self._metrics)
        record.request(request)
        observe(record)  # this call's own task: its context ends with it
        return record

    def _end(
        self, record: CallRecord, context: grpc.aio.ServicerContext, error: BaseException | None
    ) -> None:
        """Ends the record now, and reports it once the response or status is on its way: the
        log line (tens of microseconds) stays off the caller's latency. Never raises: a failure
        here must not change what the caller gets."""
        try:
            record.end(*_status(context, error))
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

    def _unary(self, rpc: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            record = self._begin(rpc, context, request)
            context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id),))
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                self._end(record, context, error)
                raise
            record.response(response)
            self._end(record, context, None)
            return response

        return observed

    def _stream(self, rpc: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            record = self._begin(rpc, context, request)
            id_metadata = ((REQUEST_ID_KEY, record.request_id),)
            context.set_trailing_metadata(id_metadata)
            failure: BaseException | None = None
            try:
                await context.send_initial_metadata(id_metadata)
                responses = behaviour(request, context)
                try:
                    async for response in responses:
                        record.response(response)
                        yield response
                finally:
                    aclose = getattr(responses, "aclose", None)
                    if aclose is not None:
                        await aclose()
            except BaseException as error:
                failure = error
                raise
            finally:
                self._end(record, context, failure)

        return observed
