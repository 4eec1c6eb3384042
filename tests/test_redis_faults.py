"""Redis faults degrade the service instead of stopping the cache: a killed embedded Redis is
restarted, a killed semcache leaves no Redis behind, a paused Redis is skipped at once, and the
storage health name says when the cache works without Redis. Real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import psutil
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from semcache.v1 import semcache_pb2 as pb
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.edge.grpc.server import STORAGE_HEALTH_NAME
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.conftest import health_becomes, health_status, service_settings, start_service
from tests.test_ask import ask as request
from tests.test_replicas import ask

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def redis_servers_in(data_dir: Path) -> list[int]:
    """The redis-server processes working in data_dir, however they were started."""
    found = []
    for process in psutil.process_iter(["name", "cwd", "status"]):
        info = process.info
        if (
            "redis-server" in (info["name"] or "")
            and info["cwd"]
            and Path(info["cwd"]) == data_dir.resolve()
            and info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(process.pid)
    return found


def within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class HealthWatch:
    """Every status the server reports for a health name, as a balancer watching it sees them."""

    def __init__(self, target: str, service: str) -> None:
        self._channel = grpc.insecure_channel(target)
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.statuses: list[int] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self._call:
                self.statuses.append(response.status)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=5)
        self._channel.close()


@pytest.fixture
def short_temp_dir() -> Iterator[Path]:
    """A TMPDIR of the test's own (short: a unix socket path must be), to see what is left in it."""
    made = Path(tempfile.mkdtemp(prefix="sc"))
    yield made
    shutil.rmtree(made, ignore_errors=True)


def test_a_killed_embedded_redis_is_restarted_and_the_storage_health_name_says_so(
    tmp_path: Path, ollama: FakeOllama
) -> None:
    state = tmp_path / "state"
    served = ServeProcess(state, ollama.url).start()
    watches: list[HealthWatch] = []
    try:
        [killed] = redis_servers_in(state / "redis")
        storage, overall = (HealthWatch(served.target, name) for name in (STORAGE_HEALTH_NAME, ""))
        watches += [storage, overall]
        assert within(5, lambda: storage.statuses == [SERVING])

        os.kill(killed, signal.SIGKILL)
        question = "What does a circuit breaker do?"
        answers = [ask(served.target, question)]
        deadline = time.monotonic() + 10
        while not answers[-1].stored and time.monotonic() < deadline:
            time.sleep(0.1)
            answers.append(ask(served.target, question))
        again = ask(served.target, question)
        restarted = redis_servers_in(state / "redis")
        within(5, lambda: storage.statuses[-1:] == [SERVING])
    finally:
        for watch in watches:
            watch.close()
        _, output = served.terminate()

    assert answers[-1].stored, output
    assert again.source == pb.SOURCE_EXACT
    assert len(restarted) == 1 and restarted != [killed]
    assert storage.statuses[0] == SERVING and storage.statuses[-1] == SERVING, output
    assert NOT_SERVING in storage.statuses, storage.statuses
    assert overall.statuses == [SERVING]  # balancers keep sending calls meanwhile
    assert "restarting it" in output


def test_after_semcache_is_killed_its_next_start_keeps_the_entries_and_leaves_nothing_behind(
    tmp_path: Path, ollama: FakeOllama, short_temp_dir: Path
) -> None:
    """(A Redis that outlives its semcache anyway is stopped by the next start:
    test_embedded_redis.py.)"""
    state = tmp_path / "state"
    data_dir = state / "redis"
    served = ServeProcess(state, ollama.url, environment={"TMPDIR": str(short_temp_dir)})
    question = "What is an append-only file?"
    try:
        served.start()
        first = ask(served.target, question)
        [old] = redis_servers_in(data_dir)
        served.kill()
        gone_with_semcache = within(10, lambda: old not in redis_servers_in(data_dir))

        served.start()
        again = ask(served.target, question)
        while_serving = redis_servers_in(data_dir)
        code, output = served.terminate()
        after_stop = redis_servers_in(data_dir)
        # Directories only: onnxruntime leaves a file (.ses) in every TMPDIR it meets.
        left_in_temp = sorted(path.name for path in short_temp_dir.iterdir() if path.is_dir())
    finally:
        if served.running():
            served.kill()
        for pid in redis_servers_in(data_dir):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    assert first.stored
    assert gone_with_semcache  # it dies with its parent, even by SIGKILL
    assert again.source == pb.SOURCE_EXACT, output
    assert len(while_serving) == 1 and old not in while_serving
    assert code == 0, output
    assert after_stop == []
    assert left_in_temp == []


async def start_up_log(
    tmp_path: Path,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    caplog: pytest.LogCaptureFixture,
    redis_args: Sequence[str],
) -> list[logging.LogRecord]:
    """What semcache logs while it starts and stops on a Redis started with redis_args."""
    given = RedisProcess(tmp_path / "redis", extra_args=redis_args).start()
    try:
        with caplog.at_level(logging.INFO, logger="semcache_server"):
            settings = service_settings(given, ollama, state_dir=tmp_path / "state")
            running = await start_service(settings, embedder)
            await running.stop()
    finally:
        given.stop()
    return [record for record in caplog.records if record.name.startswith("semcache_server")]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("persistence", "level"),
    [
        ((), logging.WARNING),
        (("--save", "60 1"), logging.INFO),
        (("--appendonly", "yes"), None),
    ],
    ids=["nothing", "rdb-only", "aof"],
)
async def test_start_up_says_what_a_crash_of_the_given_redis_would_lose(
    tmp_path: Path,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    caplog: pytest.LogCaptureFixture,
    persistence: tuple[str, ...],
    level: int | None,
) -> None:
    records = await start_up_log(tmp_path, ollama, embedder, caplog, persistence)

    advice = {record.levelno for record in records if "Redis persists" in record.getMessage()}
    assert advice == ({level} if level is not None else set())


def seconds_of(duration: object) -> float:
    return float(duration.seconds + duration.nanos / 1e9)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_paused_redis_is_skipped_at_once_and_used_again_when_it_resumes(
    tmp_path: Path, redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> None:
    timeout = 1.0
    settings = service_settings(
        redis_process, ollama, redis_timeout=timeout, state_dir=tmp_path / "state"
    )
    running = await start_service(settings, embedder)
    try:
        os.kill(redis_process.pid, signal.SIGSTOP)
        try:
            during = [
                await running.stub.Ask(request(f"Paused question number {n}?"), timeout=60)
                for n in range(8)
            ]
            storage_during = await health_status(running.target, STORAGE_HEALTH_NAME)
            overall_during = await health_status(running.target, "")
        finally:
            os.kill(redis_process.pid, signal.SIGCONT)
        back = await health_becomes(running.target, STORAGE_HEALTH_NAME, SERVING)
        stored = await running.stub.Ask(request("Asked once Redis is back?"), timeout=10)
        exact = await running.stub.Ask(request("Asked once Redis is back?"), timeout=10)
        with redis.Redis.from_url(redis_process.url) as client:
            newest_change = int(client.get("semcache:v1:feed:seq") or 0)
        followed = False
        for _ in range(100):  # the change feed is followed again: it reaches the new answer
            if followed := running.service.replica.position.seq >= newest_change:
                break
            await asyncio.sleep(0.05)
    finally:
        await running.stop()

    # A call that waits for Redis waits its timeout; a call that skips it takes milliseconds.
    waited = [r for r in during if seconds_of(r.lookup_duration) >= timeout]
    assert all(r.source == pb.SOURCE_LLM and r.text and not r.stored for r in during)
    assert len(waited) <= 1, [seconds_of(r.lookup_duration) for r in during]
    assert storage_during == NOT_SERVING
    assert overall_during == SERVING
    assert back
    assert stored.stored and exact.source == pb.SOURCE_EXACT
    assert newest_change > 0 and followed
