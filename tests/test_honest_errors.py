"""Bounded inputs and honest errors (issue #12), one example each: every field has a limit checked
before any work, a bad request is INVALID_ARGUMENT naming the field, messages stay short and carry
no internal address or Ollama's own words, and an LLM call has a bound of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
import pytest_asyncio
import redis
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.validation import (
    MAX_HISTORY_TURNS,
    MAX_MODEL_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS,
)
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running, service_settings, start_service

MODEL = "llama3.2"
QUESTION = "How do I reverse a list in Python?"
SLOW_REPLY = " ".join(["word"] * 20)
DEADLINE = 10.0
SHORT_MESSAGE = 300
"""The most characters a status message may have (edge/servicer.py's MAX_MESSAGE_CHARS)."""


def ask(prompt: str = QUESTION, **fields: object) -> pb.AskRequest:
    fields.setdefault("model", MODEL)
    return build_request(pb.AskRequest, prompt, **fields)  # type: ignore[arg-type]


def stream_request(prompt: str = QUESTION, **fields: object) -> pb.AskStreamRequest:
    fields.setdefault("model", MODEL)
    return build_request(pb.AskStreamRequest, prompt, **fields)  # type: ignore[arg-type]


async def ask_error(
    running: Running, request: pb.AskRequest, deadline: float | None = DEADLINE
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.Ask(request, timeout=deadline)
    return caught.value


async def stream_error(
    running: Running, request: pb.AskStreamRequest, deadline: float | None = DEADLINE
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in running.stub.AskStream(request, timeout=deadline):
            pass
    return caught.value


def entry_keys(redis_url: str) -> list[bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return cast(list[bytes], client.keys("semcache:*entry*"))


def _identity(data: bytes) -> bytes:
    return data


# ------------------------------------------------------------------------------ bounded inputs


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"temperature": float("inf")}, "options.temperature"),
        ({"temperature": float("-inf")}, "options.temperature"),
        ({"temperature": float("nan")}, "options.temperature"),
        ({"top_p": float("inf")}, "options.top_p"),
        ({"top_p": float("nan")}, "options.top_p"),
        ({"threshold": float("inf")}, "cache.similarity_threshold"),
        ({"threshold": float("-inf")}, "cache.similarity_threshold"),
    ],
    ids=["temp+inf", "temp-inf", "temp-nan", "top_p+inf", "top_p-nan", "thr+inf", "thr-inf"],
)
async def test_a_non_finite_number_is_invalid_argument_naming_the_field(
    semcache: Running, ollama: FakeOllama, fields: dict[str, object], field_name: str
) -> None:
    error = await ask_error(semcache, ask(QUESTION, **fields))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field_name}:")
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_an_infinite_temperature_on_a_stream_is_invalid_argument_and_logs_no_traceback(
    semcache: Running, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        error = await stream_error(semcache, stream_request(temperature=float("inf")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("options.temperature:")
    assert not [record for record in caplog.records if record.exc_info]
    assert ollama.call_count() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"model": "m" * (MAX_MODEL_CHARS + 1)}, "model"),
        ({"stop": ["x"] * (MAX_STOP_SEQUENCES + 1)}, "options.stop"),
        ({"stop": ["ok", "x" * (MAX_STOP_CHARS + 1)]}, "options.stop[1]"),
        ({"stop": [""]}, "options.stop[0]"),
        ({"history": [("user", "hi")] * (MAX_HISTORY_TURNS + 1)}, "history"),
        ({"history": [("user", "x" * 32_000)] * 9}, "history"),
        ({"system": "x" * 256_001}, "system"),
        ({"max_tokens": MAX_TOKENS + 1}, "options.max_tokens"),
    ],
    ids=[
        "model",
        "stop-count",
        "stop-length",
        "stop-empty",
        "history-turns",
        "history-chars",
        "system",
        "max-tokens",
    ],
)
async def test_a_field_past_its_limit_is_invalid_argument_naming_the_field_and_the_limit(
    semcache: Running, ollama: FakeOllama, fields: dict[str, object], field_name: str
) -> None:
    error = await ask_error(semcache, ask(QUESTION, **fields))

    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field_name}:")
    assert "at most" in details or "must not be empty" in details or "must be in" in details
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_a_huge_stop_string_is_rejected_and_nothing_is_stored(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    error = await ask_error(semcache, ask(stop=["x" * 900_000]))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("options.stop[0]:")
    assert str(MAX_STOP_CHARS) in (error.details() or "")
    assert len(error.details() or "") < SHORT_MESSAGE
    assert ollama.call_count() == 0
    assert entry_keys(redis_process.url) == []


@pytest.mark.asyncio
async def test_too_many_history_turns_are_refused_on_a_stream_before_any_message(
    semcache: Running, ollama: FakeOllama
) -> None:
    request = stream_request(history=[("user", "hi"), ("assistant", "hello")] * 1_000)

    error = await stream_error(semcache, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("history:")
    assert str(MAX_HISTORY_TURNS) in (error.details() or "")
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_a_request_at_every_limit_is_answered(semcache: Running, ollama: FakeOllama) -> None:
    model = "m" * MAX_MODEL_CHARS
    ollama.models.add(model)
    request = ask(
        model=model,
        system="Be brief.",
        history=[("user", "hi"), ("assistant", "hello")] * (MAX_HISTORY_TURNS // 2),
        stop=[chr(ord("a") + i) * MAX_STOP_CHARS for i in range(MAX_STOP_SEQUENCES)],
        max_tokens=MAX_TOKENS,
        seed=-(2**63),
        temperature=0.0,
        top_p=1.0,
        threshold=1.0,
    )

    response = await semcache.stub.Ask(request, timeout=DEADLINE)

    assert response.source == pb.SOURCE_LLM
    assert ollama.calls[0]["options"]["seed"] == -(2**63)


@pytest.mark.asyncio
async def test_an_unknown_role_is_invalid_argument(semcache: Running, ollama: FakeOllama) -> None:
    request = ask()
    request.history.add(role=cast(pb.Role, 7), content="who said this?")

    error = await ask_error(semcache, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("history[0].role:")
    assert ollama.call_count() == 0


# ------------------------------------------------------------------------------ honest errors


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["Ask", "AskStream"])
@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x2a\x80"],
    ids=["corrupt", "truncated", "bad-utf8", "truncated-turn"],
)
async def test_malformed_bytes_are_invalid_argument_with_one_log_line_and_no_traceback(
    semcache: Running,
    ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
    method: str,
    data: bytes,
) -> None:
    path = f"/semcache.v1.SemcacheService/{method}"
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as caught:
        if method == "Ask":
            call = semcache.channel.unary_unary(path, _identity, _identity)
            await call(data, timeout=DEADLINE)
        else:
            stream = semcache.channel.unary_stream(path, _identity, _identity)
            async for _ in stream(data, timeout=DEADLINE):
                pass

    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("request:")
    assert "Error" not in details and "<class" not in details
    # Other parts may log meanwhile (a Redis timeout on a busy machine): count this call's lines.
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_a_5000_character_model_name_gets_invalid_argument_with_a_short_message(
    semcache: Running, ollama: FakeOllama
) -> None:
    error = await ask_error(semcache, ask(model="m" * 5_000))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED
    assert (error.details() or "").startswith("model:")
    assert len(error.details() or "") < SHORT_MESSAGE
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_an_unknown_model_at_the_length_limit_is_not_found_with_the_name_clipped(
    semcache: Running, ollama: FakeOllama
) -> None:
    model = "ü" * MAX_MODEL_CHARS

    error = await ask_error(semcache, ask(model=model))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "üüü" in (error.details() or "")
    assert model not in (error.details() or "")
    assert len(error.details() or "") < SHORT_MESSAGE


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "behaviour", "code"),
    [
        ({"model": "no-such-model"}, Behaviour(), "NOT_FOUND"),
        ({}, Behaviour(error_status=400, error_message="bad option"), "INVALID_ARGUMENT"),
        ({}, Behaviour(error_status=500, error_message="runner at http://10.0.0.7"), "UNAVAILABLE"),
        ({}, Behaviour(drop_after_tokens=1), "UNAVAILABLE"),
        ({}, Behaviour(error_after_tokens=1, error_message="runner crashed"), "UNAVAILABLE"),
    ],
    ids=["not-found", "rejected", "failed", "dropped", "error-line"],
)
async def test_no_error_message_carries_an_address_or_ollamas_words(
    semcache: Running,
    ollama: FakeOllama,
    fields: dict[str, object],
    behaviour: Behaviour,
    code: str,
) -> None:
    ollama.behaviour = behaviour

    error = await ask_error(semcache, ask(QUESTION, **fields))

    details = error.details() or ""
    assert error.code() == grpc.StatusCode[code]
    assert "http://" not in details and "127.0.0.1" not in details
    assert behaviour.error_message not in details
    assert "not found, try pulling it first" not in details


# ------------------------------------------------------------------- a bound on generation


@pytest_asyncio.fixture
async def bounded(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> AsyncIterator[Running]:
    """A service whose LLM calls may take half a second, against a model that needs four."""
    settings = service_settings(redis_process, ollama, max_generation_seconds=0.5)
    running = await start_service(settings, embedder)
    ollama.replies[QUESTION] = SLOW_REPLY
    ollama.behaviour = Behaviour(token_delay=0.2)
    yield running
    await running.stop()


@pytest.mark.asyncio
async def test_an_llm_call_past_the_bound_is_deadline_exceeded_without_a_caller_deadline(
    bounded: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    error = await ask_error(bounded, ask(), deadline=None)

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.5 s" in (error.details() or "") and "nothing was stored" in (error.details() or "")
    assert await ollama.wait_for_disconnect_async(within=5)  # Ollama stops generating
    assert entry_keys(redis_process.url) == []
    ollama.behaviour = Behaviour()
    after = await bounded.stub.Ask(ask(), timeout=DEADLINE)
    assert after.source == pb.SOURCE_LLM  # not a hit: the cut answer was not stored


@pytest.mark.asyncio
async def test_single_flight_followers_see_the_generation_bound_too(
    bounded: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    errors = await asyncio.gather(
        ask_error(bounded, ask(), deadline=None),
        ask_error(bounded, ask(), deadline=None),
        stream_error(bounded, stream_request(), deadline=None),
    )

    assert [e.code() for e in errors] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
    assert ollama.call_count() == 1
    assert entry_keys(redis_process.url) == []
