"""The thin client alone: grpcio-testing's channel plays the server side of the sync stub."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client import SemcacheClient

SERVICE = pb.DESCRIPTOR.services_by_name["SemcacheService"]
ASK = SERVICE.methods_by_name["Ask"]
ASK_STREAM = SERVICE.methods_by_name["AskStream"]
T = TypeVar("T")


@pytest.fixture
def channel() -> Any:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def in_background(pool: ThreadPoolExecutor, call: Callable[[], T]) -> Future[T]:
    """The stub blocks until the test answers for the server, so it runs on another thread."""
    return pool.submit(call)


def test_ask_sends_only_the_fields_that_were_set_and_returns_the_response(
    channel: Any, pool: ThreadPoolExecutor
) -> None:
    client = SemcacheClient(channel=channel)
    future = in_background(
        pool,
        lambda: client.ask(
            "What is Redis?",
            model="llama3.2",
            system="Be brief.",
            temperature=0.0,
            history=[("user", "hi"), ("assistant", "hello")],
            threshold=0.0,
            skip_store=True,
        ),
    )
    _, request, rpc = channel.take_unary_unary(ASK)
    rpc.terminate(
        pb.AskResponse(text="An in-memory store.", source=pb.SOURCE_EXACT),
        (),
        grpc.StatusCode.OK,
        "",
    )
    response = future.result(timeout=5)

    assert request.prompt == "What is Redis?" and request.model == "llama3.2"
    assert request.system == "Be brief."
    assert request.options.HasField("temperature") and request.options.temperature == 0.0
    assert not request.options.HasField("top_p") and not request.options.HasField("max_tokens")
    assert [(turn.role, turn.content) for turn in request.history] == [
        (pb.ROLE_USER, "hi"),
        (pb.ROLE_ASSISTANT, "hello"),
    ]
    assert request.cache.HasField("similarity_threshold")
    assert request.cache.similarity_threshold == 0.0
    assert request.cache.skip_store and not request.cache.skip_lookup
    assert response.text == "An in-memory store." and response.source == pb.SOURCE_EXACT


def test_an_unset_threshold_is_absent_so_the_server_uses_its_policy(
    channel: Any, pool: ThreadPoolExecutor
) -> None:
    client = SemcacheClient(channel=channel)
    future = in_background(pool, lambda: client.ask("What is Redis?", model="llama3.2"))
    _, request, rpc = channel.take_unary_unary(ASK)
    rpc.terminate(pb.AskResponse(), (), grpc.StatusCode.OK, "")
    future.result(timeout=5)

    assert not request.cache.HasField("similarity_threshold")
    assert not request.options.HasField("temperature")


def test_client_and_call_metadata_are_both_sent(channel: Any, pool: ThreadPoolExecutor) -> None:
    client = SemcacheClient(channel=channel, metadata=[("x-api-key", "k1")])
    future = in_background(
        pool, lambda: client.ask("q", model="m", metadata=[("x-request-id", "r1")])
    )
    metadata, _, rpc = channel.take_unary_unary(ASK)
    rpc.terminate(pb.AskResponse(), (), grpc.StatusCode.OK, "")
    future.result(timeout=5)

    assert ("x-api-key", "k1") in metadata and ("x-request-id", "r1") in metadata


def test_a_server_error_reaches_the_caller_with_its_status_and_message(
    channel: Any, pool: ThreadPoolExecutor
) -> None:
    client = SemcacheClient(channel=channel)
    future = in_background(pool, lambda: client.ask("q", model="m"))
    _, _, rpc = channel.take_unary_unary(ASK)
    rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, "cannot reach Ollama at 127.0.0.1:11434")

    with pytest.raises(grpc.RpcError) as caught:
        future.result(timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:11434" in caught.value.details()


class _DeadlineRecorder(pb_grpc.SemcacheServiceServicer):
    """A real server (grpc_testing's channel ignores timeouts) that notes each call's deadline."""

    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []

    def Ask(self, request: pb.AskRequest, context: grpc.ServicerContext) -> pb.AskResponse:
        self.time_remaining.append(context.time_remaining())
        if request.prompt == "stall":
            while context.is_active():
                time.sleep(0.01)
        return pb.AskResponse(text="ok")


@pytest.fixture
def recorder() -> Iterator[tuple[_DeadlineRecorder, str]]:
    servicer = _DeadlineRecorder()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SemcacheServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_the_default_deadline_applies_and_a_call_timeout_overrides_it(
    recorder: tuple[_DeadlineRecorder, str],
) -> None:
    servicer, target = recorder
    with SemcacheClient(target, timeout=5.0) as client:
        client.ask("q", model="m")
        client.ask("q", model="m", timeout=30.0)

    default, overridden = servicer.time_remaining
    assert default is not None and 4.0 < default < 6.0
    assert overridden is not None and 29.0 < overridden < 31.0


def test_a_call_past_its_deadline_is_deadline_exceeded(
    recorder: tuple[_DeadlineRecorder, str],
) -> None:
    _, target = recorder
    with SemcacheClient(target, timeout=0.2) as client, pytest.raises(grpc.RpcError) as caught:
        client.ask("stall", model="m")
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_ask_stream_yields_start_deltas_and_end_in_order(
    channel: Any, pool: ThreadPoolExecutor
) -> None:
    client = SemcacheClient(channel=channel)
    received: list[pb.AskStreamResponse] = []
    done = threading.Event()

    def consume() -> None:
        received.extend(client.ask_stream("q", model="m", max_tokens=64))
        done.set()

    pool.submit(consume)
    _, request, rpc = channel.take_unary_stream(ASK_STREAM)
    sent = [
        pb.AskStreamResponse(start=pb.AskStreamStart(source=pb.SOURCE_LLM)),
        pb.AskStreamResponse(delta=pb.AskStreamDelta(text="Hel")),
        pb.AskStreamResponse(delta=pb.AskStreamDelta(text="lo")),
        pb.AskStreamResponse(end=pb.AskStreamEnd(stored=True)),
    ]
    for message in sent:
        rpc.send_response(message)
    rpc.terminate((), grpc.StatusCode.OK, "")

    assert done.wait(5)
    assert isinstance(request, pb.AskStreamRequest) and request.options.max_tokens == 64
    assert received == sent
