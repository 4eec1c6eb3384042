"""Tenants from API keys, through the contract: a call needs a key the server knows, and no answer,
overwrite or shared LLM call crosses from one tenant to another, identical prompts included."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import pytest_asyncio
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.ports import Verifier
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running, service_settings, start_service, until
from tests.test_ask import MODEL, ask

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
CAROL_KEY = "carol-key-0123456789abcdef"
DAVE_KEY = "dave-key-0123456789abcdef"
SECRET = "Patient Jane Roe, DOB 1980-02-03, has HIV; what dosage of lamivudine is usual?"
RequestT = TypeVar("RequestT", pb.AskRequest, pb.AskStreamRequest)
PARAPHRASE = "Patient Jane Roe, DOB 1980-02-03, has HIV: what is the usual lamivudine dosage?"


def keys_file(directory: Path) -> Path:
    path = directory / "api-keys"
    bob_digest = hashlib.sha256(BOB_KEY.encode()).hexdigest()
    path.write_text(
        "# tenant:key or tenant:sha256:<hex>\n"
        f"alice:{ALICE_KEY}\n"
        f"bob:sha256:{bob_digest}\n"
        f"carol:{CAROL_KEY}\n"
        f"dave:{DAVE_KEY}\n"
    )
    return path


def bobs(request_type: type[RequestT], prompt: str) -> RequestT:
    return build_request(request_type, prompt, model=MODEL, skip_store=True)


def key(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


@pytest_asyncio.fixture
async def tenanted(
    tmp_path: Path,
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> AsyncIterator[Running]:
    settings = service_settings(
        redis_process,
        ollama,
        api_keys_file=keys_file(tmp_path),
        shared_tenants="carol,dave",
    )
    running = await start_service(settings, embedder, verifier)
    yield running
    await running.stop()


async def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code()


@pytest.mark.asyncio
async def test_a_call_without_a_known_key_is_unauthenticated(tenanted: Running) -> None:
    stub = tenanted.stub
    for metadata in ((), key("not-a-key-anybody-gave-out"), (("authorization", ALICE_KEY),)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Ask(ask(SECRET), metadata=metadata, timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in (raised.value.details() or "") or "not one" in (
            raised.value.details() or ""
        )
        stream = stub.AskStream(
            build_request(pb.AskStreamRequest, SECRET, model=MODEL), metadata=metadata, timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stream:
                pass
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A plain key and a key given by its sha256 digest both work.
    assert (await stub.Ask(ask("Hello?"), metadata=key(ALICE_KEY), timeout=10)).stored
    assert (await stub.Ask(ask("Hello?"), metadata=key(BOB_KEY), timeout=10)).stored


@pytest.mark.asyncio
async def test_no_hit_crosses_tenants_and_the_owner_still_hits(
    tenanted: Running, ollama: FakeOllama
) -> None:
    stub = tenanted.stub
    first = await stub.Ask(ask(SECRET), metadata=key(ALICE_KEY), timeout=20)
    assert first.source == pb.SOURCE_LLM and first.stored

    # Bob stores nothing, so each of his calls could only hit Alice's entry.
    identical = await stub.Ask(bobs(pb.AskRequest, SECRET), metadata=key(BOB_KEY), timeout=20)
    paraphrase = await stub.Ask(bobs(pb.AskRequest, PARAPHRASE), metadata=key(BOB_KEY), timeout=20)
    streamed = [
        message
        async for message in stub.AskStream(
            bobs(pb.AskStreamRequest, SECRET),
            metadata=key(BOB_KEY),
            timeout=20,
        )
    ]
    for answer in (identical, paraphrase, streamed[0].start):
        assert answer.source == pb.SOURCE_LLM
        assert SECRET not in answer.matched_prompt
    assert identical.entry_id == "" and not identical.stored
    assert ollama.call_count() == 4  # each of Bob's calls went to the LLM

    own_exact = await stub.Ask(ask(SECRET), metadata=key(ALICE_KEY), timeout=20)
    own_paraphrase = await stub.Ask(ask(PARAPHRASE), metadata=key(ALICE_KEY), timeout=20)
    assert own_exact.source == pb.SOURCE_EXACT and own_exact.matched_prompt == SECRET
    assert own_exact.entry_id == first.entry_id and own_exact.hits == 1
    assert own_paraphrase.source == pb.SOURCE_SEMANTIC
    assert own_paraphrase.matched_prompt == SECRET


@pytest.mark.asyncio
async def test_another_tenant_cannot_overwrite_an_entry(
    tenanted: Running, ollama: FakeOllama
) -> None:
    stub = tenanted.stub
    await stub.Ask(ask(SECRET), metadata=key(ALICE_KEY), timeout=20)
    ollama.replies[SECRET] = "Bob's planted answer"
    refreshed = await stub.Ask(
        build_request(pb.AskRequest, SECRET, model=MODEL, skip_lookup=True),
        metadata=key(BOB_KEY),
        timeout=20,
    )
    assert refreshed.stored and refreshed.text == "Bob's planted answer"

    alice = await stub.Ask(ask(SECRET), metadata=key(ALICE_KEY), timeout=20)
    assert alice.source == pb.SOURCE_EXACT and alice.text == f"Echo: {SECRET}"


@pytest.mark.asyncio
async def test_identical_misses_of_two_tenants_do_not_share_an_llm_call(
    tenanted: Running, ollama: FakeOllama
) -> None:
    ollama.behaviour = Behaviour(token_delay=0.02)
    ollama.replies[SECRET] = "one two three four five six seven eight"
    calls = [
        tenanted.stub.Ask(ask(SECRET), metadata=key(tenant_key), timeout=20)
        for tenant_key in (ALICE_KEY, BOB_KEY, ALICE_KEY, BOB_KEY)
    ]
    answers = await asyncio.gather(*calls)
    assert ollama.call_count() == 2  # one a tenant, shared by that tenant's two callers
    assert sorted(answer.shared_llm_call for answer in answers) == [False, False, True, True]
    assert {answer.entry_id for answer in answers[0::2]} != {a.entry_id for a in answers[1::2]}


@pytest.mark.asyncio
async def test_tenants_of_a_shared_namespace_reuse_answers_but_not_who_asked(
    tenanted: Running, ollama: FakeOllama
) -> None:
    stub = tenanted.stub
    stored = await stub.Ask(ask(SECRET), metadata=key(CAROL_KEY), timeout=20)
    assert stored.stored

    exact = await stub.Ask(ask(SECRET), metadata=key(DAVE_KEY), timeout=20)
    similar = await stub.Ask(ask(PARAPHRASE), metadata=key(DAVE_KEY), timeout=20)
    assert exact.source == pb.SOURCE_EXACT and exact.text == f"Echo: {SECRET}"
    assert similar.source == pb.SOURCE_SEMANTIC and similar.entry_id == stored.entry_id
    for answer in (exact, similar):
        assert answer.matched_prompt == "" and answer.hits == 0
        assert not answer.HasField("cached_at")

    own = await stub.Ask(ask(SECRET), metadata=key(CAROL_KEY), timeout=20)
    assert own.matched_prompt == SECRET and own.hits == 3 and own.HasField("cached_at")
    # Alice is not in the shared namespace.
    alice = await stub.Ask(ask(SECRET), metadata=key(ALICE_KEY), timeout=20)
    assert alice.source == pb.SOURCE_LLM
    assert ollama.call_count() == 2


@pytest.mark.asyncio
async def test_keys_added_to_the_file_work_without_a_restart_and_removed_ones_stop(
    tenanted: Running, tmp_path: Path
) -> None:
    path = tmp_path / "api-keys"
    eve_key = "eve-key-0123456789abcdef"
    assert await status_of(tenanted.stub.Ask(ask("Hi"), metadata=key(eve_key), timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    path.write_text(f"eve:{eve_key}\n")

    async def answered(value: str) -> bool:
        try:
            await tenanted.stub.Ask(ask("Hi"), metadata=key(value), timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            return False
        return True

    assert await until(lambda: answered(eve_key), bool)  # the file is read again within 1 s
    assert not await answered(ALICE_KEY)
