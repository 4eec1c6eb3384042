"""The Ollama API on --http-port, called by the real `ollama` Python client (sync and async) and
by httpx for what that client hides (headers, the final NDJSON object), in front of the
Ollama-protocol server: cached answers, what passes through uncached, what is proxied, tenants
by key, and errors with Ollama's body and the right status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import ollama as ollama_client
import pytest
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.ports import Verifier
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess, free_port

from tests.conftest import Running, until
from tests.http_fronts import base_url, http_semcache, serve_http

__all__ = ["http_semcache"]  # the fixture, used by name

MODEL = "llama3.2"
QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital of France?"
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def chat_calls(fake: FakeOllama) -> int:
    return fake.call_count("/api/chat")


async def post(url: str, path: str, body: object, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.post(path, json=body, headers=headers)


async def ndjson(url: str, path: str, body: object) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
        return response.headers, lines


@pytest.mark.asyncio
async def test_a_miss_is_stored_and_asked_again_is_an_exact_hit(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    client = ollama_client.AsyncClient(host=base_url(http_semcache))
    ollama.replies[QUESTION] = "Paris."

    first = await client.chat(MODEL, user(QUESTION))
    ollama.replies[QUESTION] = "an answer the cache must not need"
    second = await client.chat(MODEL, user(QUESTION))

    assert first.message.content == "Paris." and first.done and first.done_reason == "stop"
    assert first.model == MODEL and first.created_at
    assert second.message.content == "Paris." and second.done_reason == "stop"
    assert chat_calls(ollama) == 1
    response = await post(base_url(http_semcache), "/api/chat", {
        "model": MODEL, "messages": user(QUESTION), "stream": False,
    })  # fmt: skip
    assert response.headers["X-Semcache-Source"] == "exact"
    assert response.headers["X-Semcache-Similarity"] == "1"
    assert len(response.headers["X-Semcache-Entry-Id"]) == 32
    assert response.json()["semcache"]["source"] == "exact"


@pytest.mark.asyncio
async def test_a_paraphrase_is_a_semantic_hit_that_says_so(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    ollama.replies[QUESTION] = "Paris."
    url = base_url(http_semcache)
    first = await post(url, "/api/chat", {"model": MODEL, "messages": user(QUESTION)})
    ollama.replies[PARAPHRASE] = "an answer the cache must not need"
    second = await post(url, "/api/chat", {"model": MODEL, "messages": user(PARAPHRASE)})

    assert first.headers["X-Semcache-Source"] == "llm"
    assert second.headers["X-Semcache-Source"] == "semantic"
    assert float(second.headers["X-Semcache-Similarity"]) > 0.9
    lines = [json.loads(line) for line in second.text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Paris."
    assert lines[-1]["done"] is True and lines[-1]["semcache"]["source"] == "semantic"


@pytest.mark.asyncio
async def test_the_sync_client_streams_a_miss_then_the_hit_in_chunks(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    client = ollama_client.Client(host=base_url(http_semcache))

    def streamed() -> list[ollama_client.ChatResponse]:
        return list(client.chat(MODEL, user("Name three uses of Redis."), stream=True))

    miss = await asyncio.to_thread(streamed)
    hit = await asyncio.to_thread(streamed)

    for parts in (miss, hit):
        assert "".join(part.message.content or "" for part in parts) == (
            "Echo: Name three uses of Redis."
        )
        assert [part.done for part in parts][-1] is True
        assert parts[-1].done_reason == "stop"
    assert len(miss) > 2
    assert chat_calls(ollama) == 1


@pytest.mark.asyncio
async def test_generate_streams_and_not_through_the_same_cache(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    client = ollama_client.AsyncClient(host=base_url(http_semcache))
    whole = await client.generate(MODEL, "Why is the sky blue?", system="Be brief.")
    parts = [part async for part in await client.generate(
        MODEL, "Why is the sky blue?", system="Be brief.", stream=True
    )]  # fmt: skip
    headers, lines = await ndjson(base_url(http_semcache), "/api/generate", {
        "model": MODEL, "prompt": "Why is the sky blue?", "system": "Be brief.",
    })  # fmt: skip

    assert whole.response == "Echo: Why is the sky blue?" and whole.done
    assert "".join(part.response or "" for part in parts) == whole.response
    assert headers["X-Semcache-Source"] == "exact"
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["semcache"]["source"] == "exact"
    assert ollama.call_count(None) == 1  # embeddings are local: one LLM call in all


@pytest.mark.asyncio
async def test_system_history_and_options_reach_ollama_and_key_the_answer(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    client = ollama_client.AsyncClient(host=base_url(http_semcache))
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": QUESTION},
    ]
    options = {"temperature": 0, "top_p": 0.5, "num_predict": 64, "seed": 7, "stop": ["\n\n"]}
    await client.chat(MODEL, messages, options=options)
    await client.chat(MODEL, messages, options=options)
    other_system = [{"role": "system", "content": "Answer in German."}, *messages[1:]]
    await client.chat(MODEL, other_system, options=options)

    sent = ollama.calls
    assert len(sent) == 2  # the second was a hit; another system prompt is another answer
    assert sent[0]["messages"] == messages
    assert sent[0]["options"] == options
    assert sent[1]["messages"][0]["content"] == "Answer in German."


@pytest.mark.asyncio
async def test_a_tool_call_passes_through_uncached_and_says_so(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    client = ollama_client.AsyncClient(host=base_url(http_semcache))
    first = await client.chat(MODEL, user("Weather in Paris?"), tools=[get_weather])
    second = await client.chat(MODEL, user("Weather in Paris?"), tools=[get_weather])
    raw = await post(base_url(http_semcache), "/api/chat", {
        "model": MODEL, "messages": user("Weather in Paris?"), "stream": False,
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
    })  # fmt: skip

    for response in (first, second):
        assert response.message.tool_calls is not None
        assert response.message.tool_calls[0].function.name == "get_weather"
    assert raw.headers["X-Semcache-Source"] == "passthrough"
    assert raw.headers["X-Semcache-Passthrough"] == "tools"
    assert chat_calls(ollama) == 3  # never cached
    assert all("tools" in call for call in ollama.calls)


@pytest.mark.asyncio
async def test_model_calls_are_proxied_to_ollama_as_they_are(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    client = ollama_client.AsyncClient(host=base_url(http_semcache))
    listed = await client.list()
    shown = await client.show(MODEL)
    running = await client.ps()
    pulled = [progress.status async for progress in await client.pull("mistral", stream=True)]
    embedded = await client.embed("nomic-embed-text", ["a", "b"])
    async with httpx.AsyncClient(base_url=base_url(http_semcache)) as http:
        version = (await http.get("/api/version")).json()
        root = await http.get("/")

    assert {model.model for model in listed.models} >= {"llama3.2:latest", "qwen2.5:latest"}
    assert shown.capabilities == ["completion"]
    assert running.models == []
    assert pulled[0] == "pulling manifest" and pulled[-1] == "success"
    assert "mistral" in ollama.models
    assert len(embedded.embeddings) == 2
    assert version == {"version": "0.12.6"}
    assert root.text == "Ollama is running"


@pytest.mark.asyncio
async def test_cache_control_headers_skip_the_lookup_and_the_store(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    url = base_url(http_semcache)
    body = {"model": MODEL, "messages": user(QUESTION), "stream": False}
    not_stored = await post(url, "/api/chat", body, **{"Cache-Control": "no-store"})
    stored = await post(url, "/api/chat", body)
    refreshed = await post(url, "/api/chat", body, **{"Cache-Control": "no-cache"})
    skipped = await post(url, "/api/chat", body, **{"X-Semcache-Skip-Lookup": "true"})
    hit = await post(url, "/api/chat", body, **{"X-Semcache-Max-Age": "3600"})
    exact_only = await post(url, "/api/chat", {**body, "messages": user(PARAPHRASE)},
                            **{"X-Semcache-Threshold": "0"})  # fmt: skip
    bad = await post(url, "/api/chat", body, **{"X-Semcache-Threshold": "most"})

    assert not_stored.json()["semcache"] == {"source": "llm", "stored": False}
    assert stored.headers["X-Semcache-Source"] == "llm" and stored.json()["semcache"]["stored"]
    assert refreshed.headers["X-Semcache-Source"] == "llm"
    assert skipped.headers["X-Semcache-Source"] == "llm"
    assert hit.headers["X-Semcache-Source"] == "exact"
    assert exact_only.headers["X-Semcache-Source"] == "llm"
    assert bad.status_code == 400 and "X-Semcache-Threshold" in bad.json()["error"]


def keys_file(directory: Path) -> Path:
    path = directory / "api-keys"
    path.write_text(f"alice:{ALICE_KEY}\nbob:{BOB_KEY}\n")
    return path


@pytest.mark.asyncio
async def test_tenants_by_key_never_share_an_answer_and_a_stranger_gets_401(
    tmp_path: Path,
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> None:
    running = await serve_http(
        redis_process, ollama, embedder, verifier, api_keys_file=keys_file(tmp_path)
    )
    try:
        url = base_url(running)
        alice = ollama_client.AsyncClient(url, headers={"Authorization": f"Bearer {ALICE_KEY}"})
        bob = ollama_client.AsyncClient(url, headers={"Authorization": f"Bearer {BOB_KEY}"})
        ollama.replies[QUESTION] = "alice's answer"
        await alice.chat(MODEL, user(QUESTION))
        ollama.replies[QUESTION] = "bob's answer"
        bobs = await bob.chat(MODEL, user(QUESTION))
        alices = await alice.chat(MODEL, user(QUESTION))
        with pytest.raises(ollama_client.ResponseError) as stranger:
            await ollama_client.AsyncClient(url).chat(MODEL, user(QUESTION))
        with pytest.raises(ollama_client.ResponseError) as proxied:
            await ollama_client.AsyncClient(url).list()
        raw = await post(url, "/api/chat", {"model": MODEL, "messages": user(QUESTION)})
    finally:
        await running.stop()

    assert bobs.message.content == "bob's answer"
    assert alices.message.content == "alice's answer"
    assert chat_calls(ollama) == 2
    assert stranger.value.status_code == 401 and "API key" in stranger.value.error
    assert proxied.value.status_code == 401
    assert raw.status_code == 401 and raw.headers["WWW-Authenticate"] == "Bearer"
    assert set(raw.json()) == {"error"}


@pytest.mark.asyncio
async def test_bad_json_and_bad_fields_are_400_with_ollamas_error_body(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    url = base_url(http_semcache)
    async with httpx.AsyncClient(base_url=url) as client:
        not_json = await client.post("/api/chat", content=b"{not json")
        not_object = await client.post("/api/generate", json=["a"])
        no_model = await client.post("/api/chat", json={"messages": user(QUESTION)})
        bad_option = await client.post("/api/chat", json={
            "model": MODEL, "messages": user(QUESTION), "options": {"temperature": "hot"},
        })  # fmt: skip
        bad_stream = await client.post("/api/generate", json={
            "model": MODEL, "prompt": QUESTION, "stream": "yes",
        })  # fmt: skip

    for response in (not_json, not_object, no_model, bad_option, bad_stream):
        assert response.status_code == 400
        assert set(response.json()) == {"error"} and response.json()["error"]
    assert "model" in no_model.json()["error"]
    assert "options.temperature" in bad_option.json()["error"]
    assert ollama.call_count(None) == 0


@pytest.mark.asyncio
async def test_an_unknown_model_is_404(http_semcache: Running, ollama: FakeOllama) -> None:
    client = ollama_client.AsyncClient(host=base_url(http_semcache))
    with pytest.raises(ollama_client.ResponseError) as raised:
        await client.chat("no-such-model", user(QUESTION))
    assert raised.value.status_code == 404
    assert "no-such-model" in raised.value.error


@pytest.mark.asyncio
async def test_ollama_down_is_503_for_cached_and_proxied_calls(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> None:
    nowhere = FakeOllama()
    object.__setattr__(nowhere, "_port", free_port())  # an address nothing listens on
    running = await serve_http(redis_process, nowhere, embedder, verifier)
    try:
        client = ollama_client.AsyncClient(host=base_url(running))
        with pytest.raises(ollama_client.ResponseError) as asked:
            await client.chat(MODEL, user(QUESTION))
        with pytest.raises(ollama_client.ResponseError) as listed:
            await client.list()
        streamed = await post(base_url(running), "/api/chat", {
            "model": MODEL, "messages": user(QUESTION),
        })  # fmt: skip
    finally:
        await running.stop()

    assert asked.value.status_code == 503
    assert asked.value.error == "cannot reach Ollama; retry later"
    assert listed.value.status_code == 503
    assert streamed.status_code == 503 and streamed.json() == {
        "error": "cannot reach Ollama; retry later"
    }


@pytest.mark.asyncio
async def test_overload_is_429_at_once(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> None:
    running = await serve_http(
        redis_process, ollama, embedder, verifier, max_llm_calls=1, max_llm_queue=0
    )
    try:
        client = ollama_client.AsyncClient(host=base_url(running))
        ollama.hold()
        first = asyncio.create_task(client.chat(MODEL, user("a slow question")))

        async def held() -> int:
            return ollama.held

        assert await until(held, lambda paused: paused == 1) == 1
        with pytest.raises(ollama_client.ResponseError) as shed:
            await client.chat(MODEL, user("another question"))
        ollama.release()
        answered = await first
    finally:
        ollama.release()
        await running.stop()

    assert shed.value.status_code == 429
    assert "--max-llm-calls" in shed.value.error
    assert answered.message.content == "Echo: a slow question"
