"""OpenAI's API on --http-port, called by the real `openai` Python client (sync and async) with
only its base URL changed, in front of the Ollama-protocol server: cached chat completions and
completions, streamed as server-sent events and not, models and embeddings proxied, a tool call
passed through uncached, and errors as OpenAI's client raises them."""

from __future__ import annotations

import asyncio

import openai
import pytest
from semcache_server.testing.ollama_protocol import FakeOllama

from tests.conftest import Running
from tests.http_fronts import base_url, http_semcache

__all__ = ["http_semcache"]  # the fixture, used by name

MODEL = "llama3.2"
QUESTION = "What is the capital of France?"


def client(running: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url(running)}/v1", api_key="ollama")


@pytest.mark.asyncio
async def test_a_chat_completion_is_cached_and_its_source_is_a_header(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    ollama.replies[QUESTION] = "Paris."
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": QUESTION},
    ]
    chat = client(http_semcache).chat.completions
    first = await chat.with_raw_response.create(model=MODEL, messages=messages, temperature=0)
    ollama.replies[QUESTION] = "an answer the cache must not need"
    second = await chat.with_raw_response.create(model=MODEL, messages=messages, temperature=0)

    for raw in (first, second):
        completion = raw.parse()
        assert completion.choices[0].message.content == "Paris."
        assert completion.choices[0].finish_reason == "stop"
        assert completion.object == "chat.completion" and completion.model == MODEL
    assert first.headers["x-semcache-source"] == "llm"
    assert second.headers["x-semcache-source"] == "exact"
    usage = first.parse().usage
    assert usage is not None and usage.completion_tokens == 1
    assert ollama.calls[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert ollama.calls[0]["options"] == {"temperature": 0}
    assert ollama.call_count("/api/chat") == 1


@pytest.mark.asyncio
async def test_the_sync_client_streams_server_sent_events(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    sync = openai.OpenAI(base_url=f"{base_url(http_semcache)}/v1", api_key="ollama")

    def streamed() -> tuple[str, list[str | None]]:
        chunks = list(
            sync.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Name three uses of Redis."}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices]

    miss = await asyncio.to_thread(streamed)
    hit = await asyncio.to_thread(streamed)

    for text, reasons in (miss, hit):
        assert text == "Echo: Name three uses of Redis."
        assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    assert ollama.call_count("/api/chat") == 1


@pytest.mark.asyncio
async def test_completions_stream_and_not_from_one_entry(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    completions = client(http_semcache).completions
    whole = await completions.create(model=MODEL, prompt="Why is the sky blue?")
    parts = [
        chunk.choices[0].text
        async for chunk in await completions.create(
            model=MODEL, prompt="Why is the sky blue?", stream=True
        )
    ]

    assert whole.choices[0].text == "Echo: Why is the sky blue?"
    assert whole.object == "text_completion"
    assert "".join(parts) == whole.choices[0].text
    assert ollama.call_count("/api/chat") == 1


@pytest.mark.asyncio
async def test_models_and_embeddings_are_proxied(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    api = client(http_semcache)
    models = [model.id async for model in api.models.list()]
    embedded = await api.embeddings.create(model="nomic-embed-text", input=["a", "b"])

    assert "llama3.2:latest" in models
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == ollama.embed_dim


@pytest.mark.asyncio
async def test_a_tool_call_passes_through_to_ollamas_own_endpoint_uncached(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    chat = client(http_semcache).chat.completions
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    ]
    raws = [
        await chat.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=tools
        )
        for _ in range(2)
    ]

    for raw in raws:
        call = raw.parse().choices[0].message.tool_calls
        assert call is not None and call[0].function.name == "get_weather"  # type: ignore[union-attr]
        assert raw.headers["x-semcache-source"] == "passthrough"
        assert raw.headers["x-semcache-passthrough"] == "tools"
    assert ollama.call_count("/v1/chat/completions") == 2


@pytest.mark.asyncio
async def test_errors_reach_the_client_as_openais_exceptions(
    http_semcache: Running, ollama: FakeOllama
) -> None:
    chat = client(http_semcache).chat.completions
    with pytest.raises(openai.NotFoundError) as unknown:
        await chat.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        await chat.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"seed": "x"}
        )

    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.message
    assert bad.value.status_code == 400 and "seed" in bad.value.message
    assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "invalid_request_error"
