"""CacheAdminService's errors follow Ask's rules (issue #18): a Redis outage is UNAVAILABLE, bad
input INVALID_ARGUMENT naming the field, never UNKNOWN or INTERNAL and never a traceback; a full
Redis still lets an operator read and delete entries (how memory is freed); any bytes, and any
value of any field, to any admin method get a status a caller can act on (fuzzed, as
tests/test_fuzz.py does for Ask)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
import pytest_asyncio
import redis
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event, example, given
from hypothesis import strategies as st
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import Running
from tests.test_admin import admin_setup  # noqa: F401 (a fixture)
from tests.test_ask import ask
from tests.test_fuzz import INT32, fuzz, hostile_text
from tests.test_tenants import ALICE_KEY, key

OPERATOR_KEY = "operator-key-0123456789abcdef"
OPERATOR = key(OPERATOR_KEY)
DEADLINE = 20.0
METHODS = ["DeleteEntry", "Invalidate", "GetStats", "ListEntries", "GetEntry"]
ACTIONABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,  # a Redis timeout on a busy machine
}


@pytest_asyncio.fixture
async def admin_service(admin_setup: tuple[Running, object]) -> Running:  # noqa: F811
    """A server with tenant keys and an operator's key, and two of alice's entries."""
    running, _ = admin_setup
    for prompt in ("What is the capital of France?", "Who wrote the novel Dracula?"):
        stored = await running.stub.Ask(ask(prompt), metadata=key(ALICE_KEY), timeout=10)
        assert stored.stored
    return running


def _identity(data: bytes) -> bytes:
    return data


async def call(
    running: Running,
    method: str,
    data: bytes,
    metadata: tuple[tuple[str, str], ...] = OPERATOR,
) -> tuple[grpc.StatusCode, str]:
    """Send data as method's request; its status and message."""
    path = f"/semcache.v1.CacheAdminService/{method}"
    try:
        await running.channel.unary_unary(path, _identity, _identity)(
            data, metadata=metadata, timeout=DEADLINE
        )
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def no_traceback(caplog: pytest.LogCaptureFixture) -> bool:
    """Neither gRPC (UNKNOWN) nor the servicer (INTERNAL) logged a failed call."""
    return not [
        r
        for r in caplog.records
        if r.exc_info or "unexpected error" in r.getMessage() or r.name.startswith("grpc")
    ]


async def still_serving(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Health says SERVING, and no call failed unexpectedly. (A Redis timeout on a busy machine
    is an UNAVAILABLE with a warning: an answer, not a failure of this property.)"""
    stub = health_pb2_grpc.HealthStub(running.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert no_traceback(caplog)


async def some_entry_id(running: Running) -> str:
    admin = pb_grpc.CacheAdminServiceStub(running.channel)  # type: ignore[no-untyped-call]
    page = await admin.ListEntries(pb.ListEntriesRequest(), metadata=OPERATOR, timeout=10)
    return str(page.entries[0].entry_id)


def valid_requests(entry_id: str) -> dict[str, Message]:
    return {
        "DeleteEntry": pb.DeleteEntryRequest(entry_id=entry_id),
        "Invalidate": pb.InvalidateRequest(all=True),
        "GetStats": pb.GetStatsRequest(tenant="alice"),
        "ListEntries": pb.ListEntriesRequest(tenant="alice"),
        "GetEntry": pb.GetEntryRequest(entry_id=entry_id),
    }


# --------------------------------------------------------------------------- a Redis outage


@pytest.mark.asyncio
async def test_every_admin_call_is_unavailable_while_redis_is_down_and_works_when_it_is_back(
    admin_service: Running, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    entry_id = await some_entry_id(admin_service)
    redis_process.stop()

    with caplog.at_level(logging.INFO):
        for method, request in valid_requests(entry_id).items():
            status, details = await call(admin_service, method, request.SerializeToString())
            assert status == grpc.StatusCode.UNAVAILABLE, (method, details)
            assert "Redis" in details and "retry" in details
            assert "127.0.0.1" not in details and "Error" not in details

    assert no_traceback(caplog)
    redis_process.start()
    stats = pb.GetStatsRequest(tenant="alice").SerializeToString()
    while True:  # until the breaker's probe finds Redis back
        status, _ = await call(admin_service, "GetStats", stats)
        if status == grpc.StatusCode.OK:
            break
        assert status == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------- a full Redis


@pytest.mark.asyncio
async def test_an_operator_reads_and_deletes_entries_on_a_full_redis(
    admin_service: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """At maxmemory with noeviction Redis refuses writes that grow memory: deleting entries is
    how an operator frees it, so the admin calls that only read or shrink keep working."""
    entry_id = await some_entry_id(admin_service)
    admin = pb_grpc.CacheAdminServiceStub(admin_service.channel)  # type: ignore[no-untyped-call]
    with redis.Redis.from_url(admin_service.settings.redis_url or "") as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        try:
            with caplog.at_level(logging.INFO):
                got = await admin.GetEntry(
                    pb.GetEntryRequest(entry_id=entry_id), metadata=OPERATOR, timeout=10
                )
                deleted = await admin.DeleteEntry(
                    pb.DeleteEntryRequest(entry_id=entry_id), metadata=OPERATOR, timeout=10
                )
                stats = await admin.GetStats(
                    pb.GetStatsRequest(tenant="alice"), metadata=OPERATOR, timeout=10
                )
                rest = await admin.Invalidate(
                    pb.InvalidateRequest(all=True), metadata=OPERATOR, timeout=10
                )
        finally:
            client.config_set("maxmemory", 0)

    assert got.entry.entry_id == entry_id and deleted.deleted
    assert stats.entries == 1 and rest.removed == 1
    assert no_traceback(caplog)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "token",
    ["-5", "٣", "1٣", "+5", " 5", "5 ", "0", "007", "1_0", "0x10", "abc", "9" * 20, "9" * 5_000],
    ids=[
        "negative",
        "arabic-indic",
        "mixed-digits",
        "plus",
        "leading-space",
        "trailing-space",
        "zero",
        "leading-zeros",
        "underscore",
        "hex",
        "letters",
        "past-64-bits",
        "huge",
    ],
)
async def test_a_page_token_the_server_did_not_give_out_is_invalid_argument(
    admin_service: Running, caplog: pytest.LogCaptureFixture, token: str
) -> None:
    for metadata, tenant in ((OPERATOR, ""), (key(ALICE_KEY), ""), (OPERATOR, "alice")):
        request = pb.ListEntriesRequest(page_token=token, tenant=tenant)
        status, details = await call(
            admin_service, "ListEntries", request.SerializeToString(), metadata
        )
        assert status == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("page_token:")
    assert no_traceback(caplog)


@pytest.mark.asyncio
async def test_the_page_tokens_the_server_gives_out_page_through_every_entry(
    admin_service: Running,
) -> None:
    admin = pb_grpc.CacheAdminServiceStub(admin_service.channel)  # type: ignore[no-untyped-call]
    for index in range(200):  # past the sizes a small sorted set or keyspace answers in one go
        request = ask(f"Question number {index}?")
        await admin_service.stub.Ask(request, metadata=key(ALICE_KEY), timeout=10)
    for metadata in (OPERATOR, key(ALICE_KEY)):
        found: set[str] = set()
        token, pages = "", 0
        while True:
            page = await admin.ListEntries(
                pb.ListEntriesRequest(page_size=50, page_token=token), metadata=metadata
            )
            found.update(entry.entry_id for entry in page.entries)
            token, pages = page.next_page_token, pages + 1
            if not token:
                break
        assert len(found) == 202 and pages > 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "request_message", "field_name"),
    [
        ("GetEntry", pb.GetEntryRequest(entry_id="x" * 100_000), "entry_id"),
        ("DeleteEntry", pb.DeleteEntryRequest(entry_id="../etc"), "entry_id"),
        ("GetStats", pb.GetStatsRequest(tenant="no/such tenant"), "tenant"),
        ("ListEntries", pb.ListEntriesRequest(page_size=-1), "page_size"),
        (
            "Invalidate",
            pb.InvalidateRequest(prompt=pb.PromptSelector(prompt="\u200b\u2060")),
            "prompt.prompt",
        ),
    ],
    ids=["huge-id", "not-an-id", "bad-tenant", "negative-page", "invisible-prompt"],
)
async def test_a_bad_field_is_invalid_argument_naming_it(
    admin_service: Running,
    caplog: pytest.LogCaptureFixture,
    method: str,
    request_message: Message,
    field_name: str,
) -> None:
    status, details = await call(admin_service, method, request_message.SerializeToString())

    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field_name}:")
    assert no_traceback(caplog)


BAD_UTF8_FIELD = {"DeleteEntry": 1, "Invalidate": 2, "GetStats": 1, "ListEntries": 2, "GetEntry": 1}
"""A string field of each request, to carry bytes that are not UTF-8."""


@pytest.mark.asyncio
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("how", ["corrupt", "cut", "utf8"])
async def test_malformed_bytes_to_an_admin_method_are_invalid_argument_after_authentication(
    admin_service: Running, caplog: pytest.LogCaptureFixture, method: str, how: str
) -> None:
    data = {
        "corrupt": b"\xff\xff\xff",
        "cut": b"\x0a\x05ab",
        "utf8": bytes([BAD_UTF8_FIELD[method] << 3 | 2, 2, 0xC3, 0x28]),
    }[how]
    with caplog.at_level(logging.INFO):
        status, details = await call(admin_service, method, data)
        stranger, _ = await call(admin_service, method, data, metadata=())

    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("request: is not a valid semcache.v1.")
    assert "Error" not in details and "<class" not in details
    assert stranger == grpc.StatusCode.UNAUTHENTICATED  # who calls comes first
    assert no_traceback(caplog)


# ----------------------------------------------------------------------------- fuzzed


tenants = st.one_of(st.sampled_from(["", "alice", "bob", "nobody"]), hostile_text)
entry_ids = st.one_of(hostile_text, st.text("0123456789abcdef", min_size=32, max_size=32))
page_tokens = st.one_of(
    hostile_text,
    st.integers(-10, 2**70).map(str),
    st.text("0123456789٣", min_size=1, max_size=24),
)
selectors: st.SearchStrategy[pb.InvalidateRequest] = st.one_of(
    st.builds(
        lambda prompt, model, tenant: pb.InvalidateRequest(
            prompt=pb.PromptSelector(prompt=prompt, model=model), tenant=tenant
        ),
        hostile_text,
        hostile_text,
        tenants,
    ),
    st.builds(lambda model, t: pb.InvalidateRequest(model=model, tenant=t), hostile_text, tenants),
    st.builds(
        lambda name, t: pb.InvalidateRequest(embedding_model=name, tenant=t), hostile_text, tenants
    ),
    st.builds(lambda all_, t: pb.InvalidateRequest(all=all_, tenant=t), st.booleans(), tenants),
    st.builds(pb.InvalidateRequest, tenant=tenants),
)
REQUESTS: dict[str, st.SearchStrategy[Message]] = {
    "DeleteEntry": st.builds(pb.DeleteEntryRequest, entry_id=entry_ids),
    "Invalidate": selectors,
    "GetStats": st.builds(pb.GetStatsRequest, tenant=tenants),
    "ListEntries": st.builds(
        pb.ListEntriesRequest,
        page_size=st.integers(*INT32),
        page_token=page_tokens,
        tenant=tenants,
    ),
    "GetEntry": st.builds(pb.GetEntryRequest, entry_id=entry_ids),
}
"""A hostile value in every field of every admin request."""
callers = st.sampled_from([OPERATOR, key(ALICE_KEY)])


@st.composite
def admin_bytes(draw: st.DrawFn, method: str) -> bytes:
    """Bytes that may not be method's request: random, or a request cut, corrupted, or followed
    by garbage."""
    how = draw(st.sampled_from(["random", "cut", "flipped", "appended"]))
    event(f"bytes {how}")
    if how == "random":
        return draw(st.binary(max_size=256))
    data = draw(REQUESTS[method]).SerializeToString()
    if how == "cut":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "flipped" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data + draw(st.binary(min_size=1, max_size=16))


HUGE_TOKEN = pb.ListEntriesRequest(page_token="9" * 5_000).SerializeToString()


@pytest.mark.asyncio
@fuzz(examples=100)
@given(method=st.sampled_from(METHODS), data=st.data(), metadata=callers)
async def test_any_field_of_any_admin_request_gets_a_status_a_caller_can_act_on(
    admin_service: Running,
    caplog: pytest.LogCaptureFixture,
    method: str,
    data: st.DataObject,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    request = data.draw(REQUESTS[method])

    status, _ = await call(admin_service, method, request.SerializeToString(), metadata)
    event(f"{method} {status.name}")

    assert status in ACTIONABLE, request
    await still_serving(admin_service, caplog)


@pytest.mark.asyncio
@fuzz(examples=100)
@given(case=st.sampled_from(METHODS).flatmap(lambda m: st.tuples(st.just(m), admin_bytes(m))))
@example(case=("ListEntries", HUGE_TOKEN))
@example(case=("DeleteEntry", b"\xff\xff\xff"))
@example(case=("GetStats", b"\x0a\x02\xc3\x28"))
async def test_any_bytes_to_any_admin_method_get_a_status_a_caller_can_act_on(
    admin_service: Running, caplog: pytest.LogCaptureFixture, case: tuple[str, bytes]
) -> None:
    method, data = case

    status, _ = await call(admin_service, method, data)
    event(f"{method} {status.name}")

    assert status in ACTIONABLE, data[:200]
    await still_serving(admin_service, caplog)
