"""Several `semcache serve` processes on one real redis-server: each sees the others' answers.

Exact hits need nothing (Redis is shared); semantic hits need every replica's index to hold the
entry, which the change feed brings within milliseconds (bench/replicas.py measures it; the tests
wait for it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_client import build_request
from semcache_server.adapters.redis_store import RedisEntryStore
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess
from semcache_server.testing.tcp_proxy import TcpProxy

from tests.conftest import PATIENCE

MODEL = "llama3.2"
PAIRS = [
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("How do I undo my last git commit?", "How can I undo the last commit in git?"),
    ("What is the capital city of Australia?", "What's the capital of Australia?"),
    ("How do I list running Docker containers?", "How can I list the running Docker containers?"),
]
TTL = 3.0
"""Seconds entries live in the expiry test: the semantic hit that shows a replica holds the
entry must come before."""


class Replicas:
    """Replicas started on demand, all stopped at the end."""

    def __init__(self, tmp_path: Path, ollama: FakeOllama, redis_url: str) -> None:
        self._tmp_path = tmp_path
        self._ollama = ollama
        self.redis_url = redis_url
        self._started: list[ServeProcess] = []

    def start(self, name: str, *extra: str, redis_url: str | None = None) -> ServeProcess:
        replica = ServeProcess(
            self._tmp_path / name,
            self._ollama.url,
            ["--redis-url", redis_url or self.redis_url, "--redis-timeout", "0.3", *extra],
        )
        self._started.append(replica)
        return replica.start()

    def stop_all(self) -> None:
        for replica in self._started:
            if replica.running():
                replica.terminate()


@pytest.fixture
def replicas(tmp_path: Path, ollama: FakeOllama, redis_process: RedisProcess) -> Iterator[Replicas]:
    started = Replicas(tmp_path, ollama, redis_process.url)
    yield started
    started.stop_all()


def ask(target: str, prompt: str, **control: object) -> pb.AskResponse:
    with grpc.insecure_channel(target) as channel:
        stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
        request = build_request(pb.AskRequest, prompt, model=MODEL, **control)  # type: ignore[arg-type]
        response: pb.AskResponse = stub.Ask(request, timeout=10)
        return response


def semantic_hit_within(target: str, prompt: str, seconds: float) -> float | None:
    """Seconds until prompt is a semantic hit on target, or None if it is not one in time.

    skip_store: a miss while waiting must not store the paraphrase as an entry of its own.
    """
    started = time.monotonic()
    while True:
        response = ask(target, prompt, skip_store=True)
        elapsed = time.monotonic() - started
        if response.source == pb.SOURCE_SEMANTIC:
            return elapsed
        if elapsed > seconds:
            return None
        time.sleep(0.02)


def test_an_answer_stored_through_one_replica_is_an_exact_and_a_semantic_hit_on_the_others(
    replicas: Replicas,
) -> None:
    first, second, third = (replicas.start(name) for name in ("a", "b", "c"))
    question, paraphrase = PAIRS[0]

    stored = ask(first.target, question)
    exact = [ask(replica.target, question) for replica in (second, third)]
    delays = [
        semantic_hit_within(replica.target, paraphrase, PATIENCE) for replica in (second, third)
    ]

    assert stored.source == pb.SOURCE_LLM and stored.stored
    assert [response.source for response in exact] == [pb.SOURCE_EXACT] * 2
    assert all(response.text == stored.text for response in exact)
    assert None not in delays, delays


@pytest.mark.asyncio
async def test_a_deletion_reaches_every_replica(replicas: Replicas) -> None:
    first, second = replicas.start("a"), replicas.start("b")
    question, paraphrase = PAIRS[1]
    stored = ask(first.target, question)
    assert semantic_hit_within(second.target, paraphrase, PATIENCE) is not None

    store = RedisEntryStore.from_url(replicas.redis_url, timeout=1.0)
    try:
        await store.delete(stored.entry_id)
    finally:
        await store.aclose()

    after = [ask(replica.target, paraphrase, skip_store=True) for replica in (first, second)]
    assert [response.source for response in after] == [pb.SOURCE_LLM] * 2
    assert [response.semantic_status for response in after] == [pb.SEMANTIC_STATUS_SEARCHED] * 2


def test_an_expiry_reaches_every_replica(replicas: Replicas) -> None:
    first, second = replicas.start("a", "--ttl", str(TTL)), replicas.start("b", "--ttl", str(TTL))
    question, paraphrase = PAIRS[2]
    ask(first.target, question)
    assert semantic_hit_within(second.target, paraphrase, PATIENCE) is not None

    # Past the entry's TTL (it was stored before) and the copy that hit kept in memory.
    time.sleep(TTL)

    after = [ask(replica.target, paraphrase, skip_store=True) for replica in (first, second)]
    exact_after = ask(second.target, question, skip_store=True)
    assert [response.source for response in after] == [pb.SOURCE_LLM] * 2
    assert exact_after.source == pb.SOURCE_LLM


def test_a_replica_started_later_or_restarted_catches_up_and_restarts_from_its_snapshot(
    replicas: Replicas,
) -> None:
    first = replicas.start("a")
    (early_question, early_paraphrase), (late_question, late_paraphrase) = PAIRS[0], PAIRS[1]
    ask(first.target, early_question)

    second = replicas.start("b")  # started after the answer was stored: reads the entries
    assert semantic_hit_within(second.target, early_paraphrase, 0) is not None

    code, output = second.terminate()
    assert code == 0 and "index snapshot written" in output, output
    ask(first.target, late_question)  # stored while the second replica is down
    second.start()

    assert semantic_hit_within(second.target, late_paraphrase, PATIENCE) is not None
    assert semantic_hit_within(second.target, early_paraphrase, 0) is not None
    _, restarted_output = second.terminate()
    assert "index snapshot loaded" in restarted_output, restarted_output


def test_a_replica_cut_off_from_redis_catches_up_when_it_returns(
    replicas: Replicas, redis_process: RedisProcess
) -> None:
    with TcpProxy(redis_process.port) as proxy:
        first = replicas.start("a")
        second = replicas.start("b", redis_url=proxy.redis_url)
        before_question, before_paraphrase = PAIRS[0]
        ask(first.target, before_question)
        assert semantic_hit_within(second.target, before_paraphrase, PATIENCE)

        proxy.cut()
        during = [ask(first.target, question) for question, _ in PAIRS[1:]]
        cut_off = ask(second.target, PAIRS[1][1], skip_store=True)
        proxy.restore()

        assert all(response.stored for response in during)
        assert cut_off.source == pb.SOURCE_LLM  # served from the LLM while Redis was away
        for _, paraphrase in PAIRS[1:]:
            assert semantic_hit_within(second.target, paraphrase, PATIENCE) is not None, paraphrase


@pytest.mark.asyncio
async def test_identical_misses_on_two_replicas_make_one_llm_call(
    replicas: Replicas, ollama: FakeOllama
) -> None:
    first, second = replicas.start("a"), replicas.start("b")
    ollama.behaviour = Behaviour(first_token_delay=0.3, token_delay=0.02)
    question = "Which rivers flow through Budapest?"

    async def ask_async(target: str) -> pb.AskResponse:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            request = build_request(pb.AskRequest, question, model=MODEL)
            response: pb.AskResponse = await stub.Ask(request, timeout=20)
            return response

    answers = await asyncio.gather(
        *(ask_async(replica.target) for replica in (first, second) for _ in range(10))
    )

    assert ollama.call_count() == 1
    assert len({answer.text for answer in answers}) == 1
    assert sum(not answer.shared_llm_call for answer in answers) == 1
