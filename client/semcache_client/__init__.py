"""A thin Python client for semcache: the generated stubs with keyword arguments and defaults.

    from semcache_client import SemcacheClient

    with SemcacheClient("127.0.0.1:50051") as client:
        answer = client.ask("What is the capital of France?", model="llama3.2")
        print(answer.text, answer.source)
        print(client.get_stats().hit_ratio)

`AsyncSemcacheClient` has the same calls and keywords for asyncio (`async with`, `await
client.ask(...)`, `async for message in client.ask_stream(...)`). Both cover SemcacheService
(`ask`, `ask_stream`, with every per-request control as a keyword: see `build_request`) and
CacheAdminService (`get_stats`, `list_entries` and `iter_entries`, `get_entry`, `delete_entry`,
`invalidate`).

A server with API keys needs `api_key=`; one that speaks TLS needs `tls=True` (the system's CAs)
or `tls_ca=<PEM bytes>`, and for mutual TLS `tls_client_cert=` and `tls_client_key=`.

Responses are the generated messages (`semcache.v1.semcache_pb2`, also exported as `pb`); errors
are `grpc.RpcError` (`grpc.aio.AioRpcError` from the async client) with the server's status code
and message.
"""

from __future__ import annotations

from semcache.v1 import semcache_pb2 as pb

from semcache_client._aio import AsyncSemcacheClient
from semcache_client._requests import AskOptions, build_request
from semcache_client._sync import SemcacheClient

__all__ = ["AskOptions", "AsyncSemcacheClient", "SemcacheClient", "build_request", "pb"]
