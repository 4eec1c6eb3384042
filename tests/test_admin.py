"""CacheAdminService through the contract: operators see and purge everything, a tenant only its
own entries; invalidations reach the index; stats count what was served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis
from click.testing import CliRunner
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server import cli
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.redis_layout import KeyLayout
from semcache_server.core.ports import Verifier
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running, service_settings, start_service, until
from tests.test_ask import ask
from tests.test_tenants import ALICE_KEY, BOB_KEY, key, keys_file

OPERATOR_KEY = "operator-key-0123456789abcdef"
PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote the novel Dracula?",
]


@pytest_asyncio.fixture
async def admin_setup(
    tmp_path: Path,
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> AsyncIterator[tuple[Running, pb_grpc.CacheAdminServiceStub]]:
    operators = tmp_path / "admin-keys"
    operators.write_text(f"ops:{OPERATOR_KEY}\n")
    settings = service_settings(
        redis_process,
        ollama,
        api_keys_file=keys_file(tmp_path),
        admin_keys_file=operators,
        state_dir=tmp_path / "state",
    )
    running = await start_service(settings, embedder, verifier)
    admin = pb_grpc.CacheAdminServiceStub(running.channel)  # type: ignore[no-untyped-call]
    yield running, admin
    await running.stop()


async def counted(
    admin: pb_grpc.CacheAdminServiceStub,
    holds: Callable[[pb.GetStatsResponse], bool],
    metadata: tuple[tuple[str, str], ...] = (),
) -> pb.GetStatsResponse:
    """GetStats once its counts hold: each replica adds them to Redis in batches."""

    async def stats() -> pb.GetStatsResponse:
        response: pb.GetStatsResponse = await admin.GetStats(
            pb.GetStatsRequest(), metadata=metadata, timeout=10
        )
        return response

    return await until(stats, holds)


async def fill(running: Running) -> dict[str, list[str]]:
    """Each tenant stores every prompt; the entry ids by tenant."""
    ids: dict[str, list[str]] = {"alice": [], "bob": []}
    for tenant, tenant_key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
        for prompt in PROMPTS:
            answer = await running.stub.Ask(ask(prompt), metadata=key(tenant_key), timeout=10)
            assert answer.stored
            ids[tenant].append(answer.entry_id)
    return ids


async def listed_ids(
    admin: pb_grpc.CacheAdminServiceStub, metadata: tuple[tuple[str, str], ...], tenant: str = ""
) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        page = await admin.ListEntries(
            pb.ListEntriesRequest(page_size=2, page_token=token, tenant=tenant),
            metadata=metadata,
            timeout=10,
        )
        found.update(entry.entry_id for entry in page.entries)
        token = page.next_page_token
        if not token:
            return found


@pytest.mark.asyncio
async def test_a_tenant_sees_and_purges_only_its_own_entries(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    running, admin = admin_setup
    ids = await fill(running)
    alice, operator = key(ALICE_KEY), key(OPERATOR_KEY)

    assert await listed_ids(admin, alice) == set(ids["alice"])
    assert await listed_ids(admin, operator) == set(ids["alice"] + ids["bob"])
    assert await listed_ids(admin, operator, tenant="bob") == set(ids["bob"])

    bobs = ids["bob"][0]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.GetEntry(pb.GetEntryRequest(entry_id=bobs), metadata=alice, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    gone = await admin.DeleteEntry(pb.DeleteEntryRequest(entry_id=bobs), metadata=alice, timeout=10)
    assert not gone.deleted
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.ListEntries(pb.ListEntriesRequest(tenant="bob"), metadata=alice, timeout=10)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

    purged = await admin.Invalidate(pb.InvalidateRequest(all=True), metadata=alice, timeout=10)
    assert purged.removed == 3
    assert await listed_ids(admin, operator) == set(ids["bob"])
    entry = await admin.GetEntry(pb.GetEntryRequest(entry_id=bobs), metadata=operator, timeout=10)
    assert entry.entry.prompt == PROMPTS[0] and entry.entry.owner == "bob"
    assert entry.entry.text == f"Echo: {PROMPTS[0]}"


@pytest.mark.asyncio
async def test_an_invalidated_prompt_is_answered_by_the_llm_again_even_as_a_paraphrase(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    running, admin = admin_setup
    await fill(running)
    alice = key(ALICE_KEY)
    selector = pb.PromptSelector(prompt="  What is the  capital of France? ")
    removed = await admin.Invalidate(pb.InvalidateRequest(prompt=selector), metadata=alice)
    assert removed.removed == 1

    exact = await running.stub.Ask(ask(PROMPTS[0]), metadata=alice, timeout=10)
    assert exact.source == pb.SOURCE_LLM
    by_model = await admin.Invalidate(
        pb.InvalidateRequest(model="llama3.2"), metadata=key(OPERATOR_KEY), timeout=10
    )
    assert by_model.removed == 6  # alice's refreshed one and her other two, bob's three
    similar = await running.stub.Ask(
        ask("Which city is the capital of France?"), metadata=alice, timeout=10
    )
    assert similar.source == pb.SOURCE_LLM  # the index dropped it too


@pytest.mark.asyncio
async def test_stats_count_hits_by_layer_calls_and_tokens_saved(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    running, admin = admin_setup
    alice = key(ALICE_KEY)
    await fill(running)  # 6 LLM calls
    for _ in range(3):
        await running.stub.Ask(ask(PROMPTS[1]), metadata=alice, timeout=10)
    similar = await running.stub.Ask(
        ask("How many legs do spiders have?"), metadata=alice, timeout=10
    )
    assert similar.source == pb.SOURCE_SEMANTIC

    stats = await counted(admin, lambda s: s.exact_hits + s.semantic_hits == 4, alice)
    assert (stats.entries, stats.exact_hits, stats.semantic_hits, stats.llm_calls) == (3, 3, 1, 3)
    assert stats.hit_ratio == pytest.approx(4 / 7)
    assert stats.llm_calls_saved == 4 and stats.tokens_saved > 0
    everything = await admin.GetStats(pb.GetStatsRequest(), metadata=key(OPERATOR_KEY))
    assert everything.entries == 6 and everything.llm_calls == 6
    assert everything.index_entries == 6 and everything.redis_memory_bytes > 0


@pytest.mark.asyncio
async def test_admin_calls_need_a_key_and_a_selector(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    _, admin = admin_setup
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.GetStats(pb.GetStatsRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.Invalidate(pb.InvalidateRequest(), metadata=key(OPERATOR_KEY), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_semcache_stats_and_invalidate_commands(semcache: Running) -> None:
    for prompt in PROMPTS:
        await semcache.stub.Ask(ask(prompt), timeout=10)
    await semcache.stub.Ask(ask(PROMPTS[0]), timeout=10)
    admin = pb_grpc.CacheAdminServiceStub(semcache.channel)  # type: ignore[no-untyped-call]
    await counted(admin, lambda s: s.exact_hits == 1 and s.llm_calls == 3)
    runner = CliRunner()

    stats = await asyncio.to_thread(runner.invoke, cli.main, ["stats", "--target", semcache.target])
    assert stats.exit_code == 0, stats.output
    table = {
        name.strip(): value.strip()
        for name, value in (line.split("  ", 1) for line in stats.output.splitlines())
    }
    assert table["entries"] == "3" and table["exact hits"] == "1"
    assert table["hit ratio"] == "25.0%"

    gone = await asyncio.to_thread(
        runner.invoke,
        cli.main,
        ["invalidate", "--target", semcache.target, "--prompt", PROMPTS[1]],
    )
    assert gone.exit_code == 0 and "removed 1 entry\n" in gone.output
    assert (await semcache.stub.Ask(ask(PROMPTS[1]), timeout=10)).source == pb.SOURCE_LLM


# ---------------------------------------------------------------- figures of one namespace only


async def store_as(running: Running, tenant_key: str, prompts: list[str]) -> list[str]:
    ids = []
    for prompt in prompts:
        answer = await running.stub.Ask(ask(prompt), metadata=key(tenant_key), timeout=10)
        assert answer.stored
        ids.append(answer.entry_id)
    return ids


@pytest.mark.asyncio
async def test_a_tenants_stats_do_not_move_when_another_tenant_stores(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    running, admin = admin_setup
    alice = key(ALICE_KEY)
    await store_as(running, ALICE_KEY, PROMPTS[:2])
    before = await admin.GetStats(pb.GetStatsRequest(), metadata=alice, timeout=10)

    await store_as(running, BOB_KEY, [f"Bob's question number {n}?" for n in range(5)])
    after = await admin.GetStats(pb.GetStatsRequest(), metadata=alice, timeout=10)

    assert before.entries == after.entries == 2
    assert (after.index_entries, after.redis_memory_bytes) == (0, 0)  # replica-wide figures
    whole = await admin.GetStats(pb.GetStatsRequest(), metadata=key(OPERATOR_KEY), timeout=10)
    assert whole.entries == 7 and whole.index_entries == 7 and whole.redis_memory_bytes > 0
    bobs = await admin.GetStats(
        pb.GetStatsRequest(tenant="bob"), metadata=key(OPERATOR_KEY), timeout=10
    )
    assert bobs.entries == 5


@pytest.mark.asyncio
async def test_a_tenants_listing_pages_its_own_entries_however_many_others_have(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    running, admin = admin_setup
    alices = await store_as(running, ALICE_KEY, PROMPTS[:2])
    await store_as(running, BOB_KEY, [f"Bob's question number {n}?" for n in range(60)])

    for metadata, tenant in ((key(ALICE_KEY), ""), (key(OPERATOR_KEY), "alice")):
        page = await admin.ListEntries(
            pb.ListEntriesRequest(page_size=5, tenant=tenant), metadata=metadata, timeout=10
        )
        assert {entry.entry_id for entry in page.entries} == set(alices)
        assert page.next_page_token == ""  # no trail of empty pages the size of bob's cache


@pytest.mark.asyncio
async def test_entries_stored_before_namespaces_had_listings_are_counted_and_listed(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    """A Redis filled by an older semcache: its entries, and nothing else, in the namespace's
    figures from the first admin call on."""
    running, admin = admin_setup
    alices = await store_as(running, ALICE_KEY, PROMPTS)
    await store_as(running, BOB_KEY, PROMPTS[:1])
    layout = KeyLayout()
    with redis.Redis.from_url(running.settings.redis_url or "") as client:
        listings = list(client.scan_iter(layout.listing("*")))
        assert listings
        client.delete(*listings, layout.listings_complete)

    stats = await admin.GetStats(pb.GetStatsRequest(), metadata=key(ALICE_KEY), timeout=10)
    assert stats.entries == 3
    assert await listed_ids(admin, key(ALICE_KEY)) == set(alices)
    bobs = await admin.GetStats(pb.GetStatsRequest(), metadata=key(BOB_KEY), timeout=10)
    assert bobs.entries == 1


BRIEF_TTL_MS = 2000
"""Long enough for the GetStats that must still count the entry to come before it expires."""


@pytest.mark.asyncio
async def test_an_expired_entry_leaves_its_namespaces_figures(
    admin_setup: tuple[Running, pb_grpc.CacheAdminServiceStub],
) -> None:
    running, admin = admin_setup
    alice = key(ALICE_KEY)
    kept = await store_as(running, ALICE_KEY, PROMPTS[:1])
    short = ask(PROMPTS[1])
    short.cache.ttl.FromMilliseconds(BRIEF_TTL_MS)
    brief = await running.stub.Ask(short, metadata=alice, timeout=10)
    assert brief.stored
    assert (await admin.GetStats(pb.GetStatsRequest(), metadata=alice, timeout=10)).entries == 2

    async def expired() -> bool:
        """Whether Redis has expired it (the sweep may come later)."""
        request = pb.GetEntryRequest(entry_id=brief.entry_id)
        try:
            await admin.GetEntry(request, metadata=alice, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return True
        return False

    assert await until(expired, bool)
    assert (await admin.GetStats(pb.GetStatsRequest(), metadata=alice, timeout=10)).entries == 1
    assert await listed_ids(admin, alice) == set(kept)
