"""The HTTP front: Ollama's API and OpenAI's, on aiohttp, over the call pipeline.

Every call opens a record in the pipeline (`edge/calls.py`) and names its caller with the same
API keys as gRPC (`Authorization: Bearer <key>`), before anything else. `/api/chat`,
`/api/generate`, `/v1/chat/completions` and `/v1/completions` ask the cache chain, or pass
through to Ollama what the cache does not model; every other `/api/...` and `/v1/...` call
(tags, show, ps, version, embeddings, pulls and the rest of model management; OpenAI's models
and embeddings) is proxied to Ollama as it is. Errors follow the one table (`edge/errors.py`)
with each API's error body: Ollama's `{"error": "..."}`, OpenAI's `{"error": {"message": ...}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from semcache_server.core.domain import (
    CacheControl,
    Caller,
    Completion,
    InvalidRequest,
    LLMStreamBroken,
    Origin,
    Overloaded,
    Query,
    TextDelta,
    Unauthenticated,
)
from semcache_server.edge import errors
from semcache_server.edge.auth import Authenticator
from semcache_server.edge.calls import CallRecord, Calls, current_caller, request_id
from semcache_server.edge.http import control, ollama_api, openai_api
from semcache_server.edge.http.ollama_api import CHAT, GENERATE, PassThrough, Replies
from semcache_server.edge.http.passthrough import Upstream, request_headers, response_headers

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""As gRPC's: a prompt, its system prompt and history fit many times."""
NDJSON = "application/x-ndjson"
OPENAI_CHAT = "/v1/chat/completions"
OPENAI_COMPLETIONS = "/v1/completions"
CACHED_PATHS = (CHAT, GENERATE, OPENAI_CHAT, OPENAI_COMPLETIONS)
PROXIED = "proxy"
"""The record's name (the metrics' rpc label) of every proxied call: paths name models and
blobs, which would make a label of unbounded values."""
_RECORD = web.RequestKey("record", CallRecord)
_FAILURE = web.RequestKey("failure", errors.Refusal)
"""Where a handler leaves the refusal it wrote into a stream already under way."""


def _compact(value: Any) -> str:
    """JSON as Ollama's Go server writes it: no spaces."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _line(value: Mapping[str, Any]) -> bytes:
    return (_compact(value) + "\n").encode()


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=_compact)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest("body", f"is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return body


def _is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_response(path: str, status: errors.Status, message: str) -> web.Response:
    """An error as the API of path writes it."""
    body = openai_api.error_body(status.http, message) if _is_openai(path) else {"error": message}
    headers = {"WWW-Authenticate": "Bearer"} if status is errors.UNAUTHENTICATED else None
    return _json(body, status.http, headers)


class HttpFront:
    """An aiohttp application serving both APIs, not yet listening."""

    def __init__(
        self,
        calls: Calls,
        authenticator: Authenticator,
        upstream: Upstream,
        *,
        max_calls: int,
    ) -> None:
        """authenticator: of the cached calls and the proxied ones alike (a tenant's key).
        max_calls: calls in progress at once on this front; past it a call gets 429."""
        self._calls = calls
        self._authenticator = calls.naming(authenticator)
        self._upstream = upstream
        self._max_calls = max_calls
        self._in_progress = 0
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[self._pipeline])
        router = self.app.router
        router.add_get("/", self._root)  # HEAD too
        router.add_post(CHAT, self._ollama(CHAT))
        router.add_post(GENERATE, self._ollama(GENERATE))
        router.add_post(OPENAI_CHAT, self._openai(OPENAI_CHAT))
        router.add_post(OPENAI_COMPLETIONS, self._openai(OPENAI_COMPLETIONS))
        router.add_route("*", "/api/{tail:.*}", self._proxy)
        router.add_route("*", "/v1/{tail:.*}", self._proxy)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        share_port: bool = False,
        grace: float = 5.0,
    ) -> None:
        """Raises OSError when the address cannot be bound."""
        # handler_cancellation: a caller that goes away cancels its handler, which closes the
        # chain's stream and so the request to Ollama.
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=grace
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_port=share_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stops listening, gives calls in flight the grace given to start(), then closes."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- the pipeline, for every call -------------------------------------------------------

    @web.middleware
    async def _pipeline(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.match_info.route.resource is None or request.path == "/":
            return await handler(request)  # "/" and paths of neither API: no call to record
        record = self._calls.begin(
            request.path if request.path in CACHED_PATHS else PROXIED,
            request_id(request.headers.get(control.REQUEST_ID)),
        )
        request[_RECORD] = record
        status, message = errors.OK, ""
        response: web.StreamResponse
        self._in_progress += 1
        try:
            if self._in_progress > self._max_calls:
                raise Overloaded(
                    "the server is overloaded: more calls in progress than --max-calls; retry later"
                )
            self._authenticator.caller(
                [("authorization", request.headers.get("Authorization", ""))]
            )
            response = await handler(request)
            failure = request.get(_FAILURE)
            if isinstance(failure, errors.Refusal):
                status, message = failure.status, failure.message
        except web.HTTPException as error:  # 405, 413: aiohttp's own refusals
            status = errors.Status(error.reason.upper().replace(" ", "_"), error.status)
            message = error.reason
            response = error_response(request.path, status, message)
        except asyncio.CancelledError:
            self._calls.end(record, "CANCELLED", "the call was cancelled")
            raise
        except Exception as error:
            refusal = errors.refusal(error)
            status, message = refusal.status, refusal.message
            response = error_response(request.path, status, message)
        finally:
            self._in_progress -= 1
        if not response.prepared:
            response.headers[control.REQUEST_ID] = record.request_id
        self._calls.end(record, status.name, message)
        return response

    async def _root(self, request: web.Request) -> web.Response:
        """Ollama's liveness answer, which its clients and scripts poll."""
        return web.Response(text="Ollama is running")

    # --- Ollama's API -----------------------------------------------------------------------

    def _ollama(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        parse = ollama_api.chat_query if path == CHAT else ollama_api.generate_query

        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            body = _json_object(raw)
            planned = parse(body, _caller(), self._calls.limits)
            if isinstance(planned, PassThrough):
                return await self._pass(request, raw, planned.reason)
            cache = control.cache_control(request.headers)
            replies = Replies(path, planned.model)
            if not ollama_api.streams(body):
                answer = await self._calls.ask(planned, cache)
                headers = control.provenance(answer.origin, answer.completion.entry_id)
                return _json(replies.whole(answer), headers=headers)

            def write(event: TextDelta | Completion, origin: Origin) -> bytes:
                if isinstance(event, TextDelta):
                    return _line(replies.chunk(event.text))
                return _line(replies.final(origin, event))

            return await self._stream(
                request, planned, cache, NDJSON, write, lambda message: _line({"error": message})
            )

        return handle

    # --- OpenAI's API -----------------------------------------------------------------------

    def _openai(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        chat = path == OPENAI_CHAT

        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            body = _json_object(raw)
            parse = openai_api.chat_query if chat else openai_api.completion_query
            planned = parse(body, _caller(), self._calls.limits)
            if isinstance(planned, PassThrough):
                return await self._pass(request, raw, planned.reason)
            cache = control.cache_control(request.headers)
            replies = openai_api.Replies(chat, planned.model, openai_api.include_usage(body))
            if not openai_api.streams(body):
                answer = await self._calls.ask(planned, cache)
                headers = control.provenance(answer.origin, answer.completion.entry_id)
                return _json(replies.whole(answer), headers=headers)

            def write(event: TextDelta | Completion, origin: Origin) -> bytes:
                if isinstance(event, TextDelta):
                    return openai_api.event(replies.chunk(event.text))
                return b"".join(openai_api.event(item) for item in replies.final(origin, event))

            return await self._stream(
                request,
                planned,
                cache,
                openai_api.EVENT_STREAM,
                write,
                lambda message: openai_api.event(openai_api.error_body(500, message)),
            )

        return handle

    # --- shared -----------------------------------------------------------------------------

    async def _stream(
        self,
        request: web.Request,
        query: Query,
        cache: CacheControl,
        content_type: str,
        write: Callable[[TextDelta | Completion, Origin], bytes],
        failed: Callable[[str], bytes],
    ) -> web.StreamResponse:
        """The chain's events as a stream. Headers leave with the first text (as Ollama's do):
        what fails before it (Ollama down, an unknown model, overload) is an error response
        with its status; what fails after is a line in the stream, as Ollama writes it."""
        async with contextlib.aclosing(self._calls.ask_stream(query, cache)) as events:
            origin = await anext(events)
            assert isinstance(origin, Origin)
            first = await anext(events)
            assert not isinstance(first, Origin)
            response = web.StreamResponse(
                headers={
                    "Content-Type": content_type,
                    control.REQUEST_ID: request[_RECORD].request_id,
                    **control.provenance(origin),
                }
            )
            await response.prepare(request)
            await response.write(write(first, origin))
            try:
                async for event in events:
                    assert not isinstance(event, Origin)
                    await response.write(write(event, origin))
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as error:
                refusal = errors.refusal(error)
                request[_FAILURE] = refusal
                await response.write(failed(refusal.message))
            await response.write_eof()
            return response

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        body: bytes | AsyncIterable[bytes] = (
            request.content.iter_chunked(64 * 1024) if request.body_exists else b""
        )
        return await self._pass(request, body, "proxied")

    async def _pass(
        self, request: web.Request, body: bytes | AsyncIterable[bytes], reason: str
    ) -> web.StreamResponse:
        """Ollama's answer to the request as it came, streamed back as it comes, uncached."""
        record: CallRecord = request[_RECORD]
        record.passed_through(reason)
        forwarded = await self._upstream.forward(
            request.method, request.path_qs, request_headers(list(request.headers.items())), body
        )
        try:
            headers = CIMultiDict(response_headers(forwarded.headers))
            headers.update(control.passthrough(reason))
            headers[control.REQUEST_ID] = record.request_id
            response = web.StreamResponse(status=forwarded.status, headers=headers)
            await response.prepare(request)
            try:
                async for chunk in forwarded.body:
                    await response.write(chunk)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as error:  # Ollama broke off: cut the caller's response too
                log.warning("Ollama broke off a response passed through: %s", error)
                if request.transport is not None:
                    request.transport.close()
                request[_FAILURE] = errors.refusal(LLMStreamBroken("Ollama broke off the response"))
                return response
            await response.write_eof()
            return response
        finally:
            await forwarded.close()


def _caller() -> Caller:
    caller = current_caller()
    if caller is None:  # the pipeline authenticates every call before its handler
        raise Unauthenticated("the call was not authenticated")
    return caller
