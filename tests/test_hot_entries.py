"""Hot entries: answers served again from memory never outlive a change made on any replica, and
their hits still reach Redis. Two services on one real Redis, called through the contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.redis_store import RedisEntryStore
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import PATIENCE, Running, service_settings, start_service
from tests.test_ask import ask

PROMPT = "How many moons does Jupiter have?"


@pytest_asyncio.fixture
async def pair(
    tmp_path: Path, redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> AsyncIterator[tuple[Running, Running]]:
    replicas = [
        await start_service(
            service_settings(redis_process, ollama, state_dir=tmp_path / name, ttl_seconds=0),
            embedder,
        )
        for name in ("a", "b")
    ]
    yield replicas[0], replicas[1]
    for replica in replicas:
        await replica.stop()


async def source_within(
    replica: Running, request: pb.AskRequest, source: int, seconds: float
) -> pb.AskResponse:
    """The first answer with that source, asking until seconds have passed."""
    deadline = time.monotonic() + seconds
    while True:
        answer: pb.AskResponse = await replica.stub.Ask(request, timeout=10)
        if answer.source == source or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_an_entry_deleted_on_another_replica_stops_being_served_from_memory(
    pair: tuple[Running, Running], redis_process: RedisProcess
) -> None:
    a, b = pair
    stored = await a.stub.Ask(ask(PROMPT), timeout=10)
    for _ in range(3):  # the first from Redis, then from memory
        assert (await b.stub.Ask(ask(PROMPT), timeout=10)).source == pb.SOURCE_EXACT

    store = RedisEntryStore.from_url(redis_process.url, timeout=1)
    try:
        await store.delete(stored.entry_id)
    finally:
        await store.aclose()
    # A copy without a TTL is kept for good: only the change feed's deletion ends it.
    answer = await source_within(b, ask(PROMPT), pb.SOURCE_LLM, seconds=PATIENCE)
    assert answer.source == pb.SOURCE_LLM


@pytest.mark.asyncio
async def test_a_refresh_on_another_replica_replaces_the_answer_kept_in_memory(
    pair: tuple[Running, Running], ollama: FakeOllama
) -> None:
    a, b = pair
    await a.stub.Ask(ask(PROMPT), timeout=10)
    for _ in range(3):
        assert (await b.stub.Ask(ask(PROMPT), timeout=10)).text == f"Echo: {PROMPT}"

    ollama.replies[PROMPT] = "Ninety-five, as of 2023."
    refresh = build_request(pb.AskRequest, PROMPT, model="llama3.2", skip_lookup=True)
    assert (await a.stub.Ask(refresh, timeout=10)).stored
    deadline = time.monotonic() + PATIENCE  # the old copy, without a TTL, would stay for good
    while (await b.stub.Ask(ask(PROMPT), timeout=10)).text != "Ninety-five, as of 2023.":
        assert time.monotonic() < deadline, "the old answer outlived the refresh"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_hits_served_from_memory_are_counted_and_reach_redis(
    pair: tuple[Running, Running], redis_process: RedisProcess
) -> None:
    a, b = pair
    stored = await a.stub.Ask(ask(PROMPT), timeout=10)
    hits = [(await b.stub.Ask(ask(PROMPT), timeout=10)).hits for _ in range(5)]
    assert hits == [1, 2, 3, 4, 5]

    store = RedisEntryStore.from_url(redis_process.url, timeout=1)
    try:
        deadline = time.monotonic() + PATIENCE
        while True:
            entry = await store.fetch(stored.entry_id)
            assert entry is not None
            if entry.hits == 5 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await store.aclose()
    assert entry.hits == 5
    # Replica A reads Redis's count, which includes B's hits from memory.
    assert (await a.stub.Ask(ask(PROMPT), timeout=10)).hits == 6


TTL = 2.0
"""Seconds the entries of the TTL test live: the exact hit that keeps a copy must come before."""


@pytest.mark.asyncio
async def test_an_entry_is_not_served_from_memory_past_its_ttl(
    tmp_path: Path, redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    settings = service_settings(
        redis_process, ollama, state_dir=tmp_path / "ttl", ttl_seconds=TTL, verifier="off"
    )
    running = await start_service(settings, embedder)
    try:
        await running.stub.Ask(ask(PROMPT), timeout=10)
        assert (await running.stub.Ask(ask(PROMPT), timeout=10)).source == pb.SOURCE_EXACT
        # The copy was made by that hit, with what was left of the TTL: it ends by now + TTL.
        await asyncio.sleep(TTL)
        assert (await running.stub.Ask(ask(PROMPT), timeout=10)).source == pb.SOURCE_LLM
    finally:
        await running.stop()
