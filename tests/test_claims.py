"""Claims across replicas: a claim whose release was lost (Redis killed or paused at the wrong
moment) must not keep a question from being answered for long, and no claim is renewed once its
LLM call has ended."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.redis_claims import RedisClaims
from semcache_server.adapters.redis_connection import RedisConnection
from semcache_server.adapters.redis_layout import KeyLayout
from semcache_server.core import keys
from semcache_server.core.domain import Query, StoreUnavailable
from semcache_server.core.flights import ClaimSettings
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess, free_port
from semcache_server.testing.serve_process import ServeProcess

from tests.conftest import PATIENCE, Running, service_settings, start_service, until
from tests.test_ask import MODEL, ask

QUESTION = "What does a claim in Redis mean?"
LEASE_MS = int(ClaimSettings.lease_seconds * 1000)
RENEWAL_PERIOD = ClaimSettings.lease_seconds / 3


async def leave_claim(redis: RedisProcess, token: str, milliseconds: int) -> None:
    """What a Redis fault leaves behind: the claim of a call whose release never arrived."""
    client = aioredis.Redis.from_url(redis.url)
    try:
        entry_id = keys.entry_id(Query(QUESTION, MODEL))
        await client.set(KeyLayout().claim(entry_id), token, px=milliseconds)
    finally:
        await client.aclose()


LEFT_BEHIND_MS = 600_000
"""The life of the claim a test leaves behind: longer than any test, so it cannot run out
meanwhile, and only a replica that takes it as its own gets past it."""


async def claim_ttl(redis: RedisProcess) -> int:
    """The claim's PTTL in milliseconds (-2: there is none)."""
    client = aioredis.Redis.from_url(redis.url)
    try:
        return int(await client.pttl(KeyLayout().claim(keys.entry_id(Query(QUESTION, MODEL)))))
    finally:
        await client.aclose()


ENTRY = keys.entry_id(Query(QUESTION, MODEL))


@pytest.mark.asyncio
async def test_a_redis_claim_is_renewed_by_its_holder_and_dropped_by_it_alone(
    redis_process: RedisProcess,
) -> None:
    connection = RedisConnection.from_url(redis_process.url, timeout=2.0)
    claims = RedisClaims(connection)
    try:
        taken = await claims.claim(ENTRY, "a", 5.0)
        renewed = await claims.claim(ENTRY, "a", 5.0)
        refused = await claims.claim(ENTRY, "b", 5.0)
        await claims.release(ENTRY, "b")  # not b's to drop
        still_refused = await claims.claim(ENTRY, "b", 5.0)
        await claims.release(ENTRY, "a")
        taken_by_b = await claims.claim(ENTRY, "b", 5.0)
    finally:
        await connection.aclose()
    assert (taken, renewed, refused, still_refused, taken_by_b) == (True, True, False, False, True)


@pytest.mark.asyncio
async def test_a_redis_claim_ends_with_its_lease(redis_process: RedisProcess) -> None:
    connection = RedisConnection.from_url(redis_process.url, timeout=2.0)
    claims = RedisClaims(connection)
    try:
        assert await claims.claim(ENTRY, "a", 0.05)
        taken_by_b = await until(lambda: claims.claim(ENTRY, "b", 5.0), lambda taken: taken)
    finally:
        await connection.aclose()
    assert taken_by_b


@pytest.mark.asyncio
async def test_redis_claims_without_redis_fail_as_store_unavailable() -> None:
    """The one error the flights fail open on (this replica then asks the LLM itself)."""
    connection = RedisConnection.from_url(f"redis://127.0.0.1:{free_port()}", timeout=0.5)
    claims = RedisClaims(connection)
    try:
        with pytest.raises(StoreUnavailable):
            await claims.claim(ENTRY, "a", 5.0)
        with pytest.raises(StoreUnavailable):
            await claims.release(ENTRY, "a")
    finally:
        await connection.aclose()


@pytest.mark.asyncio
async def test_a_claim_this_replica_left_behind_does_not_delay_its_next_answer(
    semcache: Running, redis_process: RedisProcess, ollama: FakeOllama
) -> None:
    """Waiting on the claim, for a single poll, would make the answer say it shared another
    replica's call; and such a wait ends after wait_seconds, well inside this deadline, so a
    replica that waited fails the assertions rather than the deadline."""
    await leave_claim(redis_process, semcache.service.cache.flights.token, LEFT_BEHIND_MS)
    answer = await semcache.stub.Ask(ask(QUESTION), timeout=ClaimSettings.wait_seconds + PATIENCE)
    left = await claim_ttl(redis_process)
    assert answer.source == pb.SOURCE_LLM and answer.stored
    assert not answer.shared_llm_call  # it never waited on the claim
    assert ollama.call_count() == 1  # it asked the LLM itself
    assert left == -2  # taken as its own, and released with the answer


@pytest.mark.asyncio
async def test_a_claim_lives_one_lease_renewed_while_the_llm_answers(
    semcache: Running, redis_process: RedisProcess, ollama: FakeOllama
) -> None:
    """So a replica that dies, or whose release is lost, blocks the others one lease at most.
    The LLM holds its answer until the test has seen a renewal: a claim's time to live that went
    up from one reading to the next (unrenewed, it only goes down)."""
    seen: list[int] = []

    async def reading() -> int:
        seen.append(await claim_ttl(redis_process))
        return seen[-1]

    ollama.hold()
    call = asyncio.ensure_future(semcache.stub.Ask(ask(QUESTION), timeout=2 * PATIENCE))
    try:
        early = await until(reading, lambda ms: ms > 0)
        taken = len(seen)
        later = await until(reading, lambda ms: len(seen) > taken and ms > seen[-2])
    finally:
        ollama.release()
    answer = await call
    after = await claim_ttl(redis_process)
    assert answer.stored
    assert 0 < early <= LEASE_MS
    assert seen[-2] < later <= LEASE_MS, seen[taken - 1 :]  # renewed, by one lease
    assert after == -2  # released


SLOW_CLAIM = 1.5
"""Seconds every claim takes in the test below, so that the call ends while a renewal is under
way: the first renewal runs from 1.5 + 5/3 s to 3 + 5/3 s into the flight."""
SLOW_LLM = Behaviour(token_delay=0.06)
"""With 40 words, the answer ends about 2.4 s after the first claim returned, mid-renewal."""


@pytest.mark.asyncio
async def test_a_renewal_that_swallows_its_cancellation_still_ends_with_its_call(
    tmp_path: Path,
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py completes a command under way and often swallows a cancellation that arrives
    meanwhile (Python 3.11's wait_for around its send). A renewal loop stopped only by
    cancelling it then renewed its claim for good, and another replica's callers of that
    question waited 30 s. Here every claim takes a while and completes whatever happens to its
    caller, as such a command does."""
    claim = RedisClaims.claim

    async def claim_completing_despite_cancellation(
        claims: RedisClaims, entry_id: str, token: str, seconds: float
    ) -> bool:
        async def slow() -> bool:
            await asyncio.sleep(SLOW_CLAIM)
            return await claim(claims, entry_id, token, seconds)

        command = asyncio.ensure_future(slow())
        try:
            return await asyncio.shield(command)
        except asyncio.CancelledError:
            return await command  # swallowed: the command completes, its result comes back

    monkeypatch.setattr(RedisClaims, "claim", claim_completing_despite_cancellation)
    ollama.behaviour = SLOW_LLM
    ollama.replies[QUESTION] = " ".join(["word"] * 40)
    running = await start_service(
        service_settings(redis_process, ollama, state_dir=tmp_path / "state"), embedder
    )
    client = redis.Redis.from_url(redis_process.url)
    try:
        answer = await running.stub.Ask(ask(QUESTION), timeout=20)
        # The call has ended and released its claim: nothing may take it again. A renewal that
        # outlived its call does within a renewal period and a claim's time; watch for two.
        renewed = await asyncio.to_thread(
            within, 2 * (SLOW_CLAIM + RENEWAL_PERIOD), lambda: bool(claims_in(client))
        )
        left = claims_in(client)
    finally:
        client.close()
        await running.stop()
    assert answer.source == pb.SOURCE_LLM and answer.stored
    assert not renewed, f"a claim renewed after its call ended (ms to live): {left}"


PAUSED_QUESTIONS = [f"What becomes of claim number {n} after Redis pauses?" for n in range(10)]
REDIS_TIMEOUT = 3.0
"""The replica's --redis-timeout in the pause test: longer than a third of a lease, so a renewal
sent into the pause is still waiting for Redis when its LLM call fails."""
FAILING_LLM = Behaviour(token_delay=0.1, error_after_tokens=25)
"""The LLM fails 2.5 s into each call: after the first renewal, before REDIS_TIMEOUT ends it."""


def claims_in(client: redis.Redis) -> dict[str, int]:
    """Claim key -> its ms to live."""
    return {
        key.decode(): int(client.pttl(key))
        for key in client.scan_iter(match=KeyLayout().claim("*"), count=1000)
    }


def within(seconds: float, check: Callable[[], bool]) -> bool:
    """Whether check() holds within seconds, polling."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def ask_status(
    target: str, prompt: str, deadline: float = 10.0
) -> tuple[grpc.StatusCode, pb.AskResponse | None]:
    with grpc.insecure_channel(target) as channel:
        stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            response: pb.AskResponse = stub.Ask(ask(prompt), timeout=deadline)
        except grpc.RpcError as error:
            return error.code(), None
        return grpc.StatusCode.OK, response


def test_no_claim_is_renewed_after_its_call_ended_in_a_redis_pause(
    tmp_path: Path, redis_process: RedisProcess, ollama: FakeOllama
) -> None:
    """Ten misses whose LLM calls fail while Redis is paused, each with a renewal of its claim
    waiting for Redis: redis-py completes such a command and swallows the cancellation sent to
    stop it. Once Redis is back, every claim must run out within a lease, and the questions
    must be answered through another replica without waiting for a claim."""
    ollama.behaviour = FAILING_LLM
    for question in PAUSED_QUESTIONS:
        ollama.replies[question] = " ".join(["word"] * 40)
    flags = ["--redis-url", redis_process.url, "--redis-timeout"]
    first = ServeProcess(tmp_path / "a", ollama.url, [*flags, str(REDIS_TIMEOUT)]).start()
    second = ServeProcess(tmp_path / "b", ollama.url, [*flags, "0.3"]).start()
    lease = ClaimSettings.lease_seconds
    try:
        with (
            redis.Redis.from_url(redis_process.url) as client,
            ThreadPoolExecutor(len(PAUSED_QUESTIONS)) as pool,
        ):
            # Their deadline leaves room for the releases, which wait for the paused Redis.
            calls = [
                pool.submit(ask_status, first.target, question, 30.0)
                for question in PAUSED_QUESTIONS
            ]
            claimed = within(30, lambda: len(claims_in(client)) == len(PAUSED_QUESTIONS))
            assert claimed, f"a claim for each miss, found {claims_in(client)}"
            os.kill(redis_process.pid, signal.SIGSTOP)
            try:
                during = [call.result(timeout=60)[0] for call in calls]
            finally:
                os.kill(redis_process.pid, signal.SIGCONT)
            # A claim whose release was lost lives one lease; a renewed one never ends.
            gone = within(3 * lease, lambda: not claims_in(client))
            assert gone, f"claims renewed after their calls ended (ms to live): {claims_in(client)}"
        ollama.behaviour = Behaviour()
        after = [ask_status(second.target, question) for question in PAUSED_QUESTIONS]
    finally:
        for replica in (first, second):
            replica.terminate()

    assert during == [grpc.StatusCode.UNAVAILABLE] * len(PAUSED_QUESTIONS)
    assert [code for code, _ in after] == [grpc.StatusCode.OK] * len(PAUSED_QUESTIONS)
    answers = [response for _, response in after if response is not None]
    assert all(a.source == pb.SOURCE_LLM and a.stored for a in answers)
    assert not any(a.shared_llm_call for a in answers)  # none waited for a claim
