"""What each call of the semcache.v1 services did, for the metrics and the request log.

`CallObserving` is a grpc.aio server interceptor: gRPC's side of the call pipeline
(`edge/calls.py`). For each call it takes the caller's `x-request-id` (or makes one) and sends it
back in the trailing metadata (and at once, in the initial metadata, of a stream); it opens the
call's record, which the core and the chain's answer events feed; and when the call ends, whatever
its status, it ends the record with the status the caller received. Health checks and reflection
are not observed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from semcache_server.edge.calls import CallRecord, Calls, request_id

OBSERVED_PREFIX = "/semcache.v1."
"""Calls of these services are observed; health checks and reflection are not."""
REQUEST_ID_KEY = "x-request-id"


def metadata_request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The x-request-id the caller sent (see `calls.request_id`), or a new one."""
    for name, value in metadata or ():
        if name == REQUEST_ID_KEY and isinstance(value, str):
            return request_id(value)
    return request_id(None)


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

    def __init__(self, calls: Calls) -> None:
        self._calls = calls
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """By method: the handler gRPC found, and the observing one made for it once."""

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

    def _begin(self, rpc: str, context: grpc.aio.ServicerContext) -> CallRecord:
        # This call's own task: the record is observed in its context, which ends with it.
        return self._calls.begin(rpc, metadata_request_id(context.invocation_metadata()))

    def _end(
        self, record: CallRecord, context: grpc.aio.ServicerContext, error: BaseException | None
    ) -> None:
        self._calls.end(record, *_status(context, error))

    def _unary(self, rpc: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            record = self._begin(rpc, context)
            context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id),))
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                self._end(record, context, error)
                raise
            self._end(record, context, None)
            return response

        return observed

    def _stream(self, rpc: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            record = self._begin(rpc, context)
            id_metadata = ((REQUEST_ID_KEY, record.request_id),)
            context.set_trailing_metadata(id_metadata)
            failure: BaseException | None = None
            try:
                await context.send_initial_metadata(id_metadata)
                responses = behaviour(request, context)
                try:
                    async for response in responses:
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
