"""The clients' admin calls against a served semcache on loopback, each test run with
SemcacheClient and AsyncSemcacheClient alike (same calls, same keywords): what ask stored is
counted, listed, read, deleted and invalidated as the caller's key allows; and a page of
ListEntries holds the entries it asked for (issue #21: page_size 2 gave an empty first page and
a next-page token)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis
from semcache.v1 import semcache_pb2 as pb
from semcache_client import AsyncSemcacheClient, SemcacheClient
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running
from tests.test_admin import (
    OPERATOR_KEY,
    admin_setup,  # noqa: F401 (a fixture)
)
from tests.test_tenants import ALICE_KEY, BOB_KEY

MODEL = "llama3.2"
OTHER_MODEL = "qwen2.5"
PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote the novel Dracula?",
]
KINDS = ["sync", "async"]


@dataclass
class Client:
    """Either client, called the same way from a test that runs on the server's event loop: the
    async client awaited, the sync one on a thread (it blocks, and the server must go on)."""

    client: SemcacheClient | AsyncSemcacheClient

    async def __call__(self, method: str, *args: Any, **keywords: Any) -> Any:
        call = getattr(self.client, method)
        if isinstance(self.client, AsyncSemcacheClient):
            return await call(*args, **keywords)
        return await asyncio.to_thread(call, *args, **keywords)

    async def entries(self, **keywords: Any) -> list[pb.Entry]:
        """Everything iter_entries yields."""
        client = self.client
        if isinstance(client, AsyncSemcacheClient):
            return [entry async for entry in client.iter_entries(**keywords)]
        return await asyncio.to_thread(lambda: list(client.iter_entries(**keywords)))

    async def stream(self, prompt: str, **keywords: Any) -> list[pb.AskStreamResponse]:
        """Every message ask_stream yields."""
        client = self.client
        if isinstance(client, AsyncSemcacheClient):
            return [message async for message in client.ask_stream(prompt, **keywords)]
        return await asyncio.to_thread(lambda: list(client.ask_stream(prompt, **keywords)))


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Callable[..., Client]]:
    """connect(kind, target, **options): a client of that kind, closed after the test."""
    opened: list[SemcacheClient | AsyncSemcacheClient] = []

    def open_client(kind: str, target: str, **options: Any) -> Client:
        client_type = SemcacheClient if kind == "sync" else AsyncSemcacheClient
        opened.append(client_type(target, timeout=30, **options))
        return Client(opened[-1])

    yield open_client
    for client in opened:
        if isinstance(client, AsyncSemcacheClient):
            await client.close()
        else:
            client.close()


async def stored(
    client: Client, prompts: list[str], model: str = MODEL, **options: Any
) -> list[pb.AskResponse]:
    answers = [await client("ask", prompt, model=model, **options) for prompt in prompts]
    assert all(answer.stored for answer in answers)
    return answers


async def eventually(check: Callable[[], Any], within: float = 10.0) -> bool:
    """Whether an async check comes true within the time (the stats are counted in batches)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while not await check():
        if loop.time() > give_up:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_what_ask_stored_is_counted_listed_read_and_deleted(
    semcache: Running, connect: Callable[..., Client], kind: str
) -> None:
    client = connect(kind, semcache.target)
    answers = await stored(client, PROMPTS)
    again = await client("ask", PROMPTS[0], model=MODEL)
    assert again.source == pb.SOURCE_EXACT

    listed = await client.entries(page_size=2)
    assert sorted(entry.entry_id for entry in listed) == sorted(a.entry_id for a in answers)
    assert {entry.prompt for entry in listed} == set(PROMPTS)
    assert all(entry.text == "" and entry.model == MODEL for entry in listed)  # no answers

    first = (await client("get_entry", answers[0].entry_id)).entry
    assert (first.prompt, first.text) == (PROMPTS[0], answers[0].text)
    assert first.hits == 1 and first.HasField("created_at") and not first.HasField("expires_at")

    async def counted() -> bool:
        stats = await client("get_stats")
        return bool((stats.entries, stats.llm_calls, stats.exact_hits) == (3, 3, 1))

    assert await eventually(counted)
    assert (await client("get_stats")).hit_ratio == pytest.approx(0.25)

    assert (await client("delete_entry", answers[0].entry_id)).deleted
    assert not (await client("delete_entry", answers[0].entry_id)).deleted
    with pytest.raises(grpc.RpcError) as missing:
        await client("get_entry", answers[0].entry_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await client("get_stats")).entries == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_invalidate_removes_what_its_one_selector_names(
    semcache: Running, connect: Callable[..., Client], kind: str
) -> None:
    client = connect(kind, semcache.target)
    await stored(client, PROMPTS[:2])
    await stored(client, PROMPTS[:1], model=OTHER_MODEL)

    narrowed = await client("invalidate", prompt=PROMPTS[0], model=OTHER_MODEL)
    assert narrowed.removed == 1
    assert {(entry.prompt, entry.model) for entry in await client.entries()} == {
        (PROMPTS[0], MODEL),
        (PROMPTS[1], MODEL),
    }
    assert (await client("invalidate", prompt=f"  {PROMPTS[0]} ")).removed == 1  # normalised
    await stored(client, PROMPTS[:1], model=OTHER_MODEL)
    assert (await client("invalidate", model=OTHER_MODEL)).removed == 1
    embedded_by = (await client.entries())[0].embedding_model
    assert embedded_by and (await client("invalidate", embedding_model=embedded_by)).removed == 1
    await stored(client, PROMPTS)
    assert (await client("invalidate", everything=True)).removed == 3
    assert await client.entries() == []


@pytest.mark.parametrize(
    "selectors",
    [
        {},
        {"model": MODEL, "embedding_model": "local/all-MiniLM-L6-v2"},
        {"prompt": "q", "everything": True},
        {"embedding_model": "local/all-MiniLM-L6-v2", "everything": True},
        {"prompt": "q", "embedding_model": "local/all-MiniLM-L6-v2"},
    ],
    ids=["none", "model-and-embedding-model", "prompt-and-everything", "two-more", "prompt-and-em"],
)
def test_invalidate_with_no_selector_or_two_is_refused_before_any_call(
    selectors: dict[str, Any],
) -> None:
    """The request's selector holds one: a second would silently replace the first."""
    with SemcacheClient("127.0.0.1:1") as client, pytest.raises(ValueError, match="one of"):
        client.invalidate(**selectors)


@pytest.mark.asyncio
async def test_the_async_invalidate_refuses_two_selectors_before_any_call() -> None:
    async with AsyncSemcacheClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="model, embedding_model"):
            await client.invalidate(model=MODEL, embedding_model="local/all-MiniLM-L6-v2")


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_page_of_two_holds_two_entries_in_a_redis_that_holds_other_keys(
    semcache: Running, redis_process: RedisProcess, connect: Callable[..., Client], kind: str
) -> None:
    """The bug of issue #21. A Redis SCAN step reads about as many keys as the page asks for,
    and Redis holds more than entries (the change feed, the counters, the listings; here also
    another application's keys), so a step could find no entry: the page came back empty, with
    a token for the next one."""
    client = connect(kind, semcache.target)
    answers = await stored(client, PROMPTS)
    with redis.Redis.from_url(redis_process.url) as other_application:
        other_application.mset({f"another-app:{number}": "x" for number in range(1000)})

    first = await client("list_entries", page_size=2)
    assert len(first.entries) >= 2
    pages, token = [first], first.next_page_token
    while token:
        pages.append(await client("list_entries", page_size=2, page_token=token))
        token = pages[-1].next_page_token
    assert all(len(page.entries) >= 2 for page in pages[:-1])
    listed = [entry.entry_id for page in pages for entry in page.entries]
    assert sorted(listed) == sorted(answer.entry_id for answer in answers)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_tenants_key_reaches_its_own_entries_and_an_operators_names_a_tenant(
    admin_setup: tuple[Running, object],  # noqa: F811
    connect: Callable[..., Client],
    kind: str,
) -> None:
    target = admin_setup[0].target  # tenants' keys (alice, bob, ...) and OPERATOR_KEY
    alice = connect(kind, target, api_key=ALICE_KEY)
    bob = connect(kind, target, api_key=BOB_KEY)
    operator = connect(kind, target, api_key=OPERATOR_KEY)
    alices = await stored(alice, PROMPTS[:1])
    bobs = await stored(bob, PROMPTS)

    assert [entry.entry_id for entry in await alice.entries()] == [alices[0].entry_id]
    assert (await alice("get_stats")).entries == 1
    assert not (await alice("delete_entry", bobs[0].entry_id)).deleted
    assert (await alice("invalidate", everything=True)).removed == 1
    assert (await operator("get_stats", tenant="bob")).entries == 3
    assert len(await operator.entries(tenant="bob", page_size=2)) == 3
    assert (await operator("invalidate", prompt=PROMPTS[0], tenant="bob")).removed == 1
    assert (await bob("get_stats")).entries == 2
    with pytest.raises(grpc.RpcError) as refused:
        await alice("get_stats", tenant="bob")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
