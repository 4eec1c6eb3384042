"""Ollama's HTTP API as the HTTP front's `Upstream`: requests the cache does not model, forwarded
as they came (httpx, streaming both ways)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Sequence

import httpx

from semcache_server.adapters.ollama_llm import DEFAULT_OLLAMA_HOST, LOGGED_CHARS
from semcache_server.core.domain import LLMUnavailable, excerpt
from semcache_server.core.outages import ThrottledLog
from semcache_server.edge.http.passthrough import Forwarded

log = logging.getLogger(__name__)


class OllamaPassThrough:
    def __init__(self, host: str | None, *, connect_timeout: float) -> None:
        self.address = host or DEFAULT_OLLAMA_HOST
        self._failures = ThrottledLog(log)
        # A pull streams for minutes, and a cold model takes its time to answer: only the
        # connection is bounded. The pool does not cap streams (see OllamaBackend).
        self._client = httpx.AsyncClient(
            base_url=self.address,
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    async def forward(
        self,
        method: str,
        path_and_query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes],
    ) -> Forwarded:
        request = self._client.build_request(
            method, path_and_query, headers=list(headers), content=body
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as error:
            self._failures.warning(
                "unreachable",
                "cannot reach Ollama at %s to pass a request through: %s",
                self.address,
                excerpt(str(error) or type(error).__name__, LOGGED_CHARS),
            )
            raise LLMUnavailable("cannot reach Ollama; retry later") from None
        return Forwarded(
            response.status_code,
            list(response.headers.multi_items()),
            response.aiter_raw(),
            response.aclose,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
