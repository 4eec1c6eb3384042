"""Ask through the contract: which layer answers, what is stored, and the status of every error."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1.health_pb2 import HealthCheckResponse
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.edge.grpc.server import STORAGE_HEALTH_NAME
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama, split_tokens
from semcache_server.testing.redis_process import RedisProcess, free_port

from tests.conftest import Running, health_becomes, service_settings, start_service

README = Path(__file__).resolve().parent.parent / "README.md"

MODEL = "llama3.2"
QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a Python list?"
UNRELATED = "What is the capital of France?"


def ask(prompt: str = QUESTION, **fields: object) -> pb.AskRequest:
    fields.setdefault("model", MODEL)
    return build_request(pb.AskRequest, prompt, **fields)  # type: ignore[arg-type]


async def call_status(
    running: Running, request: pb.AskRequest, deadline: float = 10
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.Ask(request, timeout=deadline)
    return caught.value


def stored_entry(redis_url: str, entry_id: str) -> dict[bytes, bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return cast(dict[bytes, bytes], client.hgetall(f"semcache:v1:entry:{entry_id}"))


@pytest.mark.asyncio
async def test_a_cold_request_is_answered_by_the_llm_and_stored(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    response = await semcache.stub.Ask(ask(system="Be brief.", temperature=0.0), timeout=10)

    assert response.source == pb.SOURCE_LLM
    assert response.text == ollama.reply_for(QUESTION)
    assert response.stored and response.entry_id
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert ollama.call_count() == 1
    entry = stored_entry(redis_process.url, response.entry_id)
    assert entry[b"prompt"].decode() == QUESTION
    assert entry[b"text"].decode() == response.text
    assert entry[b"model"].decode() == MODEL
    assert entry[b"system"].decode() == "Be brief."
    assert entry[b"options"] == b'{"temperature": 0.0}'
    assert entry[b"embedding_model"] == b"local/all-MiniLM-L6-v2"
    assert entry[b"hits"] == b"0"
    assert float(entry[b"created_at"]) > 0
    vector = np.frombuffer(entry[b"embedding"], dtype=np.float32)
    assert vector.shape == (384,)
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-4)


@pytest.mark.asyncio
async def test_the_identical_request_is_an_exact_hit_without_the_llm(
    semcache: Running, ollama: FakeOllama
) -> None:
    first = await semcache.stub.Ask(ask(), timeout=10)
    second = await semcache.stub.Ask(ask("  How do I   reverse a list in Python? "), timeout=10)

    assert second.source == pb.SOURCE_EXACT
    assert second.text == first.text
    assert second.entry_id == first.entry_id
    assert second.matched_prompt == QUESTION
    assert second.similarity == pytest.approx(1.0)
    assert second.hits == 1
    assert second.cached_at.seconds > 0
    assert not second.stored
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_paraphrase_is_a_semantic_hit_with_its_similarity_and_matched_prompt(
    semcache: Running, ollama: FakeOllama
) -> None:
    first = await semcache.stub.Ask(ask(), timeout=10)
    response = await semcache.stub.Ask(ask(PARAPHRASE), timeout=10)

    assert response.source == pb.SOURCE_SEMANTIC
    assert response.text == first.text
    assert response.matched_prompt == QUESTION
    assert response.entry_id == first.entry_id
    assert 0.95 < response.similarity < 1.0
    assert response.hits == 1
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_an_unrelated_prompt_is_not_a_hit(semcache: Running, ollama: FakeOllama) -> None:
    await semcache.stub.Ask(ask(), timeout=10)
    response = await semcache.stub.Ask(ask(UNRELATED), timeout=10)

    assert response.source == pb.SOURCE_LLM
    assert response.text == ollama.reply_for(UNRELATED)
    assert ollama.call_count() == 2


@pytest.mark.asyncio
async def test_a_server_threshold_of_zero_serves_exact_hits_only(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    running = await start_service(
        service_settings(redis_process, ollama, similarity_threshold=0.0), embedder
    )
    try:
        await running.stub.Ask(ask(), timeout=10)
        exact = await running.stub.Ask(ask(), timeout=10)
        paraphrase = await running.stub.Ask(ask(PARAPHRASE), timeout=10)
    finally:
        await running.stop()
    assert exact.source == pb.SOURCE_EXACT
    assert paraphrase.source == pb.SOURCE_LLM
    assert paraphrase.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_EXACT_ONLY


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "changed",
    [
        {"model": "qwen2.5"},
        {"system": "Answer in French."},
        {"temperature": 0.7},
        {"max_tokens": 500},
        {"history": [("user", "hi"), ("assistant", "hello")]},
    ],
    ids=["model", "system", "options", "max_tokens", "history"],
)
async def test_a_different_partition_is_never_a_hit(
    semcache: Running, ollama: FakeOllama, changed: dict[str, object]
) -> None:
    await semcache.stub.Ask(ask(), timeout=10)
    for prompt in (QUESTION, PARAPHRASE):
        response = await semcache.stub.Ask(ask(prompt, skip_store=True, **changed), timeout=10)
        assert response.source == pb.SOURCE_LLM, prompt
    assert ollama.call_count() == 3


@pytest.mark.asyncio
async def test_history_belongs_to_the_exact_key_and_skips_the_semantic_layer_by_default(
    semcache: Running, ollama: FakeOllama
) -> None:
    history = [("user", "I write Python."), ("assistant", "Good to know.")]
    await semcache.stub.Ask(ask(history=history), timeout=10)

    exact = await semcache.stub.Ask(ask(history=history), timeout=10)
    paraphrase = await semcache.stub.Ask(
        ask(PARAPHRASE, history=history, skip_store=True), timeout=10
    )
    allowed = await semcache.stub.Ask(
        ask(PARAPHRASE, history=history, semantic_with_history=True), timeout=10
    )

    assert exact.source == pb.SOURCE_EXACT
    assert paraphrase.source == pb.SOURCE_LLM
    assert allowed.source == pb.SOURCE_SEMANTIC
    assert ollama.calls[0]["messages"][:2] == [
        {"role": "user", "content": "I write Python."},
        {"role": "assistant", "content": "Good to know."},
    ]


@pytest.mark.asyncio
async def test_skip_lookup_asks_the_llm_even_when_cached(
    semcache: Running, ollama: FakeOllama
) -> None:
    await semcache.stub.Ask(ask(), timeout=10)
    ollama.replies[QUESTION] = "A fresher answer."

    refreshed = await semcache.stub.Ask(ask(skip_lookup=True), timeout=10)
    after = await semcache.stub.Ask(ask(), timeout=10)

    assert refreshed.source == pb.SOURCE_LLM and refreshed.stored
    assert after.source == pb.SOURCE_EXACT and after.text == "A fresher answer."
    assert ollama.call_count() == 2


@pytest.mark.asyncio
async def test_skip_store_leaves_nothing_behind(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    first = await semcache.stub.Ask(ask(skip_store=True), timeout=10)
    with redis.Redis.from_url(redis_process.url) as client:
        keys_after = len(client.keys("semcache:v1:entry:*"))
    again = await semcache.stub.Ask(ask(), timeout=10)

    assert first.source == pb.SOURCE_LLM and not first.stored and not first.entry_id
    assert keys_after == 0
    assert again.source == pb.SOURCE_LLM
    assert ollama.call_count() == 2


@pytest.mark.asyncio
async def test_threshold_zero_means_exact_matches_only(
    semcache: Running, ollama: FakeOllama
) -> None:
    await semcache.stub.Ask(ask(), timeout=10)

    paraphrase = await semcache.stub.Ask(ask(PARAPHRASE, threshold=0.0), timeout=10)
    identical = await semcache.stub.Ask(ask(threshold=0.0), timeout=10)

    assert paraphrase.source == pb.SOURCE_LLM
    assert identical.source == pb.SOURCE_EXACT


@pytest.mark.asyncio
async def test_a_request_threshold_overrides_the_default_but_not_the_guards(
    semcache: Running,
) -> None:
    await semcache.stub.Ask(ask(), timeout=10)
    distant = "What is the way to flip the order of items in a Python list?"  # cosine 0.75

    default = await semcache.stub.Ask(ask(distant, skip_store=True), timeout=10)
    strict = await semcache.stub.Ask(ask(PARAPHRASE, threshold=0.999, skip_store=True), timeout=10)
    loose = await semcache.stub.Ask(ask(distant, threshold=0.5), timeout=10)
    unrelated = await semcache.stub.Ask(ask(UNRELATED, threshold=0.01), timeout=10)

    assert default.source == pb.SOURCE_LLM
    assert strict.source == pb.SOURCE_LLM
    assert loose.source == pb.SOURCE_SEMANTIC and loose.matched_prompt == QUESTION
    assert unrelated.source == pb.SOURCE_LLM
    assert unrelated.semantic_status == pb.SEMANTIC_STATUS_REJECTED_BY_GUARD


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_fields", "field_name"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": " \n\t "}, "prompt"),
        ({"model": ""}, "model"),
        ({"threshold": 1.5}, "cache.similarity_threshold"),
        ({"threshold": -0.1}, "cache.similarity_threshold"),
        ({"threshold": float("nan")}, "cache.similarity_threshold"),
        ({"prompt": "x" * 32_001}, "prompt"),
        ({"temperature": -1.0}, "options.temperature"),
        ({"max_tokens": -5}, "options.max_tokens"),
    ],
    ids=[
        "empty",
        "blank",
        "no-model",
        "threshold>1",
        "threshold<0",
        "nan",
        "too-long",
        "temperature",
        "max-tokens",
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    semcache: Running, ollama: FakeOllama, request_fields: dict[str, object], field_name: str
) -> None:
    prompt = str(request_fields.pop("prompt", QUESTION))
    error = await call_status(semcache, ask(prompt, **request_fields))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field_name}:")
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_a_turn_without_a_role_is_invalid_argument(semcache: Running) -> None:
    request = ask()
    request.history.add(content="who said this?")

    error = await call_status(semcache, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "history[0].role" in (error.details() or "")


@pytest.mark.asyncio
async def test_an_unknown_model_is_not_found_naming_it_in_our_words_not_ollamas(
    semcache: Running, ollama: FakeOllama
) -> None:
    error = await call_status(semcache, ask(model="no-such-model"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in (error.details() or "")
    assert "try pulling it first" not in (error.details() or "")  # Ollama's text: logged only
    assert ollama.url not in (error.details() or "")


@pytest.mark.asyncio
async def test_unreachable_ollama_is_unavailable_without_its_address(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: object
) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    settings = service_settings(redis_process, ollama, ollama_host=address)
    running = await start_service(settings, embedder)  # type: ignore[arg-type]
    try:
        # A deadline far below any retry loop: the answer must come at once, not by timing out.
        error = await call_status(running, ask(), deadline=3)
    finally:
        await running.stop()

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach Ollama" in (error.details() or "")
    assert address not in (error.details() or "")  # an internal address: logged only
    readme = " ".join(README.read_text().split())
    assert f'`UNAVAILABLE` with "{error.details()}"' in readme  # what the README says it says


@pytest.mark.asyncio
async def test_hits_are_served_while_ollama_is_unreachable(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: object
) -> None:
    settings = service_settings(redis_process, ollama)
    running = await start_service(settings, embedder)  # type: ignore[arg-type]
    await running.stub.Ask(ask(), timeout=10)
    await running.stop()

    offline = service_settings(redis_process, ollama, ollama_host=f"127.0.0.1:{free_port()}")
    running = await start_service(offline, embedder)  # type: ignore[arg-type]
    try:
        exact = await running.stub.Ask(ask(), timeout=5)
        semantic = await running.stub.Ask(ask(PARAPHRASE), timeout=5)
        miss = await call_status(running, ask(UNRELATED), deadline=5)
    finally:
        await running.stop()

    assert exact.source == pb.SOURCE_EXACT
    assert semantic.source == pb.SOURCE_SEMANTIC
    assert miss.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_an_llm_error_is_unavailable_and_never_cached(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.behaviour = Behaviour(error_status=500, error_message="model runner crashed")
    error = await call_status(semcache, ask())
    ollama.behaviour = Behaviour()
    after = await semcache.stub.Ask(ask(), timeout=10)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Ollama failed (HTTP 500)" in (error.details() or "")
    assert "model runner crashed" not in (error.details() or "")  # Ollama's text: logged only
    assert after.source == pb.SOURCE_LLM


@pytest.mark.asyncio
async def test_a_dropped_llm_stream_is_unavailable_and_never_cached(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.behaviour = Behaviour(drop_after_tokens=2)
    error = await call_status(semcache, ask())
    ollama.behaviour = Behaviour()
    after = await semcache.stub.Ask(ask(), timeout=10)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert after.source == pb.SOURCE_LLM


@pytest.mark.asyncio
async def test_an_empty_answer_is_returned_but_not_stored(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.behaviour = Behaviour(empty_reply=True)
    empty = await semcache.stub.Ask(ask(), timeout=10)
    ollama.behaviour = Behaviour()
    after = await semcache.stub.Ask(ask(), timeout=10)

    assert empty.source == pb.SOURCE_LLM and empty.text == "" and not empty.stored
    assert after.source == pb.SOURCE_LLM and after.text


@pytest.mark.asyncio
async def test_an_answer_cut_by_max_tokens_is_returned_but_not_stored(
    semcache: Running, ollama: FakeOllama
) -> None:
    cut = await semcache.stub.Ask(ask(max_tokens=2), timeout=10)
    again = await semcache.stub.Ask(ask(max_tokens=2), timeout=10)

    assert cut.finish_reason == pb.FINISH_REASON_LENGTH and not cut.stored
    assert cut.text == "".join(split_tokens(ollama.reply_for(QUESTION))[:2])
    assert again.source == pb.SOURCE_LLM
    assert ollama.call_count() == 2


@pytest.mark.asyncio
async def test_a_deadline_passing_during_generation_is_deadline_exceeded_and_not_cached(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.behaviour = Behaviour(token_delay=0.3)
    error = await call_status(semcache, ask(), deadline=0.5)
    ollama.behaviour = Behaviour()
    after = await semcache.stub.Ask(ask(), timeout=10)

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert after.source == pb.SOURCE_LLM


@pytest.mark.asyncio
async def test_the_cache_survives_a_restart(semcache: Running, ollama: FakeOllama) -> None:
    await semcache.stub.Ask(ask(), timeout=10)
    await semcache.restart()

    exact = await semcache.stub.Ask(ask(), timeout=10)
    semantic = await semcache.stub.Ask(ask(PARAPHRASE), timeout=10)

    assert exact.source == pb.SOURCE_EXACT
    assert semantic.source == pb.SOURCE_SEMANTIC
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_a_redis_outage_fails_open_and_the_cache_recovers(
    semcache: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    await semcache.stub.Ask(ask(), timeout=10)
    redis_process.stop()

    during = [await semcache.stub.Ask(ask(prompt), timeout=10) for prompt in (QUESTION, UNRELATED)]

    redis_process.start()  # empty: the test server keeps no data
    # Skipped while down, Redis is used again once the breaker's probe finds it back.
    back = await health_becomes(semcache.target, STORAGE_HEALTH_NAME, HealthCheckResponse.SERVING)
    refilled = await semcache.stub.Ask(ask(UNRELATED), timeout=10)
    exact = await semcache.stub.Ask(ask(UNRELATED), timeout=10)

    assert [r.source for r in during] == [pb.SOURCE_LLM, pb.SOURCE_LLM]
    assert all(r.text and not r.stored for r in during)
    assert back
    assert refilled.source == pb.SOURCE_LLM and refilled.stored
    assert exact.source == pb.SOURCE_EXACT


@pytest.mark.asyncio
async def test_every_answer_says_what_the_semantic_layer_did(semcache: Running) -> None:
    cold = await semcache.stub.Ask(ask(), timeout=10)
    exact = await semcache.stub.Ask(ask(), timeout=10)
    semantic = await semcache.stub.Ask(ask(PARAPHRASE), timeout=10)
    far = await semcache.stub.Ask(ask(UNRELATED, skip_store=True), timeout=10)
    exact_only = await semcache.stub.Ask(ask(PARAPHRASE, threshold=0.0), timeout=10)
    no_lookup = await semcache.stub.Ask(ask(PARAPHRASE, skip_lookup=True), timeout=10)

    assert cold.semantic_status == pb.SEMANTIC_STATUS_SEARCHED
    assert exact.semantic_status == pb.SEMANTIC_STATUS_UNSPECIFIED
    assert semantic.semantic_status == pb.SEMANTIC_STATUS_SEARCHED
    assert far.source == pb.SOURCE_LLM and far.semantic_status == pb.SEMANTIC_STATUS_SEARCHED
    assert exact_only.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_EXACT_ONLY
    assert no_lookup.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_LOOKUP


@pytest.mark.asyncio
async def test_a_hot_temperature_skips_the_semantic_layer_but_not_the_exact_one(
    semcache: Running,
) -> None:
    await semcache.stub.Ask(ask(temperature=1.5), timeout=10)

    paraphrase = await semcache.stub.Ask(ask(PARAPHRASE, temperature=1.5), timeout=10)
    identical = await semcache.stub.Ask(ask(temperature=1.5), timeout=10)

    assert paraphrase.source == pb.SOURCE_LLM
    assert paraphrase.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_TEMPERATURE
    assert identical.source == pb.SOURCE_EXACT


@pytest.mark.asyncio
async def test_history_without_opt_in_reports_the_skip(semcache: Running) -> None:
    response = await semcache.stub.Ask(ask(history=[("user", "hi")]), timeout=10)
    assert response.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_HISTORY


ENTRY_TTL = 2.0
"""Seconds entries live in the TTL test: the semantic hit that shows they were served must come
before (an embedding on a busy machine may take a while)."""


@pytest.mark.asyncio
async def test_entries_expire_after_the_ttl_from_both_layers(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    running = await start_service(
        service_settings(redis_process, ollama, ttl_seconds=ENTRY_TTL), embedder
    )
    try:
        first = await running.stub.Ask(ask(), timeout=10)
        with redis.Redis.from_url(redis_process.url) as client:
            ttl_ms = client.pttl(f"semcache:v1:entry:{first.entry_id}")
        fresh = await running.stub.Ask(ask(PARAPHRASE, skip_store=True), timeout=10)
        # Past the TTL of the entry (stored before) and of the copy that hit kept in memory.
        await asyncio.sleep(ENTRY_TTL)
        semantic_after = await running.stub.Ask(ask(PARAPHRASE, skip_store=True), timeout=10)
        exact_after = await running.stub.Ask(ask(), timeout=10)
    finally:
        await running.stop()

    assert 0 < ttl_ms <= ENTRY_TTL * 1000
    assert fresh.source == pb.SOURCE_SEMANTIC
    assert semantic_after.source == pb.SOURCE_LLM
    assert exact_after.source == pb.SOURCE_LLM


@pytest.mark.asyncio
async def test_exact_hits_survive_redis_forgetting_the_lookup_script(
    semcache: Running, redis_process: RedisProcess
) -> None:
    first = await semcache.stub.Ask(ask(), timeout=10)
    with redis.Redis.from_url(redis_process.url) as client:
        client.script_flush()  # as after a Redis restart that kept the data
    again = await semcache.stub.Ask(ask(), timeout=10)

    assert first.stored and again.source == pb.SOURCE_EXACT and again.text == first.text
