"""An Ollama-protocol server on loopback for tests and benchmarks.

No model weights exist where semcache's tests run, so this server speaks enough of the Ollama HTTP
API (chat, generate, embed, tags, version, show) for the real ``ollama`` Python client to talk to
it unchanged. Replies are deterministic so a test can predict every token, and faults (slow tokens,
dropped connections, HTTP errors, truncation) are scripted per instance or per model so the cache's
error paths can be exercised through a real socket.

Run it by hand with
``python -m semcache_server.testing.ollama_protocol --port 11434 [--token-delay 0.02]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = ["DEFAULT_CHAT_MODELS", "DEFAULT_EMBED_MODEL", "Behaviour", "FakeOllama", "split_tokens"]

DEFAULT_CHAT_MODELS: frozenset[str] = frozenset({"llama3.2", "qwen2.5"})
DEFAULT_EMBED_MODEL = "nomic-embed-text"
DEFAULT_EMBED_DIM = 64
FAKE_VERSION = "0.12.6"
NDJSON = "application/x-ndjson"

CHAT = "/api/chat"
GENERATE = "/api/generate"
EMBED = "/api/embed"
EMBEDDINGS = "/api/embeddings"

# A fixed timestamp for model listings, so two listings compare equal.
_MODIFIED_AT = "2025-01-01T00:00:00.000000Z"
# Simulated model load time reported in every response, in nanoseconds.
_LOAD_DURATION_NS = 1_000_000
# Leading whitespace stays with the word that follows it, so joining the tokens gives the text back.
_TOKEN_RE = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True)
class Behaviour:
    """Faults scripted for a fake model; frozen so a running request never sees it half-changed.

    Replace it as a whole (``fake.behaviour = Behaviour(token_delay=0.05)``) rather than editing it.
    """

    token_delay: float = 0.0
    """Seconds slept before every token but the first, like a model decoding."""
    first_token_delay: float = 0.0
    """Seconds slept before the first token (or the embedding), like a model loading."""
    drop_after_tokens: int | None = None
    """After this many tokens the server closes the socket with no final chunk: a crashed server."""
    done_reason: str = "stop"
    """The final chunk's ``done_reason``; ``"length"`` simulates truncation by ``num_predict``."""
    error_status: int | None = None
    """Answer with this HTTP status and ``{"error": error_message}`` before generating anything."""
    error_message: str = "the model failed to generate a response"
    """The text sent with ``error_status`` or ``error_after_tokens``."""
    empty_reply: bool = False
    """Generate no tokens at all: only the final chunk, with empty content."""
    error_after_tokens: int | None = None
    """After this many tokens send an ``{"error": ...}`` line and end the stream cleanly.

    This is how Ollama reports a failure once streaming has begun: the status stays 200. A
    non-streaming request gets HTTP 500 instead.
    """


def split_tokens(text: str) -> list[str]:
    """Split a reply into word tokens that keep their leading spaces, as a model's tokens do.

    ``"".join(split_tokens(t)) == t`` always holds, so a test can predict the streamed text.
    """
    return _TOKEN_RE.findall(text)


def _canonical_model(name: str) -> str:
    """Ollama treats ``llama3.2`` and ``llama3.2:latest`` as one model; so does the fake."""
    last_part = name.rsplit("/", 1)[-1]
    return name if ":" in last_part else f"{name}:latest"


def _now_iso() -> str:
    """Timestamps look like Ollama's RFC 3339 ``created_at``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, message: str) -> web.Response:
    """Ollama's error body: a JSON object with one ``error`` string."""
    return web.json_response({"error": message}, status=status)


def _ndjson_line(obj: dict[str, Any]) -> bytes:
    """One JSON object per line, the framing the ollama client splits on."""
    return (json.dumps(obj) + "\n").encode()


def _last_user_message(messages: object) -> str:
    """The prompt of a chat is the last user turn; earlier turns are context."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _prompt_token_count(body: dict[str, Any], path: str) -> int:
    """A rough prompt size, so ``prompt_eval_count`` grows with the request like Ollama's does."""
    texts: list[str] = []
    if path == CHAT:
        for message in body.get("messages") or []:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                texts.append(message["content"])
    else:
        for key in ("system", "prompt"):
            if isinstance(body.get(key), str):
                texts.append(body[key])
    return sum(len(split_tokens(text)) for text in texts)


def _num_predict(options: object) -> int | None:
    """``options.num_predict`` caps the reply; negative values mean unlimited, as in Ollama."""
    if not isinstance(options, dict):
        return None
    value = options.get("num_predict")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _model_details(name: str) -> dict[str, Any]:
    """The ``details`` block of tags and show; the values are plausible, not meaningful."""
    family = re.split(r"[^a-z]", name.lower(), maxsplit=1)[0] or "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }


def _hash_unit_vector(text: str, dim: int) -> list[float]:
    """A unit vector fixed by the text alone: equal texts embed equally on any run or machine."""
    raw = hashlib.shake_256(text.encode("utf-8")).digest(4 * dim)
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dim}I", raw)]
    return _normalise(values)


def _normalise(values: list[float]) -> list[float]:
    """Scale to length one, as embedding models' outputs are."""
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values] if norm > 0 else values


class FakeOllama:
    """An Ollama-protocol HTTP server in a background thread with its own event loop.

    The thread keeps the server independent of whichever event loop a test runs in, so a test can
    block, cancel or close its client without stalling the server. Attributes meant to be changed by
    tests: ``replies``, ``models``, ``behaviour``, ``model_behaviours`` and ``embedding_overrides``;
    set them before the request they should affect. ``hold()`` and ``release()`` pause replies
    while a test looks.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        chat_models: Iterable[str] = DEFAULT_CHAT_MODELS,
        embed_model: str = DEFAULT_EMBED_MODEL,
        embed_dim: int = DEFAULT_EMBED_DIM,
        behaviour: Behaviour | None = None,
    ) -> None:
        """Configure only; no socket is opened until ``start()``."""
        if embed_dim < 1:
            raise ValueError("embed_dim must be at least 1")
        self._host = host
        self._requested_port = port
        self._default_models = frozenset(chat_models) | {embed_model}
        self._default_behaviour = behaviour if behaviour is not None else Behaviour()
        self.embed_model = embed_model
        self.embed_dim = embed_dim

        self.replies: dict[str, str] = {}
        """Reply text per prompt (last user message or generate prompt), instead of the echo."""
        self.models: set[str] = set(self._default_models)
        """Model names the fake knows; any other name gets Ollama's 404."""
        self.behaviour: Behaviour = self._default_behaviour
        """Faults for chat and generate on every model without its own entry."""
        self.model_behaviours: dict[str, Behaviour] = {}
        """Faults per model name; the only faults embed requests follow, so that scripting a
        failing LLM through ``behaviour`` does not also take the embedder down."""
        self.embedding_overrides: dict[str, list[float]] = {}
        """Vectors per input text, returned as given, for tests that need chosen similarities."""
        self.embed_context_chars: int | None = None
        """Like an embedding model's context, in characters: a longer input is embedded cut to
        it, or refused as Ollama does when the request sets ``truncate`` to false."""

        self._cond = threading.Condition()
        self._calls: list[dict[str, Any]] = []
        self._disconnects = 0
        self._hold_at: int | None = None
        self._held = 0
        self._released: asyncio.Event | None = None
        """Set, in the server's loop, when release() lets paused replies go on."""
        self._stopping = False
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._startup_error: BaseException | None = None

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The bound port, known once ``start()`` returns (port 0 picks a free one)."""
        if self._port is None:
            raise RuntimeError("FakeOllama is not started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL to hand to ``ollama.AsyncClient(host=...)``."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> Self:
        """Bind the socket, then serve from a daemon thread; returns once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("FakeOllama is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._stopping = False
        self._startup_error = None
        ready = threading.Event()
        thread = threading.Thread(
            target=self._serve, args=(sock, ready), name=f"fake-ollama-{self._port}", daemon=True
        )
        thread.start()
        ready.wait()
        if self._startup_error is not None:
            thread.join()
            self._port = None
            raise RuntimeError("FakeOllama failed to start") from self._startup_error
        self._thread = thread
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread; requests still streaming are cut off."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with self._cond:
            self._stopping = True
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None
        self._port = None
        self._released = None  # bound to the loop that ended

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        """Thread body: run the aiohttp app until ``stop()`` stops the loop, then clean up."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # handler_cancellation: a client that goes away cancels its handler, which is how the fake
        # notices disconnects even while it sleeps between tokens.
        runner = web.AppRunner(
            self._make_app(), handler_cancellation=True, shutdown_timeout=0.2, access_log=None
        )
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:  # reported to start() in the calling thread
            self._startup_error = exc
            sock.close()
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/api/version", self._handle_version)
        app.router.add_get("/api/tags", self._handle_tags)
        app.router.add_post("/api/show", self._handle_show)
        app.router.add_post(CHAT, self._handle_chat)
        app.router.add_post(GENERATE, self._handle_generate)
        app.router.add_post(EMBED, self._handle_embed)
        app.router.add_post(EMBEDDINGS, self._handle_embeddings)
        app.router.add_get("/api/ps", self._handle_ps)
        app.router.add_post("/api/pull", self._handle_pull)
        app.router.add_get("/v1/models", self._handle_openai_models)
        app.router.add_post("/v1/embeddings", self._handle_openai_embeddings)
        app.router.add_post("/v1/chat/completions", self._handle_openai_chat)
        return app

    # ------------------------------------------------------------------------------ observability

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A snapshot of recorded chat, generate and embed request bodies, each with its ``path``
        and its ``client`` (the address of the connection it came on: a reused connection keeps it).

        Every request is recorded when it arrives, including those then refused (unknown model,
        scripted error), so a test can count how often the LLM was really asked.
        """
        with self._cond:
            return list(self._calls)

    def call_count(self, path: str | None = CHAT) -> int:
        """How many requests reached ``path``; ``None`` counts every recorded path."""
        with self._cond:
            return sum(1 for call in self._calls if path is None or call["path"] == path)

    @property
    def disconnects(self) -> int:
        """Requests whose client went away before the reply was finished.

        Counts streams a client closed early and non-streaming requests abandoned while the fake
        was still "generating"; connections the fake drops itself (``drop_after_tokens``) and
        requests cut off by ``stop()`` are not counted. A stream is only "unfinished" while the fake
        is still producing it, so give it a ``token_delay`` when a test needs to see the close.
        """
        with self._cond:
            return self._disconnects

    def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool:
        """Block until at least ``count`` disconnects were seen since ``reset()``; False on timeout.

        This blocks the calling thread: from async code use ``wait_for_disconnect_async`` so the
        client's event loop can still finish closing its socket.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._disconnects >= count, timeout)

    async def wait_for_disconnect_async(self, within: float, count: int = 1) -> bool:
        """``wait_for_disconnect(within, count)`` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for_disconnect, within, count)

    def hold(self, after_tokens: int = 0) -> None:
        """Chat and generate replies pause once they have sent ``after_tokens`` tokens (0: before
        the first) until ``release()``, so a test can look while the LLM is still answering,
        without betting on how long a delay lasts. A non-streaming reply pauses before it starts.
        """
        with self._cond:
            self._hold_at = after_tokens

    def release(self) -> None:
        """Let every paused reply, and those to come, go on."""
        with self._cond:
            self._hold_at = None
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake_paused)

    def _wake_paused(self) -> None:
        """In the server's loop: paused replies look again whether they are still held."""
        released, self._released = self._released, None
        if released is not None:
            released.set()

    @property
    def held(self) -> int:
        """Replies paused by ``hold()`` right now."""
        with self._cond:
            return self._held

    def reset(self) -> None:
        """Back to the state after construction, so tests sharing one server cannot leak."""
        self.release()
        with self._cond:
            self._calls.clear()
            self._disconnects = 0
        self.replies.clear()
        self.models = set(self._default_models)
        self.behaviour = self._default_behaviour
        self.model_behaviours.clear()
        self.embedding_overrides.clear()
        self.embed_context_chars = None

    def reply_for(self, prompt: str) -> str:
        """The full reply text the fake gives for a prompt, before ``num_predict`` or faults."""
        override = self.replies.get(prompt)
        return override if override is not None else f"Echo: {prompt}"

    def embedding_for(self, text: str, dimensions: int | None = None) -> list[float]:
        """The vector ``/api/embed`` returns for ``text``, for tests that compare against it."""
        override = self.embedding_overrides.get(text)
        if override is not None:
            return list(override)
        vector = _hash_unit_vector(text, self.embed_dim)
        if dimensions is not None and 0 < dimensions < self.embed_dim:
            vector = _normalise(vector[:dimensions])
        return vector

    def _record(self, path: str, body: dict[str, Any], client: str) -> None:
        with self._cond:
            self._calls.append({**body, "path": path, "client": client})

    async def _pass_hold(self, sent: int) -> None:
        """Wait here while ``hold()`` pauses replies at this many tokens sent."""

        def paused() -> bool:
            with self._cond:
                return self._hold_at is not None and sent >= self._hold_at

        if not paused():
            return
        with self._cond:
            self._held += 1
        try:
            while paused():
                # release() wakes it through the loop, so no release falls between look and wait.
                if self._released is None:
                    self._released = asyncio.Event()
                await self._released.wait()
        finally:
            with self._cond:
                self._held -= 1

    def _note_disconnect(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._disconnects += 1
            self._cond.notify_all()

    def _is_known(self, model: str) -> bool:
        wanted = _canonical_model(model)
        return any(_canonical_model(known) == wanted for known in self.models)

    def _generation_behaviour(self, model: str) -> Behaviour:
        found = self.model_behaviours.get(model)
        return found if found is not None else self.behaviour

    # -------------------------------------------------------------------------------- endpoints

    async def _handle_root(self, request: web.Request) -> web.Response:
        """Ollama's liveness answer; scripts poll it to know the server is up."""
        return web.Response(text="Ollama is running")

    async def _handle_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": FAKE_VERSION})

    async def _handle_tags(self, request: web.Request) -> web.Response:
        models = []
        for name in sorted(self.models):
            canonical = _canonical_model(name)
            models.append(
                {
                    "name": canonical,
                    "model": canonical,
                    "modified_at": _MODIFIED_AT,
                    "size": 2_019_393_189,
                    "digest": hashlib.sha256(canonical.encode()).hexdigest(),
                    "details": _model_details(name),
                }
            )
        return web.json_response({"models": models})

    async def _handle_show(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        # Older clients send "name", current ones "model".
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            return _error(400, "model is required")
        if not self._is_known(model):
            return _error(404, f'model "{model}" not found, try pulling it first')
        details = _model_details(model)
        is_embedder = _canonical_model(model) == _canonical_model(self.embed_model)
        width = self.embed_dim if is_embedder else 3072
        return web.json_response(
            {
                "modelfile": f"FROM {model}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": details["family"],
                    "general.parameter_count": 3_212_749_888,
                    f"{details['family']}.embedding_length": width,
                },
                "capabilities": ["embedding"] if is_embedder else ["completion"],
                "modified_at": _MODIFIED_AT,
            }
        )

    async def _handle_ps(self, request: web.Request) -> web.Response:
        """No model is loaded: nothing generates here."""
        return web.json_response({"models": []})

    async def _handle_pull(self, request: web.Request) -> web.StreamResponse:
        """A pull's progress lines, streamed (or the last one alone with "stream": false); the
        model is known from then on."""
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            return _error(400, "model is required")
        self.models.add(model)
        lines: list[dict[str, Any]] = [
            {"status": "pulling manifest"},
            {
                "status": "pulling 0123456789ab",
                "digest": "sha256:0123",
                "total": 10,
                "completed": 10,
            },
            {"status": "verifying sha256 digest"},
            {"status": "success"},
        ]
        if body.get("stream", True) is False:
            return web.json_response(lines[-1])
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        for line in lines:
            await response.write(_ndjson_line(line))
        await response.write_eof()
        return response

    async def _handle_openai_models(self, request: web.Request) -> web.Response:
        """Ollama's OpenAI-compatible model list."""
        data = [
            {"id": _canonical_model(name), "object": "model", "created": 1735689600,
             "owned_by": "library"}
            for name in sorted(self.models)
        ]  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def _handle_openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        """Ollama's OpenAI-compatible embeddings, over the same vectors as /api/embed."""
        accepted = await self._accept(request, "/v1/embeddings")
        if isinstance(accepted, web.Response):
            return accepted
        body, model = accepted
        raw_inputs = body.get("input", "")
        inputs = [raw_inputs] if isinstance(raw_inputs, str) else raw_inputs
        data = [
            {"object": "embedding", "embedding": self.embedding_for(text), "index": index}
            for index, text in enumerate(inputs)
        ]
        usage = {"prompt_tokens": sum(len(split_tokens(t)) for t in inputs)}
        usage["total_tokens"] = usage["prompt_tokens"]
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def _handle_openai_chat(self, request: web.Request) -> web.StreamResponse:
        """Ollama's OpenAI-compatible chat, unary only: a tool call when tools are offered,
        the echo otherwise (what semcache passes through reaches this)."""
        accepted = await self._accept(request, "/v1/chat/completions")
        if isinstance(accepted, web.Response):
            return accepted
        body, model = accepted
        prompt = _last_user_message(body.get("messages"))
        message: dict[str, Any] = {"role": "assistant", "content": self.reply_for(prompt)}
        finish_reason = "stop"
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            name = tools[0].get("function", {}).get("name", "tool")
            message = {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_0", "index": 0, "type": "function",
                     "function": {"name": name, "arguments": "{}"}}
                ],
            }  # fmt: skip
            finish_reason = "tool_calls"
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_generation(request, CHAT)

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_generation(request, GENERATE)

    async def _read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """Parse the JSON object body, or the 400 Ollama would answer instead."""
        try:
            body = await request.json()
        except ValueError as exc:
            return _error(400, f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        return body

    async def _accept(
        self, request: web.Request, path: str
    ) -> tuple[dict[str, Any], str] | web.Response:
        """Parse, record and check a request for a model; or the error Ollama would answer."""
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        self._record(
            path,
            body,
            str(request.transport.get_extra_info("peername") if request.transport else None),
        )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "model is required")
        if not self._is_known(model):
            return _error(404, f'model "{model}" not found, try pulling it first')
        return body, model

    async def _handle_generation(self, request: web.Request, path: str) -> web.StreamResponse:
        """Chat and generate share everything but the prompt's location and the chunk's shape."""
        accepted = await self._accept(request, path)
        if isinstance(accepted, web.Response):
            return accepted
        body, model = accepted
        behaviour = self._generation_behaviour(model)
        if behaviour.error_status is not None:
            return _error(behaviour.error_status, behaviour.error_message)

        tools = body.get("tools") if path == CHAT else None
        if isinstance(tools, list) and tools:
            return await self._respond_tool_call(request, body, model, tools)

        prompt = _last_user_message(body.get("messages")) if path == CHAT else body.get("prompt")
        prompt = prompt if isinstance(prompt, str) else ""
        tokens = [] if behaviour.empty_reply else split_tokens(self.reply_for(prompt))
        done_reason = behaviour.done_reason
        limit = _num_predict(body.get("options"))
        if limit is not None and len(tokens) > limit:
            tokens = tokens[:limit]
            done_reason = "length"

        reply = _Reply(
            path=path,
            model=model,
            tokens=tokens,
            done_reason=done_reason,
            prompt_eval_count=_prompt_token_count(body, path),
            started_ns=time.perf_counter_ns(),
        )
        # Ollama streams unless the request says "stream": false.
        if body.get("stream", True) is False:
            return await self._respond_whole(request, reply, behaviour)
        return await self._respond_stream(request, reply, behaviour)

    async def _respond_tool_call(
        self, request: web.Request, body: dict[str, Any], model: str, tools: list[Any]
    ) -> web.StreamResponse:
        """A chat offered tools calls the first one, with no arguments, as a model would."""
        first = tools[0] if isinstance(tools[0], dict) else {}
        name = first.get("function", {}).get("name", "tool")
        reply = _Reply(
            CHAT, model, [], "stop", _prompt_token_count(body, CHAT), time.perf_counter_ns()
        )
        final = reply.final(content="", eval_ns=0)
        final["message"]["tool_calls"] = [{"function": {"name": name, "arguments": {}}}]
        if body.get("stream", True) is False:
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        await response.write(_ndjson_line(final))
        await response.write_eof()
        return response

    async def _respond_whole(
        self, request: web.Request, reply: _Reply, behaviour: Behaviour
    ) -> web.StreamResponse:
        """A non-streaming reply takes as long as its stream would have, then arrives at once."""
        try:
            await self._pass_hold(0)
            await asyncio.sleep(
                behaviour.first_token_delay + behaviour.token_delay * max(len(reply.tokens) - 1, 0)
            )
        except asyncio.CancelledError:
            self._note_disconnect()
            raise
        if behaviour.drop_after_tokens is not None:
            _abort(request)
            return web.Response()
        if behaviour.error_after_tokens is not None:
            return _error(500, behaviour.error_message)
        return web.json_response(
            reply.final(content="".join(reply.tokens), eval_ns=_elapsed(reply))
        )

    async def _respond_stream(
        self, request: web.Request, reply: _Reply, behaviour: Behaviour
    ) -> web.StreamResponse:
        """NDJSON chunks, one per token, then the final chunk with counts and durations."""
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        drop_at, error_at = behaviour.drop_after_tokens, behaviour.error_after_tokens
        # A scripted drop wins over a scripted error when both are set.
        fault_at = drop_at if drop_at is not None else error_at
        tokens = reply.tokens if fault_at is None else reply.tokens[:fault_at]
        try:
            if behaviour.first_token_delay > 0:
                await asyncio.sleep(behaviour.first_token_delay)
            first_token_ns = time.perf_counter_ns()
            # Headers go out with the first chunk, as Go's net/http does for Ollama.
            await response.prepare(request)
            for sent, token in enumerate(tokens):
                if sent > 0 and behaviour.token_delay > 0:
                    await asyncio.sleep(behaviour.token_delay)
                await self._pass_hold(sent)
                await response.write(_ndjson_line(reply.chunk(token)))
            if drop_at is not None:
                _abort(request)
                return response
            if error_at is not None:
                await response.write(_ndjson_line({"error": behaviour.error_message}))
            else:
                eval_ns = time.perf_counter_ns() - first_token_ns
                await response.write(_ndjson_line(reply.final(content="", eval_ns=eval_ns)))
            await response.write_eof()
        except asyncio.CancelledError:
            # The client closed the connection while the handler waited (handler_cancellation).
            self._note_disconnect()
            raise
        except ConnectionError:
            # The client closed the connection and a write found out first.
            self._note_disconnect()
        return response

    async def _handle_embed(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_embedding(request, EMBED)

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        """The deprecated single-prompt endpoint, still used by ``client.embeddings``."""
        return await self._handle_embedding(request, EMBEDDINGS)

    async def _handle_embedding(self, request: web.Request, path: str) -> web.StreamResponse:
        """Hash-derived unit vectors: deterministic, cheap, and unrelated to meaning."""
        started_ns = time.perf_counter_ns()
        accepted = await self._accept(request, path)
        if isinstance(accepted, web.Response):
            return accepted
        body, model = accepted
        found = self.model_behaviours.get(model)
        behaviour = found if found is not None else Behaviour()
        if behaviour.error_status is not None:
            return _error(behaviour.error_status, behaviour.error_message)

        if path == EMBEDDINGS:
            raw_inputs: object = body.get("prompt", "")
        else:
            raw_inputs = body.get("input", "")
        inputs = [raw_inputs] if isinstance(raw_inputs, str) else raw_inputs
        if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
            return _error(400, "invalid input type")
        dimensions = body.get("dimensions")
        dims = (
            None if isinstance(dimensions, bool) or not isinstance(dimensions, int) else dimensions
        )

        try:
            if behaviour.first_token_delay > 0:
                await asyncio.sleep(behaviour.first_token_delay)
        except asyncio.CancelledError:
            self._note_disconnect()
            raise
        if behaviour.drop_after_tokens is not None:
            _abort(request)
            return web.Response()

        limit = self.embed_context_chars
        if limit is not None and any(len(text) > limit for text in inputs):
            if body.get("truncate") is False:
                return _error(400, "the input length exceeds the context length")
            inputs = [text[:limit] for text in inputs]
        vectors = [self.embedding_for(text, dims) for text in inputs]
        if path == EMBEDDINGS:
            return web.json_response({"embedding": vectors[0]})
        return web.json_response(
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": time.perf_counter_ns() - started_ns + _LOAD_DURATION_NS,
                "load_duration": _LOAD_DURATION_NS,
                "prompt_eval_count": sum(len(split_tokens(text)) for text in inputs),
            }
        )


@dataclass
class _Reply:
    """What one chat or generate request will answer, and how to shape its chunks."""

    path: str
    model: str
    tokens: list[str]
    done_reason: str
    prompt_eval_count: int
    started_ns: int

    def chunk(self, content: str) -> dict[str, Any]:
        """A non-final chunk; chat nests the text in a message, generate puts it in ``response``."""
        out: dict[str, Any] = {"model": self.model, "created_at": _now_iso()}
        if self.path == CHAT:
            out["message"] = {"role": "assistant", "content": content}
        else:
            out["response"] = content
        out["done"] = False
        return out

    def final(self, content: str, eval_ns: int) -> dict[str, Any]:
        """The last chunk (or the whole non-streaming reply), with Ollama's counters in ns."""
        out = self.chunk(content)
        total_ns = time.perf_counter_ns() - self.started_ns + _LOAD_DURATION_NS
        prompt_eval_ns = max(total_ns - eval_ns - _LOAD_DURATION_NS, 0)
        out.update(
            {
                "done": True,
                "done_reason": self.done_reason,
                "total_duration": total_ns,
                "load_duration": _LOAD_DURATION_NS,
                "prompt_eval_count": self.prompt_eval_count,
                "prompt_eval_duration": prompt_eval_ns,
                "eval_count": len(self.tokens),
                "eval_duration": eval_ns,
            }
        )
        if self.path == GENERATE:
            # Real Ollama returns the conversation's token ids; any ints will do for a client.
            out["context"] = list(range(self.prompt_eval_count + len(self.tokens)))
        return out


def _elapsed(reply: _Reply) -> int:
    return time.perf_counter_ns() - reply.started_ns


def _abort(request: web.Request) -> None:
    """Close the socket mid-reply (after flushing what was written) so the client sees a crash."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve a fake Ollama API for demos and benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument(
        "--first-token-delay", type=float, default=0.0, help="seconds before the first token"
    )
    parser.add_argument("--embed-model", default=DEFAULT_EMBED_MODEL)
    parser.add_argument("--embed-dim", type=int, default=DEFAULT_EMBED_DIM)
    parser.add_argument(
        "--model", action="append", dest="models", help="a chat model to serve (repeatable)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM (benchmarks stop it with the latter)."""
    args = _parse_args(argv)
    fake = FakeOllama(
        args.port,
        host=args.host,
        chat_models=args.models if args.models else DEFAULT_CHAT_MODELS,
        embed_model=args.embed_model,
        embed_dim=args.embed_dim,
        behaviour=Behaviour(token_delay=args.token_delay, first_token_delay=args.first_token_delay),
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Explicit handlers, because a shell starting us in the background may have set SIGINT to
    # ignored, and then Ctrl-C (or a script's SIGINT) would never raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with fake:
        # The line scripts wait for before sending requests.
        models = ", ".join(sorted(fake.models))
        print(f"fake ollama listening on {fake.url} (models: {models})", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
