"""The gRPC edge: translates semcache.v1 messages into calls on the cache chain and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import NoReturn

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_server.core.chain import CacheChain
from semcache_server.core.domain import (
    DEFAULT_NAMESPACE,
    Completion,
    InvalidRequest,
    LLMRejected,
    LLMUnavailable,
    ModelNotFound,
    Origin,
    Overloaded,
)
from semcache_server.edge import converters

log = logging.getLogger(__name__)

TenantResolver = Callable[[grpc.aio.ServicerContext], str]
"""Names the tenant of a call; the namespace that keeps tenants' entries apart."""


def single_tenant(context: grpc.aio.ServicerContext) -> str:
    return DEFAULT_NAMESPACE


_STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (LLMRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (LLMUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    """The one place where domain errors become statuses."""
    for error_type, code in _STATUS_OF:
        if isinstance(error, error_type):
            message = (
                str(error)
                if code != grpc.StatusCode.DEADLINE_EXCEEDED
                else ("the deadline passed before the answer was complete; nothing was stored")
            )
            await context.abort(code, message)
    log.exception("unexpected error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    raise AssertionError("context.abort returned")


class SemcacheServicer(pb_grpc.SemcacheServiceServicer):
    def __init__(self, chain: CacheChain, tenant_of: TenantResolver = single_tenant) -> None:
        self._chain = chain
        self._tenant_of = tenant_of

    async def Ask(
        self, request: pb.AskRequest, context: grpc.aio.ServicerContext
    ) -> pb.AskResponse:
        try:
            query, control = converters.request_to_domain(request, self._tenant_of(context))
            async with asyncio.timeout(context.time_remaining()):
                answer = await self._chain.ask(query, control)
        except Exception as error:
            await _abort(context, error)
        return converters.answer_to_response(answer)

    async def AskStream(
        self, request: pb.AskStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.AskStreamResponse, None]:
        try:
            query, control = converters.request_to_domain(request, self._tenant_of(context))
            async with (
                asyncio.timeout(context.time_remaining()),
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
            await _abort(context, error)
