"""What the HTTP front hands to Ollama as it was: the calls the cache does not model.

`Upstream` is the front's port to Ollama's HTTP API; an adapter implements it
(`adapters/ollama_passthrough.py`) and the composition root hands it in. The front never
speaks to Ollama itself: it forwards the method, path, headers and body, and streams back what
Ollama answers (a pull's progress lines as they come).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that describe one connection, not the message: never forwarded either way."""
NOT_FORWARDED = HOP_BY_HOP | {"authorization"}
"""The caller's key is semcache's, never Ollama's (nor are semcache's own X-Semcache-* headers)."""


@dataclass
class Forwarded:
    """Ollama's answer to a forwarded request, its body still to be read."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    """Closes the response (and the request to Ollama, if it is still answering)."""


class Upstream(Protocol):
    """Ollama's HTTP API, for the requests the front passes through."""

    async def forward(
        self,
        method: str,
        path_and_query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes],
    ) -> Forwarded:
        """Send the request; returns once Ollama's status and headers arrived. Raises
        LLMUnavailable when Ollama cannot be reached."""
        ...

    async def aclose(self) -> None: ...


def request_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of a request to forward: neither hop-by-hop ones nor the caller's key."""
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in NOT_FORWARDED and not name.lower().startswith("x-semcache-")
    ]


def response_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
