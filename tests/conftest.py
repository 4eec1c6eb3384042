"""Fixtures: real Redis processes, the real local embedder, an Ollama-protocol server on loopback,
and a semcache service started on a free port, called through the generated aio stub."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from semcache.v1 import semcache_pb2_grpc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from semcache_server import app
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.verifiers import pair
from semcache_server.adapters.verifiers.pair import PairVerifier
from semcache_server.core.ports import Verifier
from semcache_server.settings import Settings
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess

PATIENCE = 30.0
"""Seconds a test waits for an event before it fails. It bounds a failure only: the event comes
in milliseconds, and no test asserts how long it took (speed is measured in bench/)."""

Observed = TypeVar("Observed")


async def until(
    observe: Callable[[], Awaitable[Observed]],
    holds: Callable[[Observed], bool],
    within: float = PATIENCE,
) -> Observed:
    """Observe until what it returns holds, and return that; past `within`, the last
    observation, for the test's assertion to show what it saw instead."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        seen = await observe()
        if holds(seen) or loop.time() > give_up:
            return seen
        await asyncio.sleep(0.02)


def llm_calls(ollama: FakeOllama) -> Callable[[], Awaitable[int]]:
    """An observation for until(): the chat requests the Ollama-protocol server has received
    (each is recorded as it arrives, before any reply)."""

    async def count() -> int:
        return ollama.call_count()

    return count


@pytest.fixture(scope="session", autouse=True)
def no_user_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never write into a user's state or config: the XDG folders semcache writes to point
    into the session's temporary folder, for this process and every server it starts (a test
    that left `state_dir` unset used to write index snapshots into ~/.local/state/semcache)."""
    base = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            patch.setenv(name, str(base / name.lower()))
        yield base


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    """Loaded once: building the model takes a second or two."""
    return LocalEmbedder.load()


@pytest.fixture(scope="session")
def verifier() -> Verifier | None:
    """The shipped pair verifier, loaded once; None in an install without its weights."""
    return PairVerifier.load() if pair.shipped() else None


@pytest.fixture(scope="session")
def ollama_server() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def ollama(ollama_server: FakeOllama) -> FakeOllama:
    ollama_server.reset()
    return ollama_server


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path / "redis").start()
    yield process
    process.stop()


@dataclass
class Running:
    """A started service and a stub to call it; restart() keeps Redis and the settings."""

    service: app.Service
    channel: grpc.aio.Channel
    stub: semcache_pb2_grpc.SemcacheServiceStub
    settings: Settings
    embedder: LocalEmbedder
    verifier: Verifier | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    async def stop(self) -> None:
        await self.channel.close()
        await self.service.stop(grace=None)

    async def restart(self) -> None:
        await self.stop()
        fresh = await start_service(self.settings, self.embedder, self.verifier)
        self.service, self.channel, self.stub = fresh.service, fresh.channel, fresh.stub


async def start_service(
    settings: Settings, embedder: LocalEmbedder, verifier: Verifier | None = None
) -> Running:
    service = await app.start(settings, embedder=embedder, verifier=verifier)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
    return Running(service, channel, stub, settings, embedder, verifier)


async def health_status(target: str, service: str = "") -> int:
    """What the standard health service reports for a name ("": the whole server)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        response = await stub.Check(request, timeout=5)
        return int(response.status)


async def health_becomes(target: str, service: str, status: int, seconds: float = 5.0) -> bool:
    """Whether a health name reports status within seconds."""
    deadline = asyncio.get_running_loop().time() + seconds
    while await health_status(target, service) != status:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def service_settings(redis: RedisProcess, ollama: FakeOllama, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "redis_url": redis.url,
        "ollama_host": ollama.url,
        "redis_timeout": 0.3,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def semcache(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    verifier: Verifier | None,
) -> AsyncIterator[Running]:
    running = await start_service(service_settings(redis_process, ollama), embedder, verifier)
    yield running
    await running.stop()
