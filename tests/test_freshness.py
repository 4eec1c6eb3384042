"""Freshness through the contract: a response says how old a reused answer is, `max_age` refuses
older ones (and the fresh answer replaces them), and `ttl` sets how long a stored answer lives."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import redis.asyncio as aioredis
from semcache.v1 import semcache_pb2 as pb
from semcache_server.adapters.redis_layout import KeyLayout
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running, until
from tests.test_ask import ask

PROMPT = "What is the boiling point of water at sea level?"
PARAPHRASE = "At sea level, what is the boiling point of water?"


def with_cache(
    prompt: str, *, max_age_ms: int | None = None, ttl_ms: int | None = None
) -> pb.AskRequest:
    request = ask(prompt)
    if max_age_ms is not None:
        request.cache.max_age.FromMilliseconds(max_age_ms)
    if ttl_ms is not None:
        request.cache.ttl.FromMilliseconds(ttl_ms)
    return request


@pytest.mark.asyncio
async def test_a_reused_answer_says_how_old_it_is(semcache: Running) -> None:
    asked = time.monotonic()
    fresh = await semcache.stub.Ask(ask(PROMPT), timeout=10)
    await asyncio.sleep(0.3)
    reused = await semcache.stub.Ask(ask(PROMPT), timeout=10)
    since_asked = time.monotonic() - asked  # the answer was stored after the first ask left
    assert not fresh.HasField("age")
    assert reused.source == pb.SOURCE_EXACT
    assert 0.3 <= reused.age.ToTimedelta().total_seconds() <= since_asked


@pytest.mark.asyncio
async def test_max_age_refuses_an_older_answer_and_the_fresh_one_replaces_it(
    semcache: Running, ollama: FakeOllama
) -> None:
    await semcache.stub.Ask(ask(PROMPT), timeout=10)
    await asyncio.sleep(0.3)
    ollama.replies[PROMPT] = "100 degrees Celsius."

    refused = await semcache.stub.Ask(with_cache(PROMPT, max_age_ms=200), timeout=10)
    assert refused.source == pb.SOURCE_LLM and refused.stored
    assert refused.text == "100 degrees Celsius."
    similar = await semcache.stub.Ask(with_cache(PARAPHRASE, max_age_ms=60_000), timeout=10)
    assert similar.source == pb.SOURCE_SEMANTIC
    assert similar.text == "100 degrees Celsius."  # the fresh entry, not the refused one
    await asyncio.sleep(0.3)
    assert (
        await semcache.stub.Ask(with_cache(PARAPHRASE, max_age_ms=200), timeout=10)
    ).source == pb.SOURCE_LLM

    again = await semcache.stub.Ask(with_cache(PROMPT, max_age_ms=60_000), timeout=10)
    assert again.source == pb.SOURCE_EXACT and again.text == "100 degrees Celsius."


@pytest.mark.asyncio
async def test_a_requests_ttl_sets_how_long_its_answer_lives(
    semcache: Running, redis_process: RedisProcess
) -> None:
    stored = await semcache.stub.Ask(with_cache(PROMPT, ttl_ms=600), timeout=10)
    entry = KeyLayout().entry(stored.entry_id)
    client = aioredis.Redis.from_url(redis_process.url)
    try:
        lives_ms = await client.pttl(entry)

        async def kept() -> int:
            return int(await client.exists(entry))

        # Asked once it is gone from Redis, so nothing but the TTL decides, whatever the pace.
        left = await until(kept, lambda count: count == 0)
    finally:
        await client.aclose()
    after = await semcache.stub.Ask(ask(PROMPT), timeout=10)
    assert stored.stored
    assert 0 < lives_ms <= 600
    assert left == 0
    assert after.source == pb.SOURCE_LLM


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("max_age_ms", "ttl_ms", "field"),
    [(-1, None, "cache.max_age"), (None, 0, "cache.ttl"), (None, -5, "cache.ttl")],
)
async def test_a_negative_max_age_or_a_ttl_that_is_not_positive_is_refused(
    semcache: Running, max_age_ms: int | None, ttl_ms: int | None, field: str
) -> None:
    request = with_cache(PROMPT, max_age_ms=max_age_ms, ttl_ms=ttl_ms)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await semcache.stub.Ask(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")
