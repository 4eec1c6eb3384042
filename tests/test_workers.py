"""`semcache serve --workers 2`: two processes answer on one port from one Redis, stop together on
SIGTERM, and a worker that dies takes the others down (so an orchestrator restarts them all)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.test_ask import ask

PROMPT = "Which planet has the most moons?"


def stub_of(channel: grpc.Channel) -> pb_grpc.SemcacheServiceStub:
    return pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]


def workers_of(server: ServeProcess) -> list[psutil.Process]:
    return psutil.Process(server.pid).children()


def connections_to(worker: psutil.Process, port: int) -> int:
    """Established connections the worker accepted on the shared port."""
    return sum(
        1
        for connection in worker.net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
    )


@pytest.fixture
def two_workers(
    tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> Iterator[ServeProcess]:
    server = ServeProcess(
        tmp_path / "state", ollama_server.url, ["--workers", "2", "--redis-url", redis_process.url]
    )
    server.start()
    yield server
    if server.running():
        server.terminate()


def wait_until_serving(server: ServeProcess, workers: int, timeout: float = 60) -> None:
    """Until every worker listens on the port (start() returns once the first answers)."""
    deadline = time.monotonic() + timeout
    while True:
        listening = sum(
            any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
                for c in worker.net_connections(kind="tcp")
            )
            for worker in workers_of(server)
        )
        if listening == workers:
            return
        assert time.monotonic() < deadline, f"{listening} of {workers} workers listen"
        time.sleep(0.2)


def test_two_workers_share_the_port_and_the_cache_and_stop_together(
    two_workers: ServeProcess,
) -> None:
    server = two_workers
    wait_until_serving(server, 2)

    # A subchannel pool of its own each: 16 connections, not one shared by 16 channels.
    local = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.target, options=local) for _ in range(16)]
    try:
        stored = stub_of(channels[0]).Ask(ask(PROMPT), timeout=20)
        assert stored.stored
        for channel in channels:
            answer = stub_of(channel).Ask(ask(PROMPT), timeout=20)
            assert answer.source == pb.SOURCE_EXACT and answer.entry_id == stored.entry_id
        spread = [connections_to(worker, server.port) for worker in workers_of(server)]
    finally:
        for channel in channels:
            channel.close()
    assert sum(spread) == 16 and min(spread) >= 1  # the kernel spread the connections

    children = workers_of(server)
    code, _ = server.terminate()  # how soon is bench.shutdown's to measure
    assert code == 0
    assert not [child for child in children if child.is_running()]


def test_a_worker_that_dies_stops_the_others_and_the_launcher_fails(
    two_workers: ServeProcess,
) -> None:
    server = two_workers
    wait_until_serving(server, 2)
    first, second = workers_of(server)
    first.send_signal(signal.SIGKILL)
    assert server.process is not None
    assert server.process.wait(timeout=20) == 1
    psutil.wait_procs([second], timeout=5)
    assert not second.is_running()
