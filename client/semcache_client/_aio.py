"""AsyncSemcacheClient: SemcacheClient's calls, with the same keywords, on grpc.aio.

`timeout` is each call's gRPC deadline, which the server sees and bounds its work by, where
asyncio.timeout would only stop waiting here (hence ASYNC109 off)."""

# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Unpack

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

from semcache_client._requests import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    AskOptions,
    Metadata,
    ask_request,
    call_metadata,
    credentials,
    invalidate_request,
)


class AsyncSemcacheClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        tls_client_cert: bytes | None = None,
        tls_client_key: bytes | None = None,
    ) -> None:
        """As SemcacheClient's. The channel connects at the first call; create the client inside
        the event loop that uses it, and close it with `await client.close()` or `async with`."""
        self._owns_channel = channel is None
        if channel is None:
            secure = credentials(tls, tls_ca, tls_client_cert, tls_client_key)
            channel = (
                grpc.aio.insecure_channel(target)
                if secure is None
                else grpc.aio.secure_channel(target, secure)
            )
        self._channel = channel
        self._stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
        self._admin = pb_grpc.CacheAdminServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._metadata = call_metadata(metadata, api_key)

    def _call_options(self, timeout: float | None, metadata: Metadata) -> dict[str, Any]:
        return {
            "timeout": timeout if timeout is not None else self._timeout,
            "metadata": self._metadata + tuple(metadata),
        }

    async def ask(
        self,
        prompt: str,
        *,
        model: str,
        timeout: float | None = None,
        metadata: Metadata = (),
        **options: Unpack[AskOptions],
    ) -> pb.AskResponse:
        """Ask once; options as SemcacheClient.ask's."""
        request = ask_request(pb.AskRequest, prompt, model, options)
        response: pb.AskResponse = await self._stub.Ask(
            request, **self._call_options(timeout, metadata)
        )
        return response

    def ask_stream(
        self,
        prompt: str,
        *,
        model: str,
        timeout: float | None = None,
        metadata: Metadata = (),
        **options: Unpack[AskOptions],
    ) -> AsyncGenerator[pb.AskStreamResponse, None]:
        """Stream the answer (`async for`): a start message, text deltas, then an end message.

        The request is built here, so a wrong keyword fails at the call; the RPC starts at the
        first message. Leaving the loop early and closing the iterator (`contextlib.aclosing`,
        or cancelling the task that iterates) cancels the RPC, and the server stops the
        generation; an iterator left to the garbage collector cancels it only then.
        """
        request = ask_request(pb.AskStreamRequest, prompt, model, options)
        return self._stream(request, self._call_options(timeout, metadata))

    async def _stream(
        self, request: pb.AskStreamRequest, call_options: dict[str, Any]
    ) -> AsyncGenerator[pb.AskStreamResponse, None]:
        call = self._stub.AskStream(request, **call_options)
        try:
            async for message in call:
                yield message
        finally:
            call.cancel()  # a no-op once the stream has ended

    async def get_stats(
        self, *, tenant: str = "", timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.GetStatsResponse:
        """What the cache holds and what it saved (of one tenant's namespace, with tenant=)."""
        request = pb.GetStatsRequest(tenant=tenant)
        response: pb.GetStatsResponse = await self._admin.GetStats(
            request, **self._call_options(timeout, metadata)
        )
        return response

    async def list_entries(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        tenant: str = "",
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> pb.ListEntriesResponse:
        """One page of entries, without their answers; page_size 0 means the server's 50.
        Pass next_page_token as page_token for the next page (iter_entries does)."""
        request = pb.ListEntriesRequest(page_size=page_size, page_token=page_token, tenant=tenant)
        response: pb.ListEntriesResponse = await self._admin.ListEntries(
            request, **self._call_options(timeout, metadata)
        )
        return response

    async def iter_entries(
        self,
        *,
        page_size: int = 0,
        tenant: str = "",
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> AsyncIterator[pb.Entry]:
        """Every entry in reach, page after page (`async for`; timeout is each page's)."""
        token = ""
        while True:
            page = await self.list_entries(
                page_size=page_size,
                page_token=token,
                tenant=tenant,
                timeout=timeout,
                metadata=metadata,
            )
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def get_entry(
        self, entry_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.GetEntryResponse:
        """One entry, answer included; NOT_FOUND when there is none in reach."""
        request = pb.GetEntryRequest(entry_id=entry_id)
        response: pb.GetEntryResponse = await self._admin.GetEntry(
            request, **self._call_options(timeout, metadata)
        )
        return response

    async def delete_entry(
        self, entry_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.DeleteEntryResponse:
        """Remove one entry; .deleted is False when there was none in reach."""
        request = pb.DeleteEntryRequest(entry_id=entry_id)
        response: pb.DeleteEntryResponse = await self._admin.DeleteEntry(
            request, **self._call_options(timeout, metadata)
        )
        return response

    async def invalidate(
        self,
        *,
        prompt: str | None = None,
        model: str | None = None,
        embedding_model: str | None = None,
        everything: bool = False,
        tenant: str = "",
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> pb.InvalidateResponse:
        """As SemcacheClient.invalidate: exactly one selector, else ValueError before any call."""
        request = invalidate_request(
            prompt=prompt,
            model=model,
            embedding_model=embedding_model,
            everything=everything,
            tenant=tenant,
        )
        response: pb.InvalidateResponse = await self._admin.Invalidate(
            request, **self._call_options(timeout, metadata)
        )
        return response

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncSemcacheClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
