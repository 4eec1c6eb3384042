"""What both clients share: the request messages built from keywords, the metadata every call
carries and the channel credentials, so the sync and the asyncio client cannot drift apart."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TypedDict, TypeVar

import grpc
from semcache.v1 import semcache_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 120.0
"""Seconds: long enough for an LLM's answer; an admin call that scans a large cache may need a
longer per-call timeout."""

Metadata = Sequence[tuple[str, str]]
Seconds = float | timedelta
"""A duration: seconds, or a timedelta."""
RequestT = TypeVar("RequestT", pb.AskRequest, pb.AskStreamRequest)

_ROLES = {"user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}


class AskOptions(TypedDict, total=False):
    """The keywords of `ask` and `ask_stream` besides prompt and model: what `build_request`
    takes, where each is documented."""

    system: str
    history: Iterable[tuple[str, str]]
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    seed: int | None
    stop: Sequence[str]
    skip_lookup: bool
    skip_store: bool
    threshold: float | None
    semantic_with_history: bool
    max_age: Seconds | None
    ttl: Seconds | None
    similarity_threshold: float | None
    """Deprecated: the old name of threshold; warns."""


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
    threshold: float | None = None,
    semantic_with_history: bool = False,
    max_age: Seconds | None = None,
    ttl: Seconds | None = None,
    similarity_threshold: float | None = None,
) -> RequestT:
    """One request of either RPC, with only the fields that were given set (an unset one uses
    the server's or the model's default).

    history: earlier turns, oldest first, as (role, content) pairs, role "user" or "assistant".
    temperature, top_p, max_tokens, seed, stop: the LLM's sampling options; they are part of the
    cache key, so an answer stored without them is not reused for a request with them.
    skip_lookup: always ask the LLM; skip_store: do not store its answer.
    threshold: the minimum cosine similarity of a semantic hit for this request, in [0, 1]
    (`cache.similarity_threshold`, the CLI's --threshold); 0 means exact matches only, None the
    server's policy. similarity_threshold is its old name, still accepted with a
    DeprecationWarning.
    semantic_with_history: allow semantic hits for a request with history.
    max_age: reuse only an answer stored at most this long ago (seconds or a timedelta).
    ttl: how long the answer this request stores lives; None: the server's --ttl.
    """
    threshold = _threshold(threshold, similarity_threshold, stacklevel=3)
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
    if threshold is not None:
        cache.similarity_threshold = threshold
    if max_age is not None:
        cache.max_age.FromTimedelta(_timedelta(max_age))
    if ttl is not None:
        cache.ttl.FromTimedelta(_timedelta(ttl))
    return request_type(
        prompt=prompt,
        model=model,
        system=system,
        options=options,
        history=[_turn(role, content) for role, content in history],
        cache=cache,
    )


def ask_request(
    request_type: type[RequestT], prompt: str, model: str, options: AskOptions
) -> RequestT:
    """build_request for a client's ask or ask_stream; a deprecated keyword warns at the line
    that called the client (this function, the client's method, its caller)."""
    if options.get("similarity_threshold") is not None:
        options = options.copy()
        options["threshold"] = _threshold(
            options.get("threshold"), options.pop("similarity_threshold"), stacklevel=4
        )
    return build_request(request_type, prompt, model=model, **options)


def _threshold(threshold: float | None, old: float | None, *, stacklevel: int) -> float | None:
    if old is None:
        return threshold
    warnings.warn(
        "similarity_threshold is deprecated: call it threshold (the same value, the CLI's "
        "--threshold)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if threshold is not None and threshold != old:
        raise TypeError(
            f"threshold={threshold} and similarity_threshold={old} disagree: give threshold only"
        )
    return old


def _timedelta(value: Seconds) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def _turn(role: str, content: str) -> pb.Turn:
    if role not in _ROLES:
        raise ValueError(f"a history turn's role is 'user' or 'assistant', not {role!r}")
    return pb.Turn(role=_ROLES[role], content=content)


def invalidate_request(
    *,
    prompt: str | None,
    model: str | None,
    embedding_model: str | None,
    everything: bool,
    tenant: str,
) -> pb.InvalidateRequest:
    """The one selector the keywords name: prompt (with model, only that model's entries for
    it), model, embedding_model, or everything. Any other mix is a ValueError here, since the
    request's selector holds one and would silently keep the last."""
    named = [
        name
        for name, given in (
            ("prompt", prompt is not None),
            ("model", model is not None and prompt is None),
            ("embedding_model", embedding_model is not None),
            ("everything", everything),
        )
        if given
    ]
    if len(named) != 1:
        raise ValueError(
            "say what to remove with one of prompt= (optionally with model=), model=, "
            f"embedding_model= or everything=True; got {', '.join(named) or 'none'}"
        )
    if prompt is not None:
        selector = pb.PromptSelector(prompt=prompt, model=model or "")
        return pb.InvalidateRequest(prompt=selector, tenant=tenant)
    if model is not None:
        return pb.InvalidateRequest(model=model, tenant=tenant)
    if embedding_model is not None:
        return pb.InvalidateRequest(embedding_model=embedding_model, tenant=tenant)
    return pb.InvalidateRequest(all=True, tenant=tenant)


def call_metadata(metadata: Metadata, api_key: str | None) -> tuple[tuple[str, str], ...]:
    """What every call of a client carries: metadata, then the key as a bearer token."""
    return tuple(metadata) + ((("authorization", f"Bearer {api_key}"),) if api_key else ())


def credentials(
    tls: bool,
    tls_ca: bytes | None,
    tls_client_cert: bytes | None,
    tls_client_key: bytes | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when tls is set or any tls_ argument is given; None: plaintext."""
    if not (tls or tls_ca is not None or tls_client_cert is not None or tls_client_key is not None):
        return None
    return grpc.ssl_channel_credentials(tls_ca, tls_client_key, tls_client_cert)
