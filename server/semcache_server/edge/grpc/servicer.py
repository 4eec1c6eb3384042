"""The gRPC front: translates semcache.v1 messages into calls of the pipeline (`edge/calls.py`)
and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import NoReturn

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_server.core.domain import Caller, Completion, Origin
from semcache_server.edge import errors
from semcache_server.edge.auth import Authenticator
from semcache_server.edge.calls import Calls
from semcache_server.edge.grpc import converters
from semcache_server.edge.grpc.converters import MalformedRequest

log = logging.getLogger(__name__)


async def abort_with_status(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    """Domain errors become statuses by the one table (`edge/errors.py`)."""
    refusal = errors.refusal(error)
    await context.abort(grpc.StatusCode[refusal.status.name], refusal.message)
    raise AssertionError("context.abort returned")


DEADLINE_MARGIN = 0.02
"""Seconds before the caller's deadline at which the server gives up itself: its
DEADLINE_EXCEEDED (saying nothing was stored) then reaches the caller, instead of gRPC core
ending the call underneath the handler (an ERROR and a traceback in the log)."""


def _budget(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN)


class SemcacheServicer(pb_grpc.SemcacheServiceServicer):
    def __init__(self, calls: Calls, authenticator: Authenticator) -> None:
        """authenticator: named by the pipeline (`Calls.naming`), so the call's record and
        context learn the caller."""
        self._calls = calls
        self._authenticator = authenticator

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return self._authenticator.caller(context.invocation_metadata() or ())

    async def Ask(
        self, request: pb.AskRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.AskResponse:
        try:
            query, control = converters.request_to_domain(
                request, self._caller(context), self._calls.limits
            )
            async with asyncio.timeout(_budget(context)):
                answer = await self._calls.ask(query, control)
        except Exception as error:
            await abort_with_status(context, error)
        return converters.answer_to_response(answer)

    async def AskStream(
        self, request: pb.AskStreamRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.AskStreamResponse, None]:
        try:
            query, control = converters.request_to_domain(
                request, self._caller(context), self._calls.limits
            )
            async with (
                asyncio.timeout(_budget(context)),
                contextlib.aclosing(self._calls.ask_stream(query, control)) as events,
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
