"""Cache control in request headers, and where an answer came from in response headers.

Request: `X-Semcache-Skip-Lookup`, `X-Semcache-Skip-Store`, `X-Semcache-Semantic-With-History`
(true/false, 1/0, yes/no), `X-Semcache-Threshold` (the request's similarity threshold),
`X-Semcache-Ttl` and `X-Semcache-Max-Age` (seconds); and the standard `Cache-Control`:
`no-cache` asks the LLM afresh (and stores its answer), `no-store` stores nothing, `max-age=N`
accepts only answers stored at most N seconds ago. The core checks the ranges.

Response: `X-Semcache-Source` (exact, semantic, llm or passthrough), `X-Semcache-Similarity`
(of a hit), `X-Semcache-Entry-Id` (of a hit, or of a stored answer when it is known before the
body), `X-Semcache-Passthrough` (why a call went to Ollama uncached).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from semcache_server.core.domain import CacheControl, InvalidRequest, Origin, Source, excerpt

SOURCE = "X-Semcache-Source"
SIMILARITY = "X-Semcache-Similarity"
ENTRY_ID = "X-Semcache-Entry-Id"
PASSTHROUGH = "X-Semcache-Passthrough"
REQUEST_ID = "X-Request-Id"

SKIP_LOOKUP = "X-Semcache-Skip-Lookup"
SKIP_STORE = "X-Semcache-Skip-Store"
SEMANTIC_WITH_HISTORY = "X-Semcache-Semantic-With-History"
THRESHOLD = "X-Semcache-Threshold"
TTL = "X-Semcache-Ttl"
MAX_AGE = "X-Semcache-Max-Age"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name)
    if value is None:
        return False
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InvalidRequest(name, f"must be true or false, got {excerpt(value)!r}")


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        raise InvalidRequest(name, f"must be a number, got {excerpt(value)!r}") from None
    if not math.isfinite(number):
        raise InvalidRequest(name, f"must be finite, got {excerpt(value)!r}")
    return number


def _cache_control(headers: Mapping[str, str]) -> tuple[bool, bool, float | None]:
    """(no-cache, no-store, max-age) of the request's Cache-Control."""
    no_cache = no_store = False
    max_age: float | None = None
    for directive in headers.get("Cache-Control", "").split(","):
        name, _, argument = directive.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            text = argument.strip().strip('"')
            if not text.isdigit():
                raise InvalidRequest(
                    "Cache-Control", f"max-age must be whole seconds, got {excerpt(text)!r}"
                )
            max_age = float(text)
    return no_cache, no_store, max_age


def cache_control(headers: Mapping[str, str]) -> CacheControl:
    """The request's cache control, from its headers."""
    no_cache, no_store, standard_max_age = _cache_control(headers)
    max_age = _number(headers, MAX_AGE)
    return CacheControl(
        skip_lookup=no_cache or _flag(headers, SKIP_LOOKUP),
        skip_store=no_store or _flag(headers, SKIP_STORE),
        similarity_threshold=_number(headers, THRESHOLD),
        semantic_with_history=_flag(headers, SEMANTIC_WITH_HISTORY),
        max_age_seconds=max_age if max_age is not None else standard_max_age,
        ttl_seconds=_number(headers, TTL),
    )


def provenance(origin: Origin, stored_entry_id: str = "") -> dict[str, str]:
    """The response headers that say where the answer came from."""
    headers = {SOURCE: origin.source.value}
    if origin.source in (Source.EXACT, Source.SEMANTIC):
        headers[SIMILARITY] = f"{origin.similarity:.6g}"
    entry_id = origin.entry_id or stored_entry_id
    if entry_id:
        headers[ENTRY_ID] = entry_id
    return headers


def passthrough(reason: str) -> dict[str, str]:
    return {SOURCE: "passthrough", PASSTHROUGH: reason}
