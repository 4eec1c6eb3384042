"""Prometheus metrics, scraped over HTTP from a running service: calls by RPC, source and status,
stage timings, the nearest neighbour's similarity, LLM calls, tokens saved, entries, shed calls
and outages."""

from __future__ import annotations

import asyncio
import select
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.core.ports import Verifier
from semcache_server.edge.metrics import MAX_CONNECTIONS
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama, split_tokens
from semcache_server.testing.redis_process import RedisProcess, free_port
from semcache_server.testing.serve_process import ServeProcess

from tests.conftest import PATIENCE, Running, llm_calls, service_settings, start_service, until

MODEL = "llama3.2"
QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a Python list?"
UNRELATED = "What is the capital of France?"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def ask(prompt: str, **fields: object) -> pb.AskRequest:
    return build_request(pb.AskRequest, prompt, model=MODEL, **fields)  # type: ignore[arg-type]


def ask_stream(prompt: str) -> pb.AskStreamRequest:
    return build_request(pb.AskStreamRequest, prompt, model=MODEL)


def metrics_url(running: Running) -> str:
    return f"http://127.0.0.1:{running.service.metrics_port}/metrics"


def scrape_url(url: str) -> Samples:
    """Every sample the endpoint serves, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(running: Running) -> Samples:
    return await asyncio.to_thread(scrape_url, metrics_url(running))


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the endpoint does not serve it."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


@pytest_asyncio.fixture
async def observed(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> AsyncIterator[Running]:
    settings = service_settings(redis_process, ollama, metrics_port=free_port())
    running = await start_service(settings, embedder, verifier)
    yield running
    await running.stop()


async def mixed_run(running: Running) -> None:
    """An LLM answer, an exact hit (streamed), a semantic hit of a paraphrase, an unrelated
    miss, and an invalid request."""
    llm = await running.stub.Ask(ask(QUESTION), timeout=10)
    exact = [m async for m in running.stub.AskStream(ask_stream(QUESTION), timeout=10)]
    semantic = await running.stub.Ask(ask(PARAPHRASE), timeout=10)
    unrelated = await running.stub.Ask(ask(UNRELATED), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await running.stub.Ask(ask("   "), timeout=10)
    assert llm.source == pb.SOURCE_LLM and llm.stored
    assert exact[0].start.source == pb.SOURCE_EXACT
    assert semantic.source == pb.SOURCE_SEMANTIC
    assert unrelated.source == pb.SOURCE_LLM and unrelated.stored
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_calls_are_counted_by_rpc_source_and_status(observed: Running) -> None:
    await mixed_run(observed)
    samples = await scrape(observed)

    requests = "semcache_requests_total"
    assert value(samples, requests, rpc="Ask", source="llm", status="OK") == 2
    assert value(samples, requests, rpc="AskStream", source="exact", status="OK") == 1
    assert value(samples, requests, rpc="Ask", source="semantic", status="OK") == 1
    assert value(samples, requests, rpc="Ask", source="none", status="INVALID_ARGUMENT") == 1
    assert total(samples, requests) == 5
    duration = "semcache_request_duration_seconds_count"
    assert value(samples, duration, rpc="Ask", source="llm") == 2


@pytest.mark.asyncio
async def test_every_stage_and_the_nearest_similarity_have_observations(
    observed: Running,
) -> None:
    await mixed_run(observed)
    samples = await scrape(observed)

    stages = "semcache_stage_duration_seconds_count"
    for stage in ("exact_lookup", "embedding", "search", "verification"):
        assert value(samples, stages, stage=stage) >= 1, stage
    assert value(samples, stages, stage="exact_lookup") == 4  # the invalid call looks nothing up
    assert value(samples, stages, stage="llm_first_token") == 2
    assert value(samples, stages, stage="llm_total") == 2
    assert value(samples, "semcache_stage_duration_seconds_sum", stage="llm_total") > 0
    # The paraphrase's nearest neighbour was served; the unrelated prompt's was not (the first
    # question found an empty index, so nothing near).
    nearest = "semcache_nearest_similarity"
    assert value(samples, f"{nearest}_count", outcome="hit") == 1
    assert value(samples, f"{nearest}_sum", outcome="hit") > 0.95
    assert value(samples, f"{nearest}_count", outcome="miss") == 1
    assert value(samples, f"{nearest}_sum", outcome="miss") < 0.9


@pytest.mark.asyncio
async def test_llm_calls_tokens_saved_and_entries_are_counted(
    observed: Running, ollama: FakeOllama
) -> None:
    await mixed_run(observed)
    samples = await scrape(observed)

    tokens = len(split_tokens(ollama.reply_for(QUESTION)))
    generated = tokens + len(split_tokens(ollama.reply_for(UNRELATED)))
    assert value(samples, "semcache_llm_calls_total", outcome="completed") == 2
    assert total(samples, "semcache_llm_calls_total") == 2
    assert value(samples, "semcache_llm_completion_tokens_total") == generated
    assert value(samples, "semcache_tokens_saved_total") == 2 * tokens  # an exact, a semantic hit
    assert value(samples, "semcache_entries_stored_total") == 2
    assert value(samples, "semcache_index_entries") == 2
    assert value(samples, "semcache_redis_breaker_open") == 0


@pytest.mark.asyncio
async def test_a_shed_call_is_counted_as_resource_exhausted_and_by_resource(
    redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    settings = service_settings(
        redis_process, ollama, max_llm_calls=1, max_llm_queue=0, metrics_port=free_port()
    )
    running = await start_service(settings, embedder)
    try:
        ollama.hold()  # the first call keeps the one LLM slot until released
        slow = asyncio.ensure_future(running.stub.Ask(ask(QUESTION), timeout=2 * PATIENCE))
        try:
            assert await until(llm_calls(ollama), lambda calls: calls == 1) == 1
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await running.stub.Ask(ask(UNRELATED), timeout=10)
        finally:
            ollama.release()
        await slow
        samples = await scrape(running)
    finally:
        await running.stop()

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    requests = "semcache_requests_total"
    assert value(samples, requests, rpc="Ask", source="none", status="RESOURCE_EXHAUSTED") == 1
    assert value(samples, "semcache_shed_total", resource="llm_calls") == 1
    assert value(samples, "semcache_shed_total", resource="embeddings") == 0


@pytest.mark.asyncio
async def test_outages_of_redis_and_ollama_are_counted(
    observed: Running, ollama: FakeOllama, redis_process: RedisProcess
) -> None:
    ollama.behaviour = Behaviour(error_status=500)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await observed.stub.Ask(ask(QUESTION), timeout=10)
    ollama.behaviour = Behaviour()
    redis_process.stop()
    answered = await observed.stub.Ask(ask(UNRELATED), timeout=10)
    samples = await scrape(observed)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert answered.source == pb.SOURCE_LLM and not answered.stored
    assert value(samples, "semcache_llm_calls_total", outcome="unavailable") == 1
    requests = "semcache_requests_total"
    assert value(samples, requests, rpc="Ask", source="none", status="UNAVAILABLE") == 1
    assert value(samples, "semcache_redis_breaker_open") == 1
    assert value(samples, "semcache_redis_breaker_trips_total") == 1
    assert value(samples, "semcache_redis_failures_total") >= 1


@pytest.mark.asyncio
async def test_the_endpoint_serves_metrics_only_and_is_off_by_default(
    observed: Running, semcache: Running
) -> None:
    with pytest.raises(urllib.error.HTTPError) as missing:
        await asyncio.to_thread(
            urllib.request.urlopen, metrics_url(observed).replace("/metrics", "/other"), None, 5
        )
    assert missing.value.code == 404
    assert semcache.service.metrics_port == 0


def test_semcache_serve_serves_them_on_the_port_its_environment_names(
    tmp_path: Path, ollama: FakeOllama
) -> None:
    port = free_port()
    server = ServeProcess(
        tmp_path / "state", ollama.url, environment={"SEMCACHE_METRICS_PORT": str(port)}
    )
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            stub.Ask(ask(QUESTION), timeout=10)
            stub.Ask(ask(QUESTION), timeout=10)
        samples = scrape_url(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.terminate()

    requests = "semcache_requests_total"
    assert value(samples, requests, rpc="Ask", source="llm", status="OK") == 1
    assert value(samples, requests, rpc="Ask", source="exact", status="OK") == 1
    assert value(samples, "process_resident_memory_bytes") > 0


def closed_by_the_server(connection: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection within seconds (it never sends anything else)."""
    readable, _, _ = select.select([connection], [], [], seconds)
    if not readable:
        return False
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_past_the_cap_are_closed_and_scrapes_and_calls_go_on(
    tmp_path: Path, redis_process: RedisProcess, ollama: FakeOllama
) -> None:
    port = free_port()
    server = ServeProcess(
        tmp_path / "state",
        ollama.url,
        ["--redis-url", redis_process.url, "--metrics-port", str(port)],
    ).start()
    past_the_cap = 40
    idle: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS + past_the_cap):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # Connections are taken in order: once a scrape is answered, every idle one was seen.
        assert value(scrape_url(f"http://127.0.0.1:{port}/metrics"), "process_open_fds") > 0
        held = sum(
            1
            for connection in psutil.Process(server.pid).net_connections(kind="tcp")
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
        )
        assert held <= MAX_CONNECTIONS

        # The longest idle made room for the newer ones and for the scrape; the rest stay.
        made_room = past_the_cap + 1
        assert all(closed_by_the_server(c, seconds=10) for c in idle[:made_room])
        assert not any(closed_by_the_server(c, seconds=0) for c in idle[made_room:])

        with grpc.insecure_channel(server.target) as channel:
            stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            assert stub.Ask(ask(QUESTION), timeout=10).source == pb.SOURCE_LLM
    finally:
        for connection in idle:
            connection.close()
        code, output = server.terminate()
    assert code == 0 and "Traceback" not in output
