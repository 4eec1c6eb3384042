"""`semcache serve --workers 2`: two processes answer on one port from one Redis, stop together on
SIGTERM, and a worker that dies takes the others down (so an orchestrator restarts them all)."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess, free_port
from semcache_server.testing.serve_process import ServeProcess

from tests.test_ask import ask

PROMPT = "Which planet has the most moons?"


def stub_of(channel: grpc.Channel) -> pb_grpc.SemcacheServiceStub:
    return pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]


def workers_of(server: ServeProcess) -> list[psutil.Process]:
    return psutil.Process(server.pid).children()


def answered_calls(metrics_port: int, deadline: float) -> float:
    """The calls one worker answered, from its metrics; waits for its endpoint to come up."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, f"no metrics on {metrics_port}"
            time.sleep(0.2)
    counts = re.findall(r'^semcache_requests_total\{[^}]*status="OK"[^}]*\} (\S+)$', text, re.M)
    return sum(float(count) for count in counts)


@pytest.fixture
def two_workers(
    tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> Iterator[tuple[ServeProcess, int]]:
    metrics_port = free_port()
    while free_port() == metrics_port + 1:  # the second worker's port must be free too
        metrics_port = free_port()
    server = ServeProcess(
        tmp_path / "state",
        ollama_server.url,
        ["--workers", "2", "--redis-url", redis_process.url, "--metrics-port", str(metrics_port)],
    )
    server.start()
    yield server, metrics_port
    if server.running():
        server.terminate()


def test_two_workers_share_the_port_and_the_cache_and_stop_together(
    two_workers: tuple[ServeProcess, int],
) -> None:
    server, metrics_port = two_workers
    deadline = time.monotonic() + 60
    for port in (metrics_port, metrics_port + 1):
        answered_calls(port, deadline)  # both workers are up
    assert len(workers_of(server)) == 2

    # A subchannel pool of its own each: 16 connections, not one shared by 16 channels.
    local = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.target, options=local) for _ in range(16)]
    try:
        stored = stub_of(channels[0]).Ask(ask(PROMPT), timeout=20)
        assert stored.stored
        for channel in channels:
            answer = stub_of(channel).Ask(ask(PROMPT), timeout=20)
            assert answer.source == pb.SOURCE_EXACT and answer.entry_id == stored.entry_id
    finally:
        for channel in channels:
            channel.close()
    served = [answered_calls(port, deadline) for port in (metrics_port, metrics_port + 1)]
    assert sum(served) == 17 and min(served) >= 1  # the kernel spread the connections

    children = workers_of(server)
    started = time.monotonic()
    code, _ = server.terminate()
    assert code == 0 and time.monotonic() - started < 5 + 2  # --grace 5 s, and a margin
    assert not [child for child in children if child.is_running()]


def test_a_worker_that_dies_stops_the_others_and_the_launcher_fails(
    two_workers: tuple[ServeProcess, int],
) -> None:
    server, _ = two_workers
    first, second = workers_of(server)
    first.send_signal(signal.SIGKILL)
    assert server.process is not None
    assert server.process.wait(timeout=20) == 1
    psutil.wait_procs([second], timeout=5)
    assert not second.is_running()
