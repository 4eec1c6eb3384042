"""Claims across replicas: a claim whose release was lost (Redis killed or paused at the wrong
moment) must not keep a question from being answered for long."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from semcache.v1 import semcache_pb2 as pb
from semcache_server.adapters.redis_store import KeyLayout
from semcache_server.core import keys
from semcache_server.core.chain import ChainSettings
from semcache_server.core.domain import Query
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running
from tests.test_ask import MODEL, ask

QUESTION = "What does a claim in Redis mean?"
LEASE_MS = int(ChainSettings.claim_lease_seconds * 1000)


async def leave_claim(redis: RedisProcess, token: str, milliseconds: int) -> None:
    """What a Redis fault leaves behind: the claim of a call whose release never arrived."""
    client = aioredis.Redis.from_url(redis.url)
    try:
        entry_id = keys.entry_id(Query(QUESTION, MODEL))
        await client.set(KeyLayout().claim(entry_id), token, px=milliseconds)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_claim_this_replica_left_behind_does_not_delay_its_next_answer(
    semcache: Running, redis_process: RedisProcess
) -> None:
    await leave_claim(redis_process, semcache.service.cache.chain.token, 30_000)
    started = time.monotonic()
    answer = await semcache.stub.Ask(ask(QUESTION), timeout=10)
    assert answer.source == pb.SOURCE_LLM and answer.stored
    assert not answer.shared_llm_call
    assert time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_a_claim_lives_one_lease_renewed_while_the_llm_answers(
    semcache: Running, redis_process: RedisProcess, ollama: FakeOllama
) -> None:
    """So a replica that dies, or whose release is lost, blocks the others one lease at most."""
    ollama.behaviour = Behaviour(token_delay=0.3)
    ollama.replies[QUESTION] = " ".join(["word"] * 10)  # about 3 s
    client = aioredis.Redis.from_url(redis_process.url)
    claim = KeyLayout().claim(keys.entry_id(Query(QUESTION, MODEL)))
    try:
        call = asyncio.ensure_future(semcache.stub.Ask(ask(QUESTION), timeout=20))
        await asyncio.sleep(0.5)
        early = await client.pttl(claim)
        await asyncio.sleep(2.0)  # past the first renewal, a third of a lease in
        later = await client.pttl(claim)
        answer = await call
        after = await client.exists(claim)
    finally:
        await client.aclose()
    assert answer.stored
    assert 0 < early <= LEASE_MS
    assert LEASE_MS - 2500 < later <= LEASE_MS  # renewed: an unrenewed one would be below
    assert after == 0  # released
