"""The gRPC edge of CacheAdminService: requests to `core.admin` calls and back (the messages
are converted in `edge/grpc/converters.py`), errors mapped as Ask's are (`abort_with_status`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_server.core.admin import CacheAdmin, Scope
from semcache_server.core.domain import InvalidRequest
from semcache_server.edge.auth import TENANT_NAME, AdminAccess
from semcache_server.edge.grpc.converters import (
    MalformedRequest,
    entry_message,
    refusal,
    request_parser,
    selector_of,
)
from semcache_server.edge.grpc.servicer import abort_with_status

T = TypeVar("T")
RequestT = TypeVar("RequestT", bound=Message)


def _check_tenant(tenant: str) -> None:
    """An operator's request may name a tenant; checked once the caller is known (a tenant's key
    naming another tenant is refused before)."""
    if tenant and not TENANT_NAME.fullmatch(tenant):
        raise InvalidRequest(
            "tenant", "is not a tenant name: 1-64 letters, digits, '.', '_' or '-'"
        )


class AdminServicer(pb_grpc.CacheAdminServiceServicer):
    def __init__(self, admin: CacheAdmin, access: AdminAccess) -> None:
        self._admin = admin
        self._access = access

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        request: RequestT | MalformedRequest,
        work: Callable[[Scope, RequestT], Awaitable[T]],
    ) -> T:
        """The caller first (a stranger learns nothing about its request), then the request."""
        try:
            metadata = context.invocation_metadata() or ()
            if isinstance(request, MalformedRequest):
                self._access.scope(metadata, "")
                raise refusal(request)
            tenant = str(getattr(request, "tenant", ""))  # "" for the requests without one
            scope = self._access.scope(metadata, tenant)
            _check_tenant(tenant)
            return await work(scope, request)
        except Exception as error:
            await abort_with_status(context, error)

    async def DeleteEntry(
        self,
        request: pb.DeleteEntryRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.DeleteEntryResponse:
        async def work(scope: Scope, request: pb.DeleteEntryRequest) -> bool:
            return await self._admin.delete(scope, request.entry_id)

        return pb.DeleteEntryResponse(deleted=await self._call(context, request, work))

    async def Invalidate(
        self,
        request: pb.InvalidateRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.InvalidateResponse:
        async def work(scope: Scope, request: pb.InvalidateRequest) -> int:
            return await self._admin.invalidate(scope, selector_of(request))

        return pb.InvalidateResponse(removed=await self._call(context, request, work))

    async def GetStats(
        self,
        request: pb.GetStatsRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.GetStatsResponse:
        async def work(scope: Scope, request: pb.GetStatsRequest) -> pb.GetStatsResponse:
            stats = await self._admin.stats(scope)
            return pb.GetStatsResponse(
                entries=stats.entries,
                exact_hits=stats.counts.exact_hits,
                semantic_hits=stats.counts.semantic_hits,
                llm_calls=stats.counts.llm_calls,
                hit_ratio=stats.hit_ratio,
                llm_calls_saved=stats.hits,
                tokens_saved=stats.counts.tokens_saved,
                index_entries=stats.index_entries,
                redis_memory_bytes=stats.redis_memory_bytes,
            )

        return await self._call(context, request, work)

    async def ListEntries(
        self,
        request: pb.ListEntriesRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListEntriesResponse:
        async def work(scope: Scope, request: pb.ListEntriesRequest) -> pb.ListEntriesResponse:
            listed, token = await self._admin.page(scope, request.page_size, request.page_token)
            return pb.ListEntriesResponse(
                entries=[entry_message(item) for item in listed], next_page_token=token
            )

        return await self._call(context, request, work)

    async def GetEntry(
        self,
        request: pb.GetEntryRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.GetEntryResponse:
        async def work(scope: Scope, request: pb.GetEntryRequest) -> pb.GetEntryResponse | None:
            listed = await self._admin.get(scope, request.entry_id)
            return None if listed is None else pb.GetEntryResponse(entry=entry_message(listed))

        found = await self._call(context, request, work)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such entry in your reach")
        assert found is not None
        return found


def add_admin_service(servicer: AdminServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer as the generated add_CacheAdminServiceServicer_to_server does, with
    request parsers that hand malformed bytes to the servicer (INVALID_ARGUMENT) instead of
    raising in gRPC (UNKNOWN, and a traceback for every such call)."""
    methods: dict[str, tuple[Callable[..., object], type[Message], type[Message]]] = {
        "DeleteEntry": (servicer.DeleteEntry, pb.DeleteEntryRequest, pb.DeleteEntryResponse),
        "Invalidate": (servicer.Invalidate, pb.InvalidateRequest, pb.InvalidateResponse),
        "GetStats": (servicer.GetStats, pb.GetStatsRequest, pb.GetStatsResponse),
        "ListEntries": (servicer.ListEntries, pb.ListEntriesRequest, pb.ListEntriesResponse),
        "GetEntry": (servicer.GetEntry, pb.GetEntryRequest, pb.GetEntryResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request_parser(request_type),
            response_serializer=response_type.SerializeToString,
        )
        for name, (method, request_type, response_type) in methods.items()
    }
    name = pb.DESCRIPTOR.services_by_name["CacheAdminService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
