"""SemcacheClient: blocking calls, for scripts and threads (AsyncSemcacheClient for asyncio)."""

from __future__ import annotations

from collections.abc import Iterator
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


class SemcacheClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        tls_client_cert: bytes | None = None,
        tls_client_key: bytes | None = None,
    ) -> None:
        """Connect to target, or use channel (a test channel, say) as given; close() closes only
        a channel the client opened.

        timeout is the default deadline of every call, in seconds; None waits forever. api_key
        goes with every call as `authorization: Bearer <key>`. TLS is used when tls is set or any
        tls_ argument is given.
        """
        self._owns_channel = channel is None
        if channel is None:
            secure = credentials(tls, tls_ca, tls_client_cert, tls_client_key)
            channel = (
                grpc.insecure_channel(target)
                if secure is None
                else grpc.secure_channel(target, secure)
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

    def ask(
        self,
        prompt: str,
        *,
        model: str,
        timeout: float | None = None,
        metadata: Metadata = (),
        **options: Unpack[AskOptions],
    ) -> pb.AskResponse:
        """Ask once. options: system, history, temperature, top_p, max_tokens, seed, stop,
        skip_lookup, skip_store, threshold, semantic_with_history, max_age, ttl (see
        build_request)."""
        request = ask_request(pb.AskRequest, prompt, model, options)
        response: pb.AskResponse = self._stub.Ask(request, **self._call_options(timeout, metadata))
        return response

    def ask_stream(
        self,
        prompt: str,
        *,
        model: str,
        timeout: float | None = None,
        metadata: Metadata = (),
        **options: Unpack[AskOptions],
    ) -> Iterator[pb.AskStreamResponse]:
        """Stream the answer: a start message, text deltas, then an end message; options as
        ask's.

        Stop iterating and call .cancel() on the returned iterator to cancel the generation.
        """
        request = ask_request(pb.AskStreamRequest, prompt, model, options)
        responses: Iterator[pb.AskStreamResponse] = self._stub.AskStream(
            request, **self._call_options(timeout, metadata)
        )
        return responses

    # --- CacheAdminService: a tenant's key reaches its own entries; an operator's every
    # tenant's, or the one named by tenant= ------------------------------------------------

    def get_stats(
        self, *, tenant: str = "", timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.GetStatsResponse:
        """What the cache holds and what it saved (of one tenant's namespace, with tenant=)."""
        request = pb.GetStatsRequest(tenant=tenant)
        response: pb.GetStatsResponse = self._admin.GetStats(
            request, **self._call_options(timeout, metadata)
        )
        return response

    def list_entries(
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
        response: pb.ListEntriesResponse = self._admin.ListEntries(
            request, **self._call_options(timeout, metadata)
        )
        return response

    def iter_entries(
        self,
        *,
        page_size: int = 0,
        tenant: str = "",
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Iterator[pb.Entry]:
        """Every entry in reach, page after page (timeout is each page's)."""
        token = ""
        while True:
            page = self.list_entries(
                page_size=page_size,
                page_token=token,
                tenant=tenant,
                timeout=timeout,
                metadata=metadata,
            )
            yield from page.entries
            token = page.next_page_token
            if not token:
                return

    def get_entry(
        self, entry_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.GetEntryResponse:
        """One entry, answer included; NOT_FOUND when there is none in reach."""
        request = pb.GetEntryRequest(entry_id=entry_id)
        response: pb.GetEntryResponse = self._admin.GetEntry(
            request, **self._call_options(timeout, metadata)
        )
        return response

    def delete_entry(
        self, entry_id: str, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.DeleteEntryResponse:
        """Remove one entry; .deleted is False when there was none in reach."""
        request = pb.DeleteEntryRequest(entry_id=entry_id)
        response: pb.DeleteEntryResponse = self._admin.DeleteEntry(
            request, **self._call_options(timeout, metadata)
        )
        return response

    def invalidate(
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
        """Remove every entry stored for prompt (with model: that model's only), or of model, or
        embedded by embedding_model, or everything=True in reach; .removed says how many.
        Exactly one of them, else ValueError. It scans the entries: give a large cache a longer
        timeout."""
        request = invalidate_request(
            prompt=prompt,
            model=model,
            embedding_model=embedding_model,
            everything=everything,
            tenant=tenant,
        )
        response: pb.InvalidateResponse = self._admin.Invalidate(
            request, **self._call_options(timeout, metadata)
        )
        return response

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> SemcacheClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
