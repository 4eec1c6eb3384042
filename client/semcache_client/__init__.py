"""A thin Python client for semcache: the generated stub with keyword arguments and defaults.

    from semcache_client import SemcacheClient

    with SemcacheClient("127.0.0.1:50051") as client:
        answer = client.ask("What is the capital of France?", model="llama3.2")
        print(answer.text, answer.source)

A server with API keys needs `api_key=`; one that speaks TLS needs `tls=True` (the system's CAs)
or `tls_ca=<PEM bytes>`, and for mutual TLS `tls_client_cert=` and `tls_client_key=`.

Responses are the generated messages (`semcache.v1.semcache_pb2`); errors are `grpc.RpcError`
with the server's status code and message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

__all__ = ["SemcacheClient", "build_request", "pb"]

DEFAULT_TARGET = "127.0.0.1:50051"
Metadata = Sequence[tuple[str, str]]
RequestT = TypeVar("RequestT", pb.AskRequest, pb.AskStreamRequest)


def build_request(
    request_type: type[RequestT],
    prompt: str,
    *,
    model: str,
    system: str = "",
    history: Iterable[tuple[str, str]] = (),
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    skip_lookup: bool = False,
    skip_store: bool = False,
    similarity_threshold: float | None = None,
    semantic_with_history: bool = False,
) -> RequestT:
    """One request of either RPC; history is (role, content) pairs, role "user" or "assistant"."""
    options = pb.GenerationOptions(stop=list(stop))
    if temperature is not None:
        options.temperature = temperature
    if top_p is not None:
        options.top_p = top_p
    if max_tokens is not None:
        options.max_tokens = max_tokens
    if seed is not None:
        options.seed = seed
    cache = pb.CacheControl(
        skip_lookup=skip_lookup, skip_store=skip_store, semantic_with_history=semantic_with_history
    )
    if similarity_threshold is not None:
        cache.similarity_threshold = similarity_threshold
    roles = {"user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}
    turns = [pb.Turn(role=roles[role], content=content) for role, content in history]
    return request_type(
        prompt=prompt, model=model, system=system, options=options, history=turns, cache=cache
    )


class SemcacheClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        timeout: float | None = 120.0,
        metadata: Metadata = (),
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        tls_client_cert: bytes | None = None,
        tls_client_key: bytes | None = None,
    ) -> None:
        """Connect to target, or use channel (a test channel, say) as given.

        timeout is the default deadline of every call, in seconds; None waits forever. api_key
        goes with every call as `authorization: Bearer <key>`. TLS is used when tls is set or any
        tls_ argument is given.
        """
        self._owns_channel = channel is None
        if channel is None:
            if tls or tls_ca is not None or tls_client_cert is not None:
                credentials = grpc.ssl_channel_credentials(tls_ca, tls_client_key, tls_client_cert)
                channel = grpc.secure_channel(target, credentials)
            else:
                channel = grpc.insecure_channel(target)
        self._channel = channel
        self._stub = pb_grpc.SemcacheServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._metadata = tuple(metadata) + (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )

    def ask(
        self,
        prompt: str,
        *,
        model: str,
        timeout: float | None = None,
        metadata: Metadata = (),
        **options: object,
    ) -> pb.AskResponse:
        """Ask once; options are build_request's keywords (system, temperature, skip_store, ...)."""
        request = build_request(pb.AskRequest, prompt, model=model, **options)  # type: ignore[arg-type]
        response: pb.AskResponse = self._stub.Ask(
            request,
            timeout=timeout if timeout is not None else self._timeout,
            metadata=self._metadata + tuple(metadata),
        )
        return response

    def ask_stream(
        self,
        prompt: str,
        *,
        model: str,
        timeout: float | None = None,
        metadata: Metadata = (),
        **options: object,
    ) -> Iterator[pb.AskStreamResponse]:
        """Stream the answer: a start message, text deltas, then an end message.

        Stop iterating and call .cancel() on the returned iterator to cancel the generation.
        """
        request = build_request(pb.AskStreamRequest, prompt, model=model, **options)  # type: ignore[arg-type]
        responses: Iterator[pb.AskStreamResponse] = self._stub.AskStream(
            request,
            timeout=timeout if timeout is not None else self._timeout,
            metadata=self._metadata + tuple(metadata),
        )
        return responses

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> SemcacheClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
