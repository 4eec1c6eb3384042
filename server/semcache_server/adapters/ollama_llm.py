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
    excerpt,
)
from semcache_server.core.outages import ThrottledLog
from semcache_server.core.ports import LLMEvent, LLMFinish, RequestSent

log = logging.getLogger(__name__)

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
LOGGED_CHARS = 500
"""The most of Ollama's error text (or a model name) one log line repeats."""


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
        self._failures = ThrottledLog(log)
        """Each kind of failure logged at most every 10 s: an outage fails every miss."""
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
            self._failures.warning(
                "unreachable",
                "cannot reach Ollama at %s: %s; is it running? Set --ollama-host / OLLAMA_HOST",
                self.address,
                excerpt(str(error) or type(error).__name__, LOGGED_CHARS),
            )
            raise LLMUnavailable("cannot reach Ollama; retry later") from None
        except httpx.TransportError as error:
            if finished:
                return  # the answer was complete; only the end of the body was lost
            self._failures.warning(
                "broken",
                "the connection to Ollama at %s broke mid-answer: %s",
                self.address,
                excerpt(str(error) or type(error).__name__, LOGGED_CHARS),
            )
            raise LLMStreamBroken(
                "the connection to Ollama broke mid-answer; nothing was stored"
            ) from None
        if not finished:
            self._failures.warning(
                "unfinished", "Ollama at %s ended an answer without finishing it", self.address
            )
            raise LLMStreamBroken(
                "Ollama ended the answer without finishing it; nothing was stored"
            )

    def _translate(self, query: Query, error: ollama.ResponseError) -> Exception:
        """Ollama's own words (and its address) go to the log only: the caller is told what
        happened in ours, with no internal address and nothing of unknown length."""
        status = error.status_code
        self._failures.warning(
            f"status {status}",
            "Ollama at %s answered %s for model %r: %s",
            self.address,
            "an error line mid-answer" if status < 0 else f"HTTP {status}",
            excerpt(query.model, LOGGED_CHARS),
            excerpt(str(error.error), LOGGED_CHARS),
        )
        if status == 404:
            return ModelNotFound(
                f"Ollama does not have model {excerpt(query.model)!r}; pull it, or name another"
            )
        if 400 <= status < 500:
            return LLMRejected(
                f"Ollama refused the request (HTTP {status}); check the model and options"
            )
        if status < 0:  # the stream had begun: Ollama reports a failure as a line of its own
            return LLMStreamBroken("Ollama failed mid-answer; nothing was stored")
        return LLMUnavailable(f"Ollama failed (HTTP {status}); retry later")

    async def aclose(self) -> None:
        await self._client._client.aclose()
