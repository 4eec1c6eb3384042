"""Single-flight and shedding, through the contract: identical misses share one LLM call, and past
the configured bounds a miss is refused at once while exact hits are still served."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import PATIENCE, Running, service_settings, start_service, until
from tests.test_ask import MODEL, ask

QUESTION = "Which rivers flow through Vienna?"


def ask_stream(prompt: str = QUESTION) -> pb.AskStreamRequest:
    return build_request(pb.AskStreamRequest, prompt, model=MODEL)


async def read_until(
    call: grpc.aio.UnaryStreamCall[pb.AskStreamRequest, pb.AskStreamResponse], kind: str
) -> list[pb.AskStreamResponse]:
    """The messages of a stream up to the first of that kind ("start", "delta", "end")."""
    read: list[pb.AskStreamResponse] = []
    while not read or not read[-1].HasField(kind):
        message = await call.read()
        assert isinstance(message, pb.AskStreamResponse), f"it ended before a {kind}: {read}"
        read.append(message)
    return read


async def read_rest(
    call: grpc.aio.UnaryStreamCall[pb.AskStreamRequest, pb.AskStreamResponse],
) -> list[pb.AskStreamResponse]:
    """What a stream read_until() began sends to its end (grpc.aio allows no async for then)."""
    read: list[pb.AskStreamResponse] = []
    while True:
        message = await call.read()
        if not isinstance(message, pb.AskStreamResponse):  # EOF
            return read
        read.append(message)


def text_of(messages: list[pb.AskStreamResponse]) -> str:
    return "".join(m.delta.text for m in messages if m.HasField("delta"))


async def streamed(running: Running, prompt: str = QUESTION) -> tuple[pb.AskStreamStart, str]:
    start = pb.AskStreamStart()
    parts = []
    async for message in running.stub.AskStream(ask_stream(prompt), timeout=20):
        if message.HasField("start"):
            start = message.start
        elif message.HasField("delta"):
            parts.append(message.delta.text)
    return start, "".join(parts)


@pytest.mark.asyncio
async def test_fifty_identical_misses_make_one_llm_call_and_get_the_same_answer(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.behaviour = Behaviour(token_delay=0.02)
    unary = [semcache.stub.Ask(ask(QUESTION), timeout=20) for _ in range(25)]
    streams = [streamed(semcache) for _ in range(24)]
    answers = await asyncio.gather(*unary, *streams)
    late_start, late_text = await asyncio.wait_for(streamed(semcache), 20)  # after they ended

    texts = [a.text for a in answers[:25]] + [text for _, text in answers[25:]]
    shared = [a.shared_llm_call for a in answers[:25]] + [
        s.shared_llm_call for s, _ in answers[25:]
    ]
    assert ollama.call_count() == 1
    assert len(set(texts)) == 1 and texts[0].startswith("Echo: ")
    assert shared.count(False) == 1  # the one caller that made the call
    assert late_start.source == pb.SOURCE_EXACT and late_text == texts[0]


@pytest.mark.asyncio
async def test_a_stream_that_joins_late_receives_the_answer_from_its_first_token(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.hold(after_tokens=2)  # the call has produced some tokens, not all
    first = semcache.stub.AskStream(ask_stream(), timeout=2 * PATIENCE)
    try:
        first_read = await read_until(first, "delta")  # the flight holds a token
        late = semcache.stub.AskStream(ask_stream(), timeout=2 * PATIENCE)
        late_read = await read_until(late, "start")  # it has boarded
    finally:
        ollama.release()
    first_text = text_of([*first_read, *await read_rest(first)])
    late_text = text_of([*late_read, *await read_rest(late)])

    assert ollama.call_count() == 1
    assert late_read[-1].start.shared_llm_call and late_text == first_text
    assert first_text == ollama.reply_for(QUESTION)


@pytest.mark.asyncio
async def test_the_caller_that_started_the_call_may_leave_without_cancelling_it_for_others(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.hold(after_tokens=1)
    leader = semcache.stub.AskStream(ask_stream(), timeout=2 * PATIENCE)
    try:
        await read_until(leader, "delta")  # the call is under way, the leader's
        follower = semcache.stub.AskStream(ask_stream(), timeout=2 * PATIENCE)
        boarded = await read_until(follower, "start")
        leader.cancel()
    finally:
        ollama.release()
    rest = await read_rest(follower)
    again = await semcache.stub.Ask(ask(QUESTION), timeout=20)

    assert boarded[-1].start.shared_llm_call
    assert rest[-1].end.stored
    assert again.source == pb.SOURCE_EXACT and again.text == text_of([*boarded, *rest])
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_failed_call_reaches_every_rider_and_nothing_is_stored(
    semcache: Running, ollama: FakeOllama
) -> None:
    # The failure comes after every call has had time to look the prompt up and board.
    ollama.behaviour = Behaviour(first_token_delay=0.5, token_delay=0.02, drop_after_tokens=2)
    calls = [semcache.stub.Ask(ask(QUESTION), timeout=20) for _ in range(10)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    ollama.behaviour = Behaviour()
    after = await semcache.stub.Ask(ask(QUESTION), timeout=20)

    codes = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 10
    assert after.source == pb.SOURCE_LLM
    assert ollama.call_count() == 2  # the failed one, shared by ten, and the one after


@pytest.mark.asyncio
async def test_past_the_bounds_misses_are_refused_at_once_while_exact_hits_are_served(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    running = await start_service(
        service_settings(redis_process, ollama, max_llm_calls=1, max_llm_queue=1), embedder
    )
    try:
        cached = await running.stub.Ask(ask("What is the boiling point of water?"), timeout=10)
        ollama.hold()  # the call in flight keeps the one LLM slot, the one queued waits
        misses = [
            asyncio.ensure_future(
                running.stub.Ask(
                    ask(f"Name a prime number larger than {n} million"), timeout=2 * PATIENCE
                )
            )
            for n in range(6)
        ]
        try:

            async def ended() -> int:
                return sum(miss.done() for miss in misses)

            refused_first = await until(ended, lambda count: count == 4)
            exact = await running.stub.Ask(ask("What is the boiling point of water?"), timeout=10)
            unanswered = [miss for miss in misses if not miss.done()]
        finally:
            ollama.release()
        outcomes = await asyncio.gather(*misses, return_exceptions=True)
    finally:
        await running.stop()

    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    answered = [o for o in outcomes if isinstance(o, pb.AskResponse)]
    assert refused_first == 4
    assert cached.stored and exact.source == pb.SOURCE_EXACT
    assert len(unanswered) == 2  # the exact hit was served while both misses waited on the LLM
    assert len(answered) == 2  # one in flight, one queued
    assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    assert all("--max-llm-calls" in (e.details() or "") for e in refused)
