"""Propagation between replicas: how long after replica A stores an answer is it a semantic hit
on replica B? Two real `semcache serve` processes share one real redis-server.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.replicas [--answers 100]

Each round stores a new question through A (a miss, answered by the Ollama-protocol server at
once), then asks B a variant of it (the question with a suffix, so it is not an exact hit) every
few milliseconds, with a per-request similarity threshold low enough that the variant hits as
soon as B's index holds the entry; a hit counts only when it names the entry A stored. The delay
runs from A's answer (the entry is stored before A answers) to B's first such hit. Each poll
costs B an embedding, so the resolution is about one embedding plus a round trip (~10 ms).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_client import build_request
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

MODEL = "llama3.2"
TOPICS = ("reverse a list", "parse a date", "open a file", "sort a dictionary", "read a CSV file")


def _ask(
    stub: semcache_pb2_grpc.SemcacheServiceStub, prompt: str, **control: object
) -> pb.AskResponse:
    request = build_request(pb.AskRequest, prompt, model=MODEL, **control)  # type: ignore[arg-type]
    response: pb.AskResponse = stub.Ask(request, timeout=10)
    return response


def measure(answers: int, timeout: float) -> list[float]:
    """Seconds from A's stored answer to B's semantic hit on it, one a round."""
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as scratch, FakeOllama() as ollama:
        root = Path(scratch)
        redis = RedisProcess(root / "redis").start()
        replicas = [
            ServeProcess(root / name, ollama.url, ["--redis-url", redis.url]).start()
            for name in ("a", "b")
        ]
        try:
            with (
                grpc.insecure_channel(replicas[0].target) as to_a,
                grpc.insecure_channel(replicas[1].target) as to_b,
            ):
                writer = semcache_pb2_grpc.SemcacheServiceStub(to_a)  # type: ignore[no-untyped-call]
                reader = semcache_pb2_grpc.SemcacheServiceStub(to_b)  # type: ignore[no-untyped-call]
                for round_number in range(answers):
                    topic = TOPICS[round_number % len(TOPICS)]
                    question = f"How do I {topic} in language number {round_number}?"
                    stored = _ask(writer, question)
                    written = time.perf_counter()
                    while True:
                        seen = _ask(reader, question + " Thanks!", skip_store=True, threshold=0.5)
                        elapsed = time.perf_counter() - written
                        if seen.source == pb.SOURCE_SEMANTIC and seen.entry_id == stored.entry_id:
                            delays.append(elapsed)
                            break
                        if elapsed > timeout:
                            delays.append(float("inf"))
                            break
                        time.sleep(0.002)
        finally:
            for replica in replicas:
                replica.terminate()
            redis.stop()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a round fails")
    args = parser.parse_args()
    delays = np.asarray(measure(args.answers, args.timeout)) * 1000
    finite = delays[np.isfinite(delays)]
    p50, p99 = np.percentile(finite, [50, 99]) if finite.size else (np.inf, np.inf)
    print(f"propagation A -> B over {len(delays)} answers ({len(delays) - finite.size} never seen)")
    print("| p50 ms | p99 ms | max ms | goal p99 |")
    print("|---|---|---|---|")
    verdict = "PASS" if p99 <= 1000 and finite.size == delays.size else "FAIL"
    worst = finite.max() if finite.size else np.inf
    print(f"| {p50:.1f} | {p99:.1f} | {worst:.1f} | ≤ 1000 ms {verdict} |")


if __name__ == "__main__":
    main()
