"""Processes for benchmarks: redis-server, the Ollama-protocol server and `semcache serve`, each
its own process, so the load generator never shares a GIL with the server it measures."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from semcache_server.testing.redis_process import RedisProcess, free_port
from semcache_server.testing.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
# Subjects for the prompts the benchmarks generate.
TOPICS = [
    "photosynthesis",
    "binary search",
    "the French revolution",
    "TCP congestion control",
    "compound interest",
    "black holes",
    "the immune system",
    "garbage collection",
    "inflation",
    "plate tectonics",
    "public key cryptography",
    "the water cycle",
    "neural networks",
    "supply and demand",
    "the Roman empire",
    "quantum entanglement",
    "DNA replication",
    "hash tables",
    "climate change",
    "the stock market",
    "vaccines",
    "relational databases",
    "the printing press",
    "volcanoes",
    "recursion",
    "jet engines",
    "the electoral college",
    "antibiotics",
    "continental drift",
    "Bayes' theorem",
]


def percentiles(samples_seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    values = np.asarray(samples_seconds, dtype=np.float64) * 1000
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
        "n": float(len(values)),
    }


def format_percentiles(name: str, stats: dict[str, float]) -> str:
    return (
        f"{name:<34} p50 {stats['p50_ms']:7.2f} ms   p90 {stats['p90_ms']:7.2f} ms   "
        f"p99 {stats['p99_ms']:7.2f} ms   (n={int(stats['n'])})"
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def terminate(process: subprocess.Popen[bytes] | subprocess.Popen[str], within: float) -> None:
    """SIGTERM, so a server shuts down as in production; SIGKILL if it takes longer than within."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def bare_relay(ollama_url: str) -> Iterator[str]:
    """bench.bare_relay in its own process; yields its gRPC target."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_relay", "--port", str(port), "--ollama", ollama_url],
        cwd=ROOT,
    )
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield target
    finally:
        terminate(process, within=10)


@dataclass
class FakeOllamaProcess:
    process: subprocess.Popen[bytes]
    url: str


@contextlib.contextmanager
def fake_ollama(
    token_delay: float = 0.0, first_token_delay: float = 0.0
) -> Iterator[FakeOllamaProcess]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "semcache_server.testing.ollama_protocol",
            "--port",
            str(port),
            "--token-delay",
            str(token_delay),
            "--first-token-delay",
            str(first_token_delay),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the Ollama-protocol server did not start") from None
            time.sleep(0.05)
    try:
        yield FakeOllamaProcess(process, url)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


@dataclass
class SemcacheProcess:
    server: ServeProcess
    redis: RedisProcess

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def target(self) -> str:
        return self.server.target


@contextlib.contextmanager
def semcache_server(ollama_url: str, *extra_args: str) -> Iterator[SemcacheProcess]:
    """`semcache serve` on a fresh redis-server, as a user would run it."""
    with tempfile.TemporaryDirectory(prefix="semcache-bench-") as scratch:
        redis = RedisProcess(Path(scratch) / "redis").start()
        server = ServeProcess(
            Path(scratch) / "state",
            ollama_url,
            ["--redis-url", redis.url, "--log-level", "WARNING", *extra_args],
            capture_output=False,
        )
        try:
            server.start()
            yield SemcacheProcess(server, redis)
        finally:
            if server.running():
                assert server.process is not None
                terminate(server.process, within=15)
            redis.stop()


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """`--json` prints JSON instead of the report; `--json PATH` writes it there and prints the
    report as well (args.json is "-", a path, or None)."""
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="print JSON instead of the report; with PATH, write it there and print the report",
    )
