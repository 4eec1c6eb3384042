"""The Ollama LLM backend: the last resort of the chain, through the real `ollama` AsyncClient."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx
import ollama

from semcache_server.core.domain import (
    FinishReason,
    LLMRejected,
    LLMStreamBroken,
    LLMUnavailable,
    ModelNotFound,
    Query,
    TextDelta,
)
from semcache_server.core.ports import LLMEvent, LLMFinish, RequestSent

log = logging.getLogger(__name__)

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"


def _finish_reason(done_reason: str | None) -> FinishReason:
    if done_reason == "stop":
        return FinishReason.STOP
    if done_reason == "length":
        return FinishReason.LENGTH
    return FinishReason.OTHER


def ollama_options(query: Query) -> dict[str, Any]:
    """Our option names to Ollama's."""
    options = query.options
    mapped: dict[str, Any] = {}
    if options.temperature is not None:
        mapped["temperature"] = options.temperature
    if options.top_p is not None:
        mapped["top_p"] = options.top_p
    if options.max_tokens is not None:
        mapped["num_predict"] = options.max_tokens
    if options.seed is not None:
        mapped["seed"] = options.seed
    if options.stop:
        mapped["stop"] = list(options.stop)
    return mapped


def chat_messages(query: Query) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": query.system}] if query.system else []
    messages.extend({"role": turn.role.value, "content": turn.content} for turn in query.history)
    messages.append({"role": "user", "content": query.prompt})
    return messages


_request_sent: contextvars.ContextVar[RequestSent | None] = contextvars.ContextVar(
    "request_sent", default=None
)
"""The on_sent of the stream whose request the current task is sending."""


async def _trace_request_sent(request: httpx.Request) -> None:
    """httpx request hook: asks httpcore to report when this request's body has been written."""
    on_sent = _request_sent.get()
    if on_sent is None:
        return
    _request_sent.set(None)  # one request per stream: retries and later requests are not it

    earlier = request.extensions.get("trace")

    async def trace(event: str, info: dict[str, Any]) -> None:
        if earlier is not None:
            await earlier(event, info)
        if event.endswith(".send_request_body.complete"):
            on_sent()

    request.extensions["trace"] = trace


class OllamaBackend:
    """Chats with Ollama over HTTP, streaming; the one place that knows Ollama's errors."""

    def __init__(self, host: str | None, *, connect_timeout: float) -> None:
        self.address = host or DEFAULT_OLLAMA_HOST
        # Generation may legitimately take minutes between tokens on a cold model, so only the
        # connection is bounded here; the caller's deadline bounds the rest. Each streaming answer
        # holds a connection for its whole length and Ollama queues requests itself, so the pool
        # must not cap them (httpx's default of 100 made stream 101 wait for stream 1 to end).
        self._client = ollama.AsyncClient(
            host=self.address,
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            event_hooks={"request": [_trace_request_sent]},
        )

    async def stream(
        self, query: Query, on_sent: RequestSent | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        finished = False
        # Read by the request hook, which runs in the task that sends this request.
        _request_sent.set(on_sent)
        try:
            chunks = await self._client.chat(
                model=query.model,
                messages=chat_messages(query),
                options=ollama_options(query),
                stream=True,
            )
            chunks = cast(AsyncGenerator[ollama.ChatResponse, None], chunks)
            # aclosing: a cancelled caller closes the HTTP stream, and Ollama stops generating.
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if finished:
                        continue  # read the body to its end: only then is the connection reused
                    if chunk.message.content:
                        yield TextDelta(chunk.message.content)
                    if chunk.done:
                        finished = True
                        yield LLMFinish(
                            finish_reason=_finish_reason(chunk.done_reason),
                            prompt_tokens=chunk.prompt_eval_count or 0,
                            completion_tokens=chunk.eval_count or 0,
                        )
        except ollama.ResponseError as error:
            raise self._translate(query, error) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as error:
            raise LLMUnavailable(
                f"cannot reach Ollama at {self.address}: {error or type(error).__name__}; "
                "is it running? Set --ollama-host / OLLAMA_HOST"
            ) from None
        except httpx.TransportError as error:
            if finished:
                return  # the answer was complete; only the end of the body was lost
            raise LLMStreamBroken(
                f"the connection to Ollama at {self.address} broke mid-answer: "
                f"{error or type(error).__name__}"
            ) from None
        if not finished:
            raise LLMStreamBroken(f"Ollama at {self.address} ended the answer without finishing it")

    def _translate(self, query: Query, error: ollama.ResponseError) -> Exception:
        message = error.error
        if error.status_code == 404:
            return ModelNotFound(
                f"Ollama at {self.address} does not have model {query.model!r}: {message}"
            )
        if 400 <= error.status_code < 500:
            return LLMRejected(f"Ollama rejected the request: {message}")
        return LLMUnavailable(f"Ollama at {self.address} failed ({error.status_code}): {message}")

    async def aclose(self) -> None:
        await self._client._client.aclose()
