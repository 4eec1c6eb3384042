"""The fake Ollama server seen through the real ``ollama`` client, as semcache's backend sees it.

If these pass, a semcache test that fails against the fake fails because of semcache, not because
the fake speaks a dialect the client does not understand.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import httpx
import ollama
import pytest
import pytest_asyncio
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama, split_tokens

from tests.conftest import until

MODEL = "llama3.2"
EMBED_MODEL = "nomic-embed-text"
LONG_REPLY = " ".join(f"word{i}" for i in range(60))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    """One server per module: starting a thread and a socket per test buys nothing."""
    with FakeOllama() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeOllama) -> None:
    """Each test starts from the default behaviour with no recorded calls."""
    fake.reset()


@pytest_asyncio.fixture
async def client(fake: FakeOllama) -> AsyncIterator[ollama.AsyncClient]:
    """The real client; a timeout turns a hung stream into a failure instead of a stuck run."""
    async with ollama.AsyncClient(host=fake.url, timeout=10.0) as real_client:
        yield real_client


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def _aclose(stream: AsyncIterator[Any]) -> None:
    """The client's stream is an async generator; only ``aclose()`` releases its connection."""
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()


@pytest.mark.asyncio
async def test_chat_stream_yields_word_tokens_in_order_then_a_stop_chunk(
    client: ollama.AsyncClient,
) -> None:
    parts = [part async for part in await client.chat(MODEL, _user("what is redis"), stream=True)]

    assert [p.message.content for p in parts[:-1]] == ["Echo:", " what", " is", " redis"]
    assert all(p.done is False for p in parts[:-1])
    final = parts[-1]
    assert final.done is True
    assert final.done_reason == "stop"
    assert final.message.role == "assistant"
    assert final.message.content == ""
    assert final.eval_count == 4
    assert final.prompt_eval_count == 3
    for duration in (final.total_duration, final.load_duration, final.eval_duration):
        assert duration is not None and duration > 0
    assert final.prompt_eval_duration is not None


@pytest.mark.asyncio
async def test_chat_without_stream_returns_the_whole_reply(client: ollama.AsyncClient) -> None:
    messages = [*_user("first question"), {"role": "assistant", "content": "x"}, *_user("second")]

    response = await client.chat(MODEL, messages)

    assert response.message.content == "Echo: second"
    assert response.done is True
    assert response.done_reason == "stop"
    assert response.eval_count == 2


@pytest.mark.asyncio
async def test_generate_streams_response_fields(client: ollama.AsyncClient) -> None:
    parts = [part async for part in await client.generate(MODEL, "hello there", stream=True)]

    assert "".join(p.response or "" for p in parts) == "Echo: hello there"
    assert parts[-1].done is True
    assert parts[-1].done_reason == "stop"


@pytest.mark.asyncio
async def test_generate_without_stream_returns_the_whole_reply(client: ollama.AsyncClient) -> None:
    response = await client.generate("qwen2.5", "hello there")

    assert response.response == "Echo: hello there"
    assert response.done_reason == "stop"


@pytest.mark.asyncio
async def test_reply_override_is_used_for_its_prompt(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.replies["capital of France?"] = "Paris, of course."

    parts = [p async for p in await client.chat(MODEL, _user("capital of France?"), stream=True)]

    assert [p.message.content for p in parts[:-1]] == split_tokens("Paris, of course.")
    assert split_tokens("Paris, of course.") == ["Paris,", " of", " course."]


@pytest.mark.asyncio
async def test_model_tag_latest_is_the_same_model(client: ollama.AsyncClient) -> None:
    response = await client.chat(f"{MODEL}:latest", _user("hi"))

    assert response.message.content == "Echo: hi"


@pytest.mark.asyncio
async def test_embed_returns_deterministic_unit_vectors(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    single = await client.embed(EMBED_MODEL, "hello")
    batch = await client.embed(EMBED_MODEL, ["hello", "goodbye"])

    assert single.model == EMBED_MODEL
    assert len(single.embeddings) == 1
    assert list(batch.embeddings[0]) == list(single.embeddings[0])
    assert list(batch.embeddings[1]) != list(batch.embeddings[0])
    assert list(single.embeddings[0]) == fake.embedding_for("hello")
    for vector in batch.embeddings:
        assert len(vector) == 64
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-9)
    assert single.total_duration is not None and single.load_duration is not None
    assert single.prompt_eval_count == 1


@pytest.mark.asyncio
async def test_embedding_override_is_returned_as_given(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.embedding_overrides["cat"] = [1.0, 0.0, 0.0]

    response = await client.embed(EMBED_MODEL, "cat")

    assert list(response.embeddings[0]) == [1.0, 0.0, 0.0]


@pytest.mark.asyncio
async def test_unknown_model_raises_response_error_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat("no-such-model", _user("hi"))

    assert caught.value.status_code == 404
    assert caught.value.error == 'model "no-such-model" not found, try pulling it first'


@pytest.mark.asyncio
async def test_unknown_model_raises_404_when_streaming(client: ollama.AsyncClient) -> None:
    stream = await client.chat("no-such-model", _user("hi"), stream=True)

    with pytest.raises(ollama.ResponseError) as caught:
        await anext(stream)

    assert caught.value.status_code == 404


@pytest.mark.asyncio
async def test_error_status_raises_response_error_with_that_status(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.behaviour = Behaviour(error_status=500, error_message="boom")

    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(MODEL, _user("hi"))

    assert caught.value.status_code == 500
    assert caught.value.error == "boom"


@pytest.mark.asyncio
async def test_model_behaviour_applies_to_that_model_only(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.model_behaviours["qwen2.5"] = Behaviour(error_status=503)

    ok = await client.chat(MODEL, _user("hi"))
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat("qwen2.5", _user("hi"))

    assert ok.message.content == "Echo: hi"
    assert caught.value.status_code == 503


@pytest.mark.asyncio
async def test_failing_llm_behaviour_leaves_the_embedder_working(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.behaviour = Behaviour(error_status=500)

    response = await client.embed(EMBED_MODEL, "still fine")

    assert len(response.embeddings[0]) == 64


@pytest.mark.asyncio
async def test_embed_model_behaviour_fails_the_embedder(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.model_behaviours[EMBED_MODEL] = Behaviour(error_status=500)

    with pytest.raises(ollama.ResponseError) as caught:
        await client.embed(EMBED_MODEL, "x")

    assert caught.value.status_code == 500


@pytest.mark.asyncio
async def test_dropped_stream_raises_remote_protocol_error_after_the_sent_tokens(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.behaviour = Behaviour(drop_after_tokens=2)
    received: list[str] = []

    with pytest.raises(httpx.RemoteProtocolError):
        async for part in await client.chat(MODEL, _user("one two three four"), stream=True):
            received.append(part.message.content or "")

    assert received == ["Echo:", " one"]
    assert fake.disconnects == 0


@pytest.mark.asyncio
async def test_dropped_non_streaming_request_raises_remote_protocol_error(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.behaviour = Behaviour(drop_after_tokens=0)

    with pytest.raises(httpx.RemoteProtocolError):
        await client.chat(MODEL, _user("hi"))


@pytest.mark.asyncio
async def test_mid_stream_error_line_raises_response_error_without_status(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.behaviour = Behaviour(error_after_tokens=1, error_message="model crashed")
    received: list[str] = []

    with pytest.raises(ollama.ResponseError) as caught:
        async for part in await client.chat(MODEL, _user("a b c"), stream=True):
            received.append(part.message.content or "")

    assert received == ["Echo:"]
    assert caught.value.error == "model crashed"
    assert caught.value.status_code == -1


@pytest.mark.asyncio
async def test_num_predict_truncates_with_done_reason_length(client: ollama.AsyncClient) -> None:
    stream = await client.chat(
        MODEL, _user("one two three four"), stream=True, options={"num_predict": 3}
    )
    parts = [part async for part in stream]

    assert "".join(p.message.content or "" for p in parts) == "Echo: one two"
    assert parts[-1].done_reason == "length"
    assert parts[-1].eval_count == 3


@pytest.mark.asyncio
async def test_num_predict_longer_than_reply_still_stops(client: ollama.AsyncClient) -> None:
    response = await client.generate(MODEL, "hi", options={"num_predict": 100})

    assert response.response == "Echo: hi"
    assert response.done_reason == "stop"


@pytest.mark.asyncio
async def test_scripted_done_reason_length(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.behaviour = Behaviour(done_reason="length")

    response = await client.chat(MODEL, _user("hi"))

    assert response.message.content == "Echo: hi"
    assert response.done_reason == "length"


@pytest.mark.asyncio
async def test_empty_reply_streams_only_the_final_chunk(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.behaviour = Behaviour(empty_reply=True)

    parts = [part async for part in await client.chat(MODEL, _user("hi"), stream=True)]

    assert len(parts) == 1
    assert parts[0].done is True
    assert parts[0].message.content == ""
    assert parts[0].eval_count == 0


@pytest.mark.asyncio
async def test_client_closing_a_stream_early_is_seen_as_a_disconnect(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.replies["long"] = LONG_REPLY
    fake.behaviour = Behaviour(token_delay=0.05)

    stream = await client.chat(MODEL, _user("long"), stream=True)
    async for _part in stream:
        break
    await _aclose(stream)

    assert await fake.wait_for_disconnect_async(within=5.0)
    assert fake.disconnects == 1


@pytest.mark.asyncio
async def test_finished_stream_is_not_a_disconnect(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    async for _part in await client.chat(MODEL, _user("hi"), stream=True):
        pass

    assert not await fake.wait_for_disconnect_async(within=0.2)
    assert fake.disconnects == 0


@pytest.mark.asyncio
async def test_a_held_reply_pauses_after_the_tokens_it_was_held_at_until_released(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.hold(after_tokens=2)
    stream = await client.chat(MODEL, _user("what is redis"), stream=True)
    first = [(await anext(stream)).message.content for _ in range(2)]

    async def held() -> int:
        return fake.held

    assert await until(held, lambda paused: paused == 1) == 1
    fake.release()
    rest = [part.message.content async for part in stream]

    assert first == ["Echo:", " what"]
    assert rest == [" is", " redis", ""]
    assert fake.held == 0


@pytest.mark.asyncio
async def test_calls_record_path_and_body(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    await client.chat(MODEL, _user("hi"), options={"temperature": 0})
    await client.generate(MODEL, "yo")
    await client.embed(EMBED_MODEL, "x")
    with pytest.raises(ollama.ResponseError):
        await client.chat("missing", _user("hi"))

    calls = fake.calls
    assert [c["path"] for c in calls] == ["/api/chat", "/api/generate", "/api/embed", "/api/chat"]
    assert calls[0]["messages"] == _user("hi")
    assert calls[0]["options"] == {"temperature": 0}
    assert calls[0]["stream"] is False
    assert fake.call_count() == 2
    assert fake.call_count("/api/embed") == 1
    assert fake.call_count(None) == 4


@pytest.mark.asyncio
async def test_list_show_and_version(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    listed = await client.list()
    shown = await client.show(MODEL)
    async with httpx.AsyncClient(base_url=fake.url) as plain:
        version = await plain.get("/api/version")

    assert {m.model for m in listed.models} == {
        "llama3.2:latest",
        "qwen2.5:latest",
        "nomic-embed-text:latest",
    }
    assert shown.capabilities == ["completion"]
    assert shown.details is not None and shown.details.format == "gguf"
    assert version.json()["version"]


@pytest.mark.asyncio
async def test_show_unknown_model_raises_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.show("missing")

    assert caught.value.status_code == 404


@pytest.mark.asyncio
async def test_connection_refused_errors_differ_between_unary_and_stream() -> None:
    """The client maps a refused connection to ConnectionError only outside streaming."""
    with FakeOllama() as stopped_soon:
        dead_url = stopped_soon.url
    async with ollama.AsyncClient(host=dead_url, timeout=5.0) as dead_client:
        with pytest.raises(ConnectionError):
            await dead_client.chat(MODEL, _user("hi"))
        stream = await dead_client.chat(MODEL, _user("hi"), stream=True)
        with pytest.raises(httpx.ConnectError):
            await anext(stream)
