"""Small gaps in the checks of a request (issue #18): a prompt that shows nothing is blank, and a
Duration that google/protobuf/duration.proto does not allow is refused naming its field; both
as INVALID_ARGUMENT before the LLM hears of them. (Page tokens: tests/test_admin_errors.py.)"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from semcache.v1 import semcache_pb2 as pb
from semcache_server.testing.ollama_protocol import FakeOllama

from tests.conftest import Running

MODEL = "llama3.2"
QUESTION = "How do I reverse a list in Python?"
DEADLINE = 10.0


async def status_of_ask(running: Running, request: pb.AskRequest) -> tuple[grpc.StatusCode, str]:
    try:
        await running.stub.Ask(request, timeout=DEADLINE)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def status_of_stream(
    running: Running, request: pb.AskStreamRequest
) -> tuple[grpc.StatusCode, str]:
    try:
        async for _ in running.stub.AskStream(request, timeout=DEADLINE):
            pass
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


INVISIBLE = {
    "zero-width-space": "\u200b",
    "byte-order-mark": "\ufeff",
    "word-joiner": "\u2060",
    "joiners-and-spaces": "\u200b \u200c\u200d\u2060\t\u3000",
    "combining-marks-alone": "\u0301\u0308\u20dd",
    "soft-hyphen": "\u00ad",
    "bidi-marks": "\u200e\u200f\u202a\u2066",
    "hangul-filler": "\u3164",
    "tag-characters": "\U000e0020\U000e0041",
    "variation-selector": "\ufe0f",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", list(INVISIBLE.values()), ids=list(INVISIBLE))
async def test_a_prompt_of_invisible_characters_is_blank(
    semcache: Running, ollama: FakeOllama, prompt: str
) -> None:
    unary = await status_of_ask(semcache, pb.AskRequest(prompt=prompt, model=MODEL))
    streamed = await status_of_stream(semcache, pb.AskStreamRequest(prompt=prompt, model=MODEL))

    for status, details in (unary, streamed):
        assert status == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("prompt: must not be empty or blank")
    assert ollama.call_count() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "prompt", ["\u200bWhy is the sky blue?\u200b", "🙂", "e\u0301", "\U00031350"], ids=str
)
async def test_a_prompt_that_shows_something_is_answered(semcache: Running, prompt: str) -> None:
    """Invisible characters around a question, an emoji, a mark on its letter, and a code point
    newer than Python's Unicode tables."""
    status, details = await status_of_ask(semcache, pb.AskRequest(prompt=prompt, model=MODEL))

    assert status == grpc.StatusCode.OK, details


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [
        ("ttl", 0, 1_000_000_000),
        ("ttl", 5, 2_000_000_000),
        ("ttl", 1, -500_000_000),
        ("ttl", -1, 500_000_000),
        ("ttl", 315_576_000_001, 0),
        ("max_age", 5, -1),
        ("max_age", 0, -1_000_000_000),
        ("max_age", -315_576_000_001, 0),
        ("max_age", -(2**63), 0),
    ],
    ids=[
        "ttl-nanos-1e9",
        "ttl-nanos-2e9",
        "ttl-mixed-signs",
        "ttl-mixed-signs-negative-seconds",
        "ttl-past-range",
        "max_age-mixed-signs",
        "max_age-nanos-minus-1e9",
        "max_age-past-range",
        "max_age-int64-min",
    ],
)
async def test_an_invalid_duration_is_invalid_argument_naming_the_field(
    semcache: Running, ollama: FakeOllama, field: str, seconds: int, nanos: int
) -> None:
    cache = pb.CacheControl()
    getattr(cache, field).CopyFrom(Duration(seconds=seconds, nanos=nanos))
    unary = await status_of_ask(semcache, pb.AskRequest(prompt=QUESTION, model=MODEL, cache=cache))
    streamed = await status_of_stream(
        semcache, pb.AskStreamRequest(prompt=QUESTION, model=MODEL, cache=cache)
    )

    for status, details in (unary, streamed):
        assert status == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(f"cache.{field}: is not a valid Duration")
    assert ollama.call_count() == 0


@pytest.mark.asyncio
async def test_a_valid_duration_at_the_edge_of_its_nanos_is_taken(semcache: Running) -> None:
    cache = pb.CacheControl(
        ttl=Duration(seconds=1, nanos=999_999_999), max_age=Duration(seconds=0, nanos=999_999_999)
    )
    answer = await semcache.stub.Ask(
        pb.AskRequest(prompt=QUESTION, model=MODEL, cache=cache), timeout=DEADLINE
    )

    assert answer.stored
