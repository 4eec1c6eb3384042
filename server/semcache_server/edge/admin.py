"""The gRPC edge of CacheAdminService: messages to `core.admin` calls and back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_server.core.admin import (
    AllSelector,
    CacheAdmin,
    EmbeddingModelSelector,
    Listed,
    ModelSelector,
    PromptSelector,
    Scope,
    Selector,
)
from semcache_server.core.domain import InvalidRequest
from semcache_server.edge.auth import AdminAccess
from semcache_server.edge.servicer import _abort

T = TypeVar("T")


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def entry_message(listed: Listed) -> pb.Entry:
    entry = listed.entry
    return pb.Entry(
        entry_id=entry.entry_id,
        prompt=entry.prompt,
        text=entry.text,
        model=entry.model,
        system=entry.system,
        namespace=entry.namespace,
        owner=entry.owner,
        embedding_model=entry.embedding_model,
        created_at=_timestamp(entry.created_at),
        expires_at=_timestamp(listed.expires_at),
        hits=entry.hits,
        completion_tokens=entry.completion_tokens,
    )


def selector_of(request: pb.InvalidateRequest) -> Selector:
    which = request.WhichOneof("selector")
    if which == "prompt":
        return PromptSelector(request.prompt.prompt, request.prompt.model)
    if which == "model" and request.model:
        return ModelSelector(request.model)
    if which == "embedding_model" and request.embedding_model:
        return EmbeddingModelSelector(request.embedding_model)
    if which == "all" and request.all:
        return AllSelector()
    raise InvalidRequest(
        "selector", "set one of prompt, model, embedding_model, or all: true (and not empty)"
    )


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
            await _abort(context, error)

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
