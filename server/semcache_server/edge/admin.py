"""The gRPC edge of CacheAdminService: requests to `core.admin` calls and back (the messages
are converted in `edge/converters.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_server.core.admin import CacheAdmin, Scope
from semcache_server.edge.auth import AdminAccess
from semcache_server.edge.converters import entry_message, selector_of
from semcache_server.edge.servicer import abort_with_status

T = TypeVar("T")


class AdminServicer(pb_grpc.CacheAdminServiceServicer):
    def __init__(self, admin: CacheAdmin, access: AdminAccess) -> None:
        self._admin = admin
        self._access = access

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        tenant: str,
        work: Callable[[Scope], Awaitable[T]],
    ) -> T:
        try:
            scope = self._access.scope(context.invocation_metadata() or (), tenant)
            return await work(scope)
        except Exception as error:
            await abort_with_status(context, error)

    async def DeleteEntry(
        self, request: pb.DeleteEntryRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteEntryResponse:
        deleted = await self._call(
            context, "", lambda scope: self._admin.delete(scope, request.entry_id)
        )
        return pb.DeleteEntryResponse(deleted=deleted)

    async def Invalidate(
        self, request: pb.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvalidateResponse:
        async def work(scope: Scope) -> int:
            return await self._admin.invalidate(scope, selector_of(request))

        return pb.InvalidateResponse(removed=await self._call(context, request.tenant, work))

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        stats = await self._call(context, request.tenant, self._admin.stats)
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

    async def ListEntries(
        self, request: pb.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEntriesResponse:
        listed, token = await self._call(
            context,
            request.tenant,
            lambda scope: self._admin.page(scope, request.page_size, request.page_token),
        )
        return pb.ListEntriesResponse(
            entries=[entry_message(item) for item in listed], next_page_token=token
        )

    async def GetEntry(
        self, request: pb.GetEntryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEntryResponse:
        listed = await self._call(
            context, "", lambda scope: self._admin.get(scope, request.entry_id)
        )
        if listed is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such entry in your reach")
        assert listed is not None
        return pb.GetEntryResponse(entry=entry_message(listed))
