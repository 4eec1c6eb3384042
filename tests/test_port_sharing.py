"""One port, one server: a second `semcache serve` on a port in use is refused with one line that
names the port, whoever holds it, and the server already there keeps every connection. Only the
workers of one `semcache serve --workers N` share a port (tests/test_workers.py)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import SEMCACHE, ServeProcess, clean_environment

from tests.test_ask import ask
from tests.test_workers import wait_until_serving

STARTED = "serving on"
"""What a server that did start logs (`semcache serve`, and the --workers launcher)."""


def serve_until_it_exits(args: Sequence[str]) -> tuple[int, str]:
    """Run `semcache serve args` until it exits, and return its exit code and what it wrote on
    stderr. One that starts serving instead is stopped (SIGTERM: a launcher stops its workers)
    and fails the test."""
    process = subprocess.Popen(
        [SEMCACHE, "serve", *args],
        env=clean_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if STARTED in line:
            process.terminate()
            process.communicate(timeout=30)
            pytest.fail(f"semcache serve {' '.join(args)} started:\n{''.join(lines)}")
    return process.wait(timeout=30), "".join(lines)


def beside(state_dir: Path, port: int, redis: RedisProcess, ollama: FakeOllama) -> list[str]:
    """The arguments of a second server on port, with a state dir of its own."""
    return [
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
        "--redis-url",
        redis.url,
        "--ollama-host",
        ollama.url,
    ]


def assert_refused_naming(port: int, code: int, stderr: str) -> None:
    """A failing exit code and one line that names the port: no traceback, no log of its own."""
    assert code != 0
    assert len(stderr.splitlines()) == 1, stderr
    assert f":{port} is already in use" in stderr and f"--port {port}" in stderr


def answers(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
        return bool(stub.Ask(ask("Which planet has the most moons?"), timeout=20).text)


@pytest.fixture
def first(
    tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> Iterator[ServeProcess]:
    server = ServeProcess(
        tmp_path / "first", ollama_server.url, ["--redis-url", redis_process.url]
    ).start()
    yield server
    if server.running():
        server.terminate()


def test_a_second_serve_on_the_port_of_a_running_one_is_refused_and_the_first_keeps_it(
    first: ServeProcess, tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> None:
    code, stderr = serve_until_it_exits(
        beside(tmp_path / "second", first.port, redis_process, ollama_server)
    )
    assert_refused_naming(first.port, code, stderr)
    assert answers(first.target) and first.running()


def test_a_port_another_program_listens_on_is_refused_in_one_line(
    tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, stderr = serve_until_it_exits(
            beside(tmp_path / "state", port, redis_process, ollama_server)
        )
    assert_refused_naming(port, code, stderr)


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]], ids=["serve", "workers"])
def test_nothing_joins_the_port_of_running_workers(
    extra: list[str], tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> None:
    group = ServeProcess(
        tmp_path / "group",
        ollama_server.url,
        ["--workers", "2", "--redis-url", redis_process.url],
    ).start()
    try:
        wait_until_serving(group, 2)
        code, stderr = serve_until_it_exits(
            [*beside(tmp_path / "intruder", group.port, redis_process, ollama_server), *extra]
        )
        assert_refused_naming(group.port, code, stderr)
        assert answers(group.target) and group.running()
    finally:
        group.terminate()
