"""One log line per call: its request id (the caller's x-request-id, or a new one, sent back in
the call's metadata), tenant, source, similarity, stage timings and status; JSON with
--log-format json; prompts only with --log-prompts."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.logs import FIELDS
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.conftest import Running, service_settings, start_service

MODEL = "llama3.2"
QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a Python list?"
KEY = "k3y-of-sixteen-plus-chars"
REQUESTS_LOGGER = "semcache_server.requests"


def ask(prompt: str) -> pb.AskRequest:
    return build_request(pb.AskRequest, prompt, model=MODEL)


def ask_stream(prompt: str) -> pb.AskStreamRequest:
    return build_request(pb.AskStreamRequest, prompt, model=MODEL)


def request_id_of(metadata: Any) -> str:
    ids = [value for key, value in metadata or () if key == "x-request-id"]
    assert len(ids) == 1, metadata
    return str(ids[0])


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of every request line logged so far."""
    return [
        dict(getattr(record, FIELDS))
        for record in caplog.records
        if record.name == REQUESTS_LOGGER and record.levelno == logging.INFO
    ]


@pytest.fixture
def served(tmp_path: Path, ollama: FakeOllama) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "state", ollama.url, ["--log-format", "json"])
    server.start()
    yield server
    if server.running():
        server.terminate()


def test_a_real_process_writes_one_json_line_a_call_with_no_prompt_in_it(
    served: ServeProcess,
) -> None:
    with grpc.insecure_channel(served.target) as channel:
        stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
        llm, call = stub.Ask.with_call(ask(QUESTION), metadata=(("x-request-id", "caller-7"),))
        ids = [request_id_of(call.trailing_metadata())]
        stream = stub.AskStream(ask_stream(QUESTION))
        ids.append(request_id_of(stream.initial_metadata()))
        exact = list(stream)
        assert request_id_of(stream.trailing_metadata()) == ids[-1]
        semantic, call = stub.Ask.with_call(ask(PARAPHRASE))
        ids.append(request_id_of(call.trailing_metadata()))
        with pytest.raises(grpc.RpcError) as invalid:
            stub.Ask(ask("   "))
        ids.append(request_id_of(invalid.value.trailing_metadata()))
    _, output = served.terminate()

    # Every line of semcache's own is JSON (gRPC's C core may print a line of its own).
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert not [line for line in output.splitlines() if "semcache" in line and line[:1] != "{"]
    requests = [line for line in lines if line["logger"] == REQUESTS_LOGGER]
    assert llm.source == pb.SOURCE_LLM and exact[0].start.source == pb.SOURCE_EXACT
    assert semantic.source == pb.SOURCE_SEMANTIC
    assert [line["request_id"] for line in requests] == ids
    assert ids[0] == "caller-7" and len(set(ids)) == 4
    assert [(line["rpc"], line["status"], line["source"]) for line in requests] == [
        ("Ask", "OK", "llm"),
        ("AskStream", "OK", "exact"),
        ("Ask", "OK", "semantic"),
        ("Ask", "INVALID_ARGUMENT", None),
    ]
    assert all(line["level"] == "INFO" and line["event"] == "request" for line in requests)
    assert all(line["tenant"] == "default" and line["duration_ms"] > 0 for line in requests)
    first, second, third, fourth = requests
    assert set(first["stages_ms"]) == {
        "exact_lookup",
        "embedding",
        "search",
        "llm_first_token",
        "llm_total",
    }
    assert first["similarity"] is None and first["stored"] is True
    assert second["similarity"] == 1.0 and set(second["stages_ms"]) == {"exact_lookup"}
    assert 0.95 < third["similarity"] < 1 and third["nearest_similarity"] == third["similarity"]
    assert {"embedding", "search", "verification"} <= set(third["stages_ms"])
    assert fourth["error"] == "prompt: must not be empty or blank"
    assert not [line for line in requests if "prompt" in line or "matched_prompt" in line]
    assert QUESTION not in output and PARAPHRASE not in output


@pytest.mark.asyncio
async def test_log_prompts_writes_the_prompt_and_the_matched_prompt(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = service_settings(redis_process, ollama, log_prompts=True)
    running = await start_service(settings, embedder)
    try:
        with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
            await running.stub.Ask(ask(QUESTION), timeout=10)
            await running.stub.Ask(ask(PARAPHRASE), timeout=10)
    finally:
        await running.stop()

    first, second = logged(caplog)
    assert first["prompt"] == QUESTION and "matched_prompt" not in first
    assert second["prompt"] == PARAPHRASE and second["matched_prompt"] == QUESTION


@pytest.mark.asyncio
async def test_the_text_line_says_the_same_without_the_prompt(
    semcache: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        await semcache.stub.Ask(ask(QUESTION), timeout=10)
    (record,) = [r for r in caplog.records if r.name == REQUESTS_LOGGER]
    message = record.getMessage()

    assert message.startswith("Ask OK request_id=")
    assert "tenant=default source=llm" in message
    assert re.search(r"stages_ms=exact_lookup:[0-9.]+,embedding:", message)
    assert QUESTION not in message


@pytest.mark.asyncio
async def test_a_request_id_is_taken_from_the_caller_bounded_or_made_and_sent_back(
    semcache: Running, caplog: pytest.LogCaptureFixture
) -> None:
    sent = ["trace-42", "a b;c<d>" + "e" * 100, ""]
    returned = []
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        for request_id in sent:
            metadata = (("x-request-id", request_id),) if request_id else ()
            call = semcache.stub.Ask(ask(QUESTION), metadata=metadata, timeout=10)
            await call
            returned.append(request_id_of(await call.trailing_metadata()))
        stream = semcache.stub.AskStream(ask_stream(QUESTION), timeout=10)
        returned.append(request_id_of(await stream.initial_metadata()))
        async for _ in stream:
            pass

    assert returned[0] == "trace-42"
    assert returned[1] == "abcd" + "e" * 60  # only [A-Za-z0-9._:-], at most 64 characters
    assert re.fullmatch(r"[0-9a-f]{32}", returned[2]) and re.fullmatch(r"[0-9a-f]{32}", returned[3])
    assert returned[2] != returned[3]
    assert [line["request_id"] for line in logged(caplog)] == returned


@pytest.mark.asyncio
async def test_unauthenticated_calls_are_logged_with_their_status_and_no_tenant(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"team-a:{KEY}\n")
    running = await start_service(
        service_settings(redis_process, ollama, api_keys_file=keys), embedder
    )
    try:
        with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in running.stub.AskStream(ask_stream(QUESTION), timeout=10):
                    pass
            await running.stub.Ask(
                ask(QUESTION), metadata=(("authorization", f"Bearer {KEY}"),), timeout=10
            )
    finally:
        await running.stop()

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    first, second = logged(caplog)
    assert (first["rpc"], first["status"], first["tenant"], first["source"]) == (
        "AskStream",
        "UNAUTHENTICATED",
        None,
        None,
    )
    assert (second["rpc"], second["status"], second["tenant"]) == ("Ask", "OK", "team-a")
    assert second["source"] == "llm"


@pytest.mark.asyncio
async def test_a_stream_the_caller_cancels_is_logged_as_cancelled(
    semcache: Running, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    ollama.behaviour = Behaviour(token_delay=0.2)
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        stream = semcache.stub.AskStream(ask_stream(QUESTION), timeout=10)
        first = await stream.read()
        stream.cancel()
        for _ in range(100):  # the server learns of it a moment later
            if logged(caplog):
                break
            await asyncio.sleep(0.05)

    assert first.start.source == pb.SOURCE_LLM
    (line,) = logged(caplog)
    assert (line["rpc"], line["status"], line["source"]) == ("AskStream", "CANCELLED", "llm")
