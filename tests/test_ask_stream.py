"""AskStream through the contract: the order of start, deltas and end, what is stored, and what
happens to the Ollama stream when the caller, the deadline or Ollama itself ends the answer early.

Every test that uses the `semcache` fixture runs twice: with the LLM called after the semantic
lookup (--speculative-llm off), and with the default, where a stream's LLM call starts alongside
the lookup and its first event is read ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import grpc
import pytest
import pytest_asyncio
import redis
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.domain import Speculation
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama, split_tokens
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running, service_settings, start_service

MODEL = "llama3.2"
QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a Python list?"
# Several replay chunks long, with characters beyond ASCII so a chunk boundary can fall inside them.
LONG_REPLY = (
    "Use slicing: items[::-1] returns a reversed copy, while items.reverse() reverses in place "
    "and returns None. reversed(items) gives an iterator — handy in a for loop, naïve or not. "
    "For a deque, call rotate or build a new one; für große Listen ist reverse() am schnellsten. "
    "Avoid sorted(items, reverse=True) unless you really want the items ordered, not reversed. ✓"
)
SLOW_REPLY = " ".join(["word"] * 200)
DEFAULT_CHUNK_CHARS = 64
DEADLINE = 10.0


@pytest_asyncio.fixture(
    params=[Speculation.OFF, Speculation.STREAMS], ids=["after-lookup", "speculative"]
)
async def semcache(
    request: pytest.FixtureRequest,
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
) -> AsyncIterator[Running]:
    settings = service_settings(redis_process, ollama, speculative_llm=request.param)
    running = await start_service(settings, embedder)
    yield running
    await running.stop()


def stream_request(prompt: str = QUESTION, **fields: object) -> pb.AskStreamRequest:
    fields.setdefault("model", MODEL)
    return build_request(pb.AskStreamRequest, prompt, **fields)  # type: ignore[arg-type]


def ask_request(prompt: str = QUESTION, **fields: object) -> pb.AskRequest:
    fields.setdefault("model", MODEL)
    return build_request(pb.AskRequest, prompt, **fields)  # type: ignore[arg-type]


@dataclass
class Received:
    """Everything one AskStream call delivered, in order, and the status it ended with."""

    messages: list[pb.AskStreamResponse] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None

    @property
    def kinds(self) -> list[str]:
        return [cast(str, message.WhichOneof("event")) for message in self.messages]

    @property
    def start(self) -> pb.AskStreamStart:
        assert self.messages and self.messages[0].HasField("start"), self.kinds
        return self.messages[0].start

    @property
    def deltas(self) -> list[str]:
        return [message.delta.text for message in self.messages if message.HasField("delta")]

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def end(self) -> pb.AskStreamEnd:
        assert self.messages and self.messages[-1].HasField("end"), self.kinds
        return self.messages[-1].end

    def assert_well_formed(self) -> None:
        """One start first, one end last, only deltas between, and no error."""
        assert self.error is None, self.error
        kinds = self.kinds
        assert len(kinds) >= 2, kinds
        assert kinds[0] == "start" and kinds[-1] == "end", kinds
        assert set(kinds[1:-1]) <= {"delta"}, kinds


async def receive(
    running: Running, request: pb.AskStreamRequest, deadline: float | None = DEADLINE
) -> Received:
    """Read a whole stream, keeping what came before an error status."""
    received = Received()
    call = running.stub.AskStream(request, timeout=deadline)
    try:
        async for message in call:
            received.messages.append(message)
    except grpc.aio.AioRpcError as error:
        received.error = error
    return received


def entry_keys(redis_url: str) -> list[bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return sorted(cast(list[bytes], client.keys("semcache:v1:entry:*")))


def stored_entry(redis_url: str, entry_id: str) -> dict[bytes, bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return cast(dict[bytes, bytes], client.hgetall(f"semcache:v1:entry:{entry_id}"))


async def assert_nothing_stored(
    running: Running, ollama: FakeOllama, redis_url: str, prompt: str = QUESTION, **fields: object
) -> None:
    """No entry in Redis, and the next request for the prompt still goes to the LLM."""
    assert entry_keys(redis_url) == []
    ollama.behaviour = Behaviour()
    calls_before = ollama.call_count()
    after = await running.stub.Ask(ask_request(prompt, **fields), timeout=DEADLINE)
    assert after.source == pb.SOURCE_LLM
    assert ollama.call_count() == calls_before + 1


async def open_stream_and_read(
    running: Running, request: pb.AskStreamRequest, deltas: int, deadline: float | None = DEADLINE
) -> tuple[grpc.aio.UnaryStreamCall, Received]:
    """Start a stream and read its start and the first few deltas, leaving it open."""
    call = running.stub.AskStream(request, timeout=deadline)
    received = Received()
    while len(received.deltas) < deltas:
        message = await asyncio.wait_for(call.read(), 30)
        assert message is not grpc.aio.EOF, received.kinds
        received.messages.append(message)
    return call, received


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> bool:
    """Poll a condition on another process's state; True as soon as it holds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while not condition():
        if loop.time() > give_up:
            return False
        await asyncio.sleep(0.01)
    return True


# ------------------------------------------------------------------------------------------ misses


@pytest.mark.asyncio
async def test_a_miss_streams_start_then_ollamas_tokens_in_order_then_end(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.replies[QUESTION] = LONG_REPLY

    received = await receive(semcache, stream_request())

    received.assert_well_formed()
    start, end = received.start, received.end
    assert start.source == pb.SOURCE_LLM
    assert start.model == MODEL
    assert start.similarity == 0 and start.matched_prompt == "" and start.entry_id == ""
    assert start.semantic_status == pb.SEMANTIC_STATUS_SEARCHED
    assert received.deltas == split_tokens(ollama.reply_for(QUESTION))
    assert received.text == LONG_REPLY
    assert end.stored and end.entry_id
    assert end.finish_reason == pb.FINISH_REASON_STOP
    assert end.completion_tokens == len(split_tokens(LONG_REPLY))
    assert end.prompt_tokens > 0
    assert end.total_duration.ToNanoseconds() > 0
    entry = stored_entry(redis_process.url, end.entry_id)
    assert entry[b"text"].decode() == LONG_REPLY
    assert entry[b"prompt"].decode() == QUESTION
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_streamed_answer_is_then_an_exact_hit_for_unary_ask(
    semcache: Running, ollama: FakeOllama
) -> None:
    streamed = await receive(semcache, stream_request())

    response = await semcache.stub.Ask(ask_request(), timeout=DEADLINE)

    assert response.source == pb.SOURCE_EXACT
    assert response.text == streamed.text == ollama.reply_for(QUESTION)
    assert response.entry_id == streamed.end.entry_id
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_tokens_reach_the_caller_while_ollama_is_still_generating(
    semcache: Running, ollama: FakeOllama
) -> None:
    # 200 tokens 0.3 s apart: a server that buffered the answer would send nothing for a minute.
    ollama.replies[QUESTION] = SLOW_REPLY
    ollama.behaviour = Behaviour(token_delay=0.3)

    call, received = await open_stream_and_read(semcache, stream_request(), deltas=2)
    still_open = not call.done()
    call.cancel()

    assert received.kinds == ["start", "delta", "delta"]
    assert received.deltas == split_tokens(SLOW_REPLY)[:2]
    assert still_open


@pytest.mark.asyncio
async def test_misses_one_after_another_reuse_one_connection_to_ollama(
    semcache: Running, ollama: FakeOllama
) -> None:
    prompts = ["What is a monad?", "How do tides work?", "Why is the sky blue?"]
    for prompt in prompts:
        (await receive(semcache, stream_request(prompt))).assert_well_formed()

    # A new connection per answer would cost every miss a TCP handshake before its request.
    assert [call["messages"][-1]["content"] for call in ollama.calls] == prompts
    assert len({call["client"] for call in ollama.calls}) == 1


@pytest.mark.asyncio
async def test_an_empty_answer_ends_the_stream_without_storing(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.behaviour = Behaviour(empty_reply=True)

    received = await receive(semcache, stream_request())

    received.assert_well_formed()
    assert received.deltas == []
    assert not received.end.stored and received.end.entry_id == ""
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
async def test_skip_store_streams_the_answer_without_storing(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    received = await receive(semcache, stream_request(skip_store=True))

    received.assert_well_formed()
    assert received.text == ollama.reply_for(QUESTION)
    assert received.end.finish_reason == pb.FINISH_REASON_STOP
    assert not received.end.stored and received.end.entry_id == ""
    await assert_nothing_stored(semcache, ollama, redis_process.url)


# -------------------------------------------------------------------------------------------- hits


def assert_replayed_in_chunks(received: Received, text: str, chunk_chars: int) -> None:
    assert received.text == text
    assert len(received.deltas) >= 2
    assert all(0 < len(delta) <= chunk_chars for delta in received.deltas), received.deltas


@pytest.mark.asyncio
async def test_an_exact_hit_is_replayed_in_chunks_with_its_origin_first(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.replies[QUESTION] = LONG_REPLY
    stored = await receive(semcache, stream_request())

    received = await receive(semcache, stream_request("  How do I   reverse a list in Python? "))

    received.assert_well_formed()
    start, end = received.start, received.end
    assert start.source == pb.SOURCE_EXACT
    assert start.similarity == pytest.approx(1.0)
    assert start.matched_prompt == QUESTION
    assert start.entry_id == stored.end.entry_id
    assert start.model == MODEL
    assert start.hits == 1
    assert start.cached_at.seconds > 0
    assert_replayed_in_chunks(received, LONG_REPLY, DEFAULT_CHUNK_CHARS)
    assert not end.stored
    assert end.entry_id == stored.end.entry_id
    assert end.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    assert end.prompt_tokens == 0 and end.completion_tokens == 0
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_semantic_hit_is_replayed_in_chunks_with_its_similarity_and_match(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.replies[QUESTION] = LONG_REPLY
    stored = await receive(semcache, stream_request())

    received = await receive(semcache, stream_request(PARAPHRASE))

    received.assert_well_formed()
    start, end = received.start, received.end
    assert start.source == pb.SOURCE_SEMANTIC
    assert 0.95 < start.similarity < 1.0
    assert start.matched_prompt == QUESTION
    assert start.entry_id == stored.end.entry_id
    assert start.hits == 1
    assert start.semantic_status == pb.SEMANTIC_STATUS_SEARCHED
    assert_replayed_in_chunks(received, LONG_REPLY, DEFAULT_CHUNK_CHARS)
    assert not end.stored and end.entry_id == stored.end.entry_id
    assert end.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    # Speculating, the LLM was asked while the lookup ran, and the hit cancelled it.
    speculated = semcache.settings.speculative_llm is not Speculation.OFF
    assert ollama.call_count() == (2 if speculated else 1)


@pytest.mark.asyncio
async def test_the_replay_chunk_size_follows_the_server_setting(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    settings = service_settings(redis_process, ollama, replay_chunk_chars=10)
    running = await start_service(settings, embedder)
    ollama.replies[QUESTION] = LONG_REPLY
    try:
        await receive(running, stream_request())
        received = await receive(running, stream_request())
    finally:
        await running.stop()

    assert received.start.source == pb.SOURCE_EXACT
    assert_replayed_in_chunks(received, LONG_REPLY, 10)
    assert len(received.deltas) >= len(LONG_REPLY) // 10


# -------------------------------------------------------------------------- answers ended early


@pytest.mark.asyncio
async def test_a_caller_that_cancels_closes_the_ollama_stream_and_nothing_is_stored(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    # 200 tokens 50 ms apart: Ollama would still be generating for ten seconds.
    ollama.replies[QUESTION] = SLOW_REPLY
    ollama.behaviour = Behaviour(token_delay=0.05)

    call, received = await open_stream_and_read(semcache, stream_request(), deltas=3)
    call.cancel()

    assert received.kinds == ["start", "delta", "delta", "delta"]
    assert await ollama.wait_for_disconnect_async(within=5)
    assert await call.code() == grpc.StatusCode.CANCELLED
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
async def test_a_caller_that_cancels_before_the_first_token_closes_the_ollama_request(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    # The model is still "loading": the start message is out, no token yet.
    ollama.behaviour = Behaviour(first_token_delay=30)

    call = semcache.stub.AskStream(stream_request(), timeout=DEADLINE)
    first = await asyncio.wait_for(call.read(), 30)
    asked = await eventually(lambda: ollama.call_count() == 1)
    call.cancel()

    assert first.HasField("start") and first.start.source == pb.SOURCE_LLM
    assert asked
    assert await ollama.wait_for_disconnect_async(within=5)
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
async def test_a_caller_whose_channel_closes_mid_stream_closes_the_ollama_stream(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.replies[QUESTION] = SLOW_REPLY
    ollama.behaviour = Behaviour(token_delay=0.05)
    channel = grpc.aio.insecure_channel(semcache.target)
    stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]

    call = stub.AskStream(stream_request(), timeout=DEADLINE)
    kinds = [(await asyncio.wait_for(call.read(), 30)).WhichOneof("event") for _ in range(3)]
    await channel.close()

    assert kinds == ["start", "delta", "delta"]
    assert await ollama.wait_for_disconnect_async(within=5)
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
async def test_a_deadline_passing_mid_stream_is_deadline_exceeded_and_closes_ollama(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.replies[QUESTION] = SLOW_REPLY
    ollama.behaviour = Behaviour(token_delay=0.2)

    received = await receive(semcache, stream_request(), deadline=0.5)

    assert received.error is not None
    assert received.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert received.kinds[0] == "start" and "end" not in received.kinds
    assert received.deltas == split_tokens(SLOW_REPLY)[: len(received.deltas)]
    assert await ollama.wait_for_disconnect_async(within=5)
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("behaviour", "detail"),
    [
        (Behaviour(drop_after_tokens=3), "broke mid-answer"),
        (Behaviour(error_after_tokens=3, error_message="runner crashed"), "failed mid-answer"),
    ],
    ids=["dropped-connection", "error-line"],
)
async def test_ollama_failing_mid_stream_is_unavailable_after_the_tokens_and_not_stored(
    semcache: Running,
    ollama: FakeOllama,
    redis_process: RedisProcess,
    behaviour: Behaviour,
    detail: str,
) -> None:
    ollama.replies[QUESTION] = LONG_REPLY
    ollama.behaviour = behaviour

    received = await receive(semcache, stream_request())

    assert received.error is not None
    assert received.error.code() == grpc.StatusCode.UNAVAILABLE
    assert detail in (received.error.details() or "")
    assert received.kinds == ["start", "delta", "delta", "delta"]
    assert received.deltas == split_tokens(LONG_REPLY)[:3]
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
async def test_ollama_refusing_before_any_token_is_unavailable_with_no_text(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.behaviour = Behaviour(error_status=500, error_message="model runner crashed")

    received = await receive(semcache, stream_request())

    assert received.error is not None
    assert received.error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Ollama failed (HTTP 500)" in (received.error.details() or "")
    assert "model runner crashed" not in (received.error.details() or "")  # logged only
    assert set(received.kinds) <= {"start"}
    await assert_nothing_stored(semcache, ollama, redis_process.url)


@pytest.mark.asyncio
async def test_an_answer_cut_by_max_tokens_ends_with_length_and_is_not_stored(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    received = await receive(semcache, stream_request(max_tokens=2))

    received.assert_well_formed()
    assert received.deltas == split_tokens(ollama.reply_for(QUESTION))[:2]
    assert received.end.finish_reason == pb.FINISH_REASON_LENGTH
    assert not received.end.stored and received.end.entry_id == ""
    assert received.end.completion_tokens == 2
    await assert_nothing_stored(semcache, ollama, redis_process.url, max_tokens=2)


@pytest.mark.asyncio
async def test_an_answer_ollama_reports_as_length_is_streamed_whole_but_not_stored(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.behaviour = Behaviour(done_reason="length")

    received = await receive(semcache, stream_request())

    received.assert_well_formed()
    assert received.text == ollama.reply_for(QUESTION)
    assert received.end.finish_reason == pb.FINISH_REASON_LENGTH
    assert not received.end.stored and received.end.entry_id == ""
    await assert_nothing_stored(semcache, ollama, redis_process.url)


# ---------------------------------------------------------------------------------- bad requests


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("prompt", "fields", "field_name"),
    [
        (" \n\t ", {}, "prompt"),
        ("", {}, "prompt"),
        (QUESTION, {"model": ""}, "model"),
        (QUESTION, {"threshold": 1.5}, "cache.similarity_threshold"),
    ],
    ids=["blank", "empty", "no-model", "threshold>1"],
)
async def test_bad_input_is_invalid_argument_before_any_message(
    semcache: Running,
    ollama: FakeOllama,
    prompt: str,
    fields: dict[str, object],
    field_name: str,
) -> None:
    received = await receive(semcache, stream_request(prompt, **fields))

    assert received.error is not None
    assert received.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (received.error.details() or "").startswith(f"{field_name}:")
    assert received.messages == []
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_an_unknown_model_is_not_found_without_text(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    received = await receive(semcache, stream_request(model="no-such-model"))

    assert received.error is not None
    assert received.error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in (received.error.details() or "")
    assert set(received.kinds) <= {"start"}
    assert entry_keys(redis_process.url) == []


# ----------------------------------------------------------------------------------------- load


@pytest.mark.asyncio
async def test_two_hundred_concurrent_streams_all_complete_correctly(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    prompts = [f"Concurrent question number {index}?" for index in range(200)]
    # The prompts differ by a number only; a strict threshold keeps them from answering each other
    # while every stream still takes the whole path: exact lookup, semantic lookup, LLM, store.
    strict = 0.9999

    results = await asyncio.gather(
        *(
            receive(semcache, stream_request(prompt, threshold=strict), deadline=60)
            for prompt in prompts
        )
    )

    for prompt, received in zip(prompts, results, strict=True):
        received.assert_well_formed()
        assert received.start.source == pb.SOURCE_LLM, prompt
        assert received.deltas == split_tokens(ollama.reply_for(prompt)), prompt
        assert received.end.stored and received.end.finish_reason == pb.FINISH_REASON_STOP
    assert len({received.end.entry_id for received in results}) == 200
    assert len(entry_keys(redis_process.url)) == 200
    assert ollama.call_count() == 200


@pytest.mark.asyncio
async def test_a_stream_without_a_deadline_completes(semcache: Running, ollama: FakeOllama) -> None:
    received = await asyncio.wait_for(receive(semcache, stream_request(), deadline=None), 30)

    received.assert_well_formed()
    assert received.text == ollama.reply_for(QUESTION)
    assert received.end.stored


@pytest.mark.asyncio
async def test_more_than_a_hundred_slow_streams_all_receive_tokens_while_open(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    count = 120
    ollama.behaviour = Behaviour(token_delay=1.0)  # each answer would take minutes
    running = await start_service(service_settings(redis_process, ollama), embedder)
    calls: list[grpc.aio.UnaryStreamCall] = []
    first_deltas = 0

    async def open_one(index: int) -> None:
        nonlocal first_deltas
        prompt = f"Slow question {index}: " + " ".join(["word"] * 100)
        call, _ = await open_stream_and_read(
            running, stream_request(prompt, skip_lookup=True), deltas=1, deadline=60
        )
        calls.append(call)
        first_deltas += 1

    tasks = [asyncio.create_task(open_one(index)) for index in range(count)]
    try:
        all_open = await eventually(lambda: first_deltas == count, within=10)
        still_open = sum(1 for call in calls if not call.done())
    finally:
        for task in tasks:
            task.cancel()
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await running.stop()

    assert all_open, f"{first_deltas} of {count} streams received a token"
    assert still_open == count
