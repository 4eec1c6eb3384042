"""AsyncSemcacheClient against a served semcache on loopback (ask, ask_stream, closing), and
every per-request control of the contract as a keyword of both clients' ask and ask_stream,
seen where it acts: at the LLM, or in what the cache did. `threshold` is the one name of the
threshold (the CLI's --threshold); `similarity_threshold` still works, with a warning."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from contextlib import aclosing
from datetime import timedelta
from typing import Any

import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_client import AskOptions, AsyncSemcacheClient, SemcacheClient, build_request
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama

from tests.conftest import Running
from tests.test_client_admin import KINDS, MODEL, Client, connect  # noqa: F401 (a fixture)

PROMPT = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a Python list?"


@pytest.mark.asyncio
async def test_ask_returns_the_answer_and_where_it_came_from(
    semcache: Running, ollama: FakeOllama
) -> None:
    async with AsyncSemcacheClient(semcache.target, timeout=30) as client:
        first = await client.ask(PROMPT, model=MODEL)
        again = await client.ask(PROMPT, model=MODEL)

    assert (first.source, first.text, first.stored) == (
        pb.SOURCE_LLM,
        ollama.reply_for(PROMPT),
        True,
    )
    assert (again.source, again.text, again.entry_id) == (
        pb.SOURCE_EXACT,
        first.text,
        first.entry_id,
    )
    assert ollama.call_count() == 1


@pytest.mark.asyncio
async def test_ask_stream_is_a_start_the_answers_deltas_and_an_end(
    semcache: Running, ollama: FakeOllama
) -> None:
    async with AsyncSemcacheClient(semcache.target, timeout=30) as client:
        messages = [message async for message in client.ask_stream(PROMPT, model=MODEL)]

    kinds = [message.WhichOneof("event") for message in messages]
    assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"delta"}
    assert messages[0].start.source == pb.SOURCE_LLM
    assert "".join(message.delta.text for message in messages[1:-1]) == ollama.reply_for(PROMPT)
    assert messages[-1].end.stored


@pytest.mark.asyncio
async def test_leaving_an_ask_stream_early_stops_the_generation_and_stores_nothing(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.replies[PROMPT] = " ".join(["word"] * 200)
    ollama.behaviour = Behaviour(token_delay=0.05)  # ten seconds of generation left
    async with AsyncSemcacheClient(semcache.target, timeout=30) as client:
        async with aclosing(client.ask_stream(PROMPT, model=MODEL)) as stream:
            async for message in stream:
                if message.HasField("delta"):
                    break

        assert await ollama.wait_for_disconnect_async(within=10)  # Ollama stopped generating
        assert [entry async for entry in client.iter_entries()] == []


@pytest.mark.asyncio
async def test_the_client_closes_the_channel_it_opened_and_not_one_it_was_given(
    semcache: Running,
) -> None:
    async with AsyncSemcacheClient(channel=semcache.channel) as given:
        await given.ask(PROMPT, model=MODEL)
    still_open = await semcache.stub.Ask(pb.AskRequest(prompt=PROMPT, model=MODEL), timeout=30)
    assert still_open.source == pb.SOURCE_EXACT

    async with AsyncSemcacheClient(semcache.target) as owned:
        await owned.ask(PROMPT, model=MODEL)
    with pytest.raises(grpc.aio.UsageError, match="closed"):
        await owned.ask(PROMPT, model=MODEL)


# ------------------------------------------------------- the per-request controls, both clients


async def answer(client: Client, method: str, prompt: str, **options: Any) -> Any:
    """What ask returns, or the start and end of what ask_stream yields, merged: the fields a
    test reads (source, stored, semantic_status) have one meaning in both."""
    if method == "ask":
        return await client("ask", prompt, model=MODEL, **options)
    messages = await client.stream(prompt, model=MODEL, **options)
    merged = pb.AskResponse(
        source=messages[0].start.source,
        semantic_status=messages[0].start.semantic_status,
        stored=messages[-1].end.stored,
        entry_id=messages[-1].end.entry_id,
    )
    return merged


METHODS = ["ask", "ask_stream"]


@pytest.mark.asyncio
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_generation_controls_system_and_history_reach_the_llm(
    semcache: Running,
    ollama: FakeOllama,
    connect: Callable[..., Client],  # noqa: F811
    kind: str,
    method: str,
) -> None:
    client = connect(kind, semcache.target)
    await answer(
        client,
        method,
        PROMPT,
        system="Be brief.",
        history=[("user", "Hi."), ("assistant", "Hello.")],
        temperature=0.25,
        top_p=0.5,
        max_tokens=64,
        seed=7,
        stop=["\n\n"],
    )

    [chat] = [body for body in ollama.calls if body["path"] == "/api/chat"]
    assert chat["model"] == MODEL
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [
        ("system", "Be brief."),
        ("user", "Hi."),
        ("assistant", "Hello."),
        ("user", PROMPT),
    ]
    options = chat["options"]
    assert (options["temperature"], options["top_p"]) == (0.25, 0.5)
    assert (options["num_predict"], options["seed"], options["stop"]) == (64, 7, ["\n\n"])


@pytest.mark.asyncio
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_cache_controls_act_on_the_cache(
    semcache: Running,
    ollama: FakeOllama,
    connect: Callable[..., Client],  # noqa: F811
    kind: str,
    method: str,
) -> None:
    client = connect(kind, semcache.target)

    not_stored = await answer(client, method, PROMPT, skip_store=True)
    assert not not_stored.stored and await client.entries() == []
    kept = await answer(client, method, PROMPT, ttl=timedelta(hours=1))
    entry = (await client("get_entry", kept.entry_id)).entry
    lives = entry.expires_at.ToDatetime() - entry.created_at.ToDatetime()
    assert lives.total_seconds() == pytest.approx(3600, abs=60)
    assert (await answer(client, method, PROMPT, max_age=3600.0)).source == pb.SOURCE_EXACT
    refreshed = await answer(client, method, PROMPT, max_age=0)  # any stored answer is older
    assert refreshed.source == pb.SOURCE_LLM and refreshed.stored
    assert (await answer(client, method, PROMPT, skip_lookup=True)).source == pb.SOURCE_LLM

    exact_only = await answer(client, method, PARAPHRASE, threshold=0.0, skip_store=True)
    assert exact_only.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_EXACT_ONLY
    turns = [("user", "Hi."), ("assistant", "Hello.")]
    without = await answer(client, method, PARAPHRASE, history=turns, skip_store=True)
    assert without.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_HISTORY
    opted_in = await answer(
        client, method, PARAPHRASE, history=turns, semantic_with_history=True, skip_store=True
    )
    assert opted_in.semantic_status != pb.SEMANTIC_STATUS_SKIPPED_HISTORY


def test_ask_and_ask_stream_take_every_keyword_of_build_request() -> None:
    """The keywords are listed twice (build_request's parameters, AskOptions for the clients'
    methods): neither may gain one the other lacks."""
    parameters = set(inspect.signature(build_request).parameters)
    assert parameters - {"request_type", "prompt", "model"} == set(AskOptions.__annotations__)


# ------------------------------------------------------------ threshold, and its former name


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_similarity_threshold_still_works_and_warns_at_the_callers_line(
    semcache: Running,
    connect: Callable[..., Client],  # noqa: F811
    kind: str,
) -> None:
    client = connect(kind, semcache.target).client
    with pytest.warns(DeprecationWarning, match="call it threshold") as warned:
        if isinstance(client, AsyncSemcacheClient):
            response = await client.ask(PARAPHRASE, model=MODEL, similarity_threshold=0.0)
        else:
            response = await asyncio.to_thread(
                lambda: client.ask(PARAPHRASE, model=MODEL, similarity_threshold=0.0)
            )

    assert response.semantic_status == pb.SEMANTIC_STATUS_SKIPPED_EXACT_ONLY
    assert [warning.filename for warning in warned] == [__file__]


def test_build_request_maps_both_names_to_the_contracts_field_and_warns_for_the_old() -> None:
    new = build_request(pb.AskRequest, PROMPT, model=MODEL, threshold=0.8)
    with pytest.warns(DeprecationWarning) as warned:
        old = build_request(pb.AskRequest, PROMPT, model=MODEL, similarity_threshold=0.8)

    assert new == old and new.cache.similarity_threshold == pytest.approx(0.8)
    assert [warning.filename for warning in warned] == [__file__]


def test_the_two_names_of_the_threshold_with_two_values_are_refused() -> None:
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(TypeError, match="give threshold only"),
        SemcacheClient("127.0.0.1:1") as client,
    ):
        client.ask(PROMPT, model=MODEL, threshold=0.5, similarity_threshold=0.9)


def test_durations_are_seconds_or_a_timedelta_and_a_role_is_user_or_assistant() -> None:
    seconds = build_request(pb.AskRequest, PROMPT, model=MODEL, ttl=90.5, max_age=0)
    delta = build_request(
        pb.AskRequest, PROMPT, model=MODEL, ttl=timedelta(seconds=90.5), max_age=timedelta(0)
    )
    assert seconds == delta and seconds.cache.ttl.ToMilliseconds() == 90_500
    assert seconds.cache.HasField("max_age") and seconds.cache.max_age.ToSeconds() == 0
    with pytest.raises(ValueError, match="'user' or 'assistant'"):
        build_request(pb.AskRequest, PROMPT, model=MODEL, history=[("system", "x")])
