"""The gRPC edge: translates semcache.v1 messages into calls on the cache chain and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import NoReturn

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_server.core.chain import CacheChain
from semcache_server.core.domain import (
    Caller,
    Completion,
    Forbidden,
    GenerationTimeout,
    InvalidRequest,
    LLMRejected,
    LLMUnavailable,
    ModelNotFound,
    Origin,
    Overloaded,
    StoreUnavailable,
    Unauthenticated,
    excerpt,
)
from semcache_server.edge import converters
from semcache_server.edge.auth import Authenticator
from semcache_server.edge.converters import MalformedRequest

log = logging.getLogger(__name__)

_STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (LLMRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (LLMUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (GenerationTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)
MAX_MESSAGE_CHARS = 300
"""gRPC sends the message in a header (8 KB by default, percent-encoded): past it the call
fails as RESOURCE_EXHAUSTED instead. Messages echo callers' values only clipped (`excerpt`);
this is the last guard."""


async def abort_with_status(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    """The one place where domain errors become statuses."""
    for error_type, code in _STATUS_OF:
        if isinstance(error, error_type):
            await context.abort(code, excerpt(_message(error), MAX_MESSAGE_CHARS))
    log.exception("unexpected error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    raise AssertionError("context.abort returned")


def _message(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "the deadline passed before the answer was complete; nothing was stored"
    if isinstance(error, StoreUnavailable):
        # Only calls that need Redis itself (the admin service's) fail on it; Ask fails open.
        # Redis's words name its address, so they go to the log only.
        log.warning("a call failed on Redis: %s", error)
        return (
            "the cache's Redis is unreachable or refused the call (it may be down, or full "
            "at its maxmemory); retry later, and see the server log for what Redis said"
        )
    return str(error)


DEADLINE_MARGIN = 0.02
"""Seconds before the caller's deadline at which the server gives up itself: its
DEADLINE_EXCEEDED (saying nothing was stored) then reaches the caller, instead of gRPC core
ending the call underneath the handler (an ERROR and a traceback in the log)."""


def _budget(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN)


class SemcacheServicer(pb_grpc.SemcacheServiceServicer):
    def __init__(self, chain: CacheChain, authenticator: Authenticator) -> None:
        self._chain = chain
        self._authenticator = authenticator

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return self._authenticator.caller(context.invocation_metadata() or ())

    async def Ask(
        self, request: pb.AskRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.AskResponse:
        try:
            query, control = converters.request_to_domain(
                request, self._caller(context), self._chain.limits
            )
            async with asyncio.timeout(_budget(context)):
                answer = await self._chain.ask(query, control)
        except Exception as error:
            await abort_with_status(context, error)
        return converters.answer_to_response(answer)

    async def AskStream(
        self, request: pb.AskStreamRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.AskStreamResponse, None]:
        try:
            query, control = converters.request_to_domain(
                request, self._caller(context), self._chain.limits
            )
            async with (
                asyncio.timeout(_budget(context)),
                contextlib.aclosing(self._chain.ask_stream(query, control)) as events,
            ):
                async for event in events:
                    if isinstance(event, Origin):
                        yield converters.origin_to_stream(event)
                    elif isinstance(event, Completion):
                        yield converters.completion_to_stream(event)
                    else:
                        yield converters.delta_to_stream(event.text)
        except Exception as error:
            await abort_with_status(context, error)


def add_semcache_service(servicer: SemcacheServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer as the generated add_SemcacheServiceServicer_to_server does, with
    request parsers that hand malformed bytes to the servicer (INVALID_ARGUMENT) instead of
    raising in gRPC (UNKNOWN, and a traceback for every such call)."""
    handlers = {
        "Ask": grpc.unary_unary_rpc_method_handler(
            servicer.Ask,
            request_deserializer=converters.request_parser(pb.AskRequest),
            response_serializer=pb.AskResponse.SerializeToString,
        ),
        "AskStream": grpc.unary_stream_rpc_method_handler(
            servicer.AskStream,
            request_deserializer=converters.request_parser(pb.AskStreamRequest),
            response_serializer=pb.AskStreamResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["SemcacheService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
