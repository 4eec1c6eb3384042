"""Latency of the cache's layers, measured through gRPC against a `semcache serve` process.

    .venv/bin/python -m bench.latency [--entries 2000] [--samples 500] [--json]

Prints p50/p90/p99 of an exact hit, a semantic hit, a miss answered by an Ollama-protocol server
on loopback, and of the local embedding alone (in this process), plus hit throughput with
concurrent callers. One run compares all of them on the same machine state.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from typing import Any

import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client import build_request

from bench.harness import (
    TOPICS,
    fake_ollama,
    format_percentiles,
    percentiles,
    rss_mb,
    semcache_server,
)

MODEL = "llama3.2"
TEMPLATES = [
    ("Explain {topic} briefly for a {level}.", "Briefly explain {topic} for a {level}."),
    (
        "What are the main ideas of {topic}, for a {level}?",
        "For a {level}, what are the main ideas of {topic}?",
    ),
]
LEVELS = [
    "child",
    "student",
    "beginner",
    "expert",
    "manager",
    "teacher",
    "nurse",
    "lawyer",
    "engineer",
    "retiree",
    "journalist",
    "chef",
    "pilot",
    "farmer",
    "musician",
]


def prompts(count: int) -> list[tuple[str, str]]:
    """(cached prompt, paraphrase) pairs, all distinct."""
    pairs = [
        (cached.format(topic=topic, level=level), paraphrase.format(topic=topic, level=level))
        for (cached, paraphrase), topic, level in itertools.product(TEMPLATES, TOPICS, LEVELS)
    ]
    if count > len(pairs):
        raise SystemExit(f"at most {len(pairs)} entries")
    return pairs[:count]


async def fill(stub: pb_grpc.SemcacheServiceStub, cached: list[str], concurrency: int = 8) -> None:
    queue = list(cached)

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            # Exact-only while filling, so that look-alike prompts each get their own entry.
            request = build_request(pb.AskRequest, prompt, model=MODEL, similarity_threshold=0.0)
            await stub.Ask(request, timeout=30)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def timed(
    stub: pb_grpc.SemcacheServiceStub, requests: list[pb.AskRequest], expect: int
) -> list[float]:
    """One call in flight: the latency a single caller sees."""
    durations = []
    for request in requests:
        started = time.perf_counter()
        response = await stub.Ask(request, timeout=30)
        durations.append(time.perf_counter() - started)
        if response.source != expect:
            raise SystemExit(
                f"expected source {expect}, got {response.source} for {request.prompt!r}"
            )
    return durations


async def throughput(
    stub: pb_grpc.SemcacheServiceStub,
    requests: list[pb.AskRequest],
    concurrency: int,
    seconds: float,
) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop_at:
            await stub.Ask(requests[i % len(requests)], timeout=30)
            done += 1
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.perf_counter() - started)


def embedding_latency(samples: int) -> list[float]:
    from semcache_server.adapters.embedders.minilm_onnx import MiniLMOnnxModel

    model = MiniLMOnnxModel.load()
    query = "How do I reverse the order of the words in a sentence using Python?"  # 12 words
    for _ in range(20):
        model.encode([query])
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        model.encode([query])
        durations.append(time.perf_counter() - started)
    return durations


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    pairs = prompts(args.entries)
    results: dict[str, Any] = {"entries": args.entries}
    with fake_ollama() as ollama, semcache_server(ollama.url) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            idle_rss = rss_mb(server.pid)
            fill_started = time.perf_counter()
            await fill(stub, [cached for cached, _ in pairs])
            results["fill_seconds"] = time.perf_counter() - fill_started
            exact = [build_request(pb.AskRequest, c, model=MODEL) for c, _ in pairs]
            semantic = [build_request(pb.AskRequest, p, model=MODEL) for _, p in pairs]
            misses = [
                build_request(
                    pb.AskRequest,
                    f"Tell me fact number {i} about {TOPICS[i % len(TOPICS)]}.",
                    model=MODEL,
                    skip_store=True,
                )
                for i in range(args.samples)
            ]
            for request in exact[:50]:  # warm-up
                await stub.Ask(request, timeout=30)
            # The policy rightly refuses some template paraphrases (gray zone): time only the
            # ones it accepts, and say how many that was.
            accepted = []
            for request in semantic:
                probe = pb.AskRequest()
                probe.CopyFrom(request)
                probe.cache.skip_store = True
                if (await stub.Ask(probe, timeout=30)).source == pb.SOURCE_SEMANTIC:
                    accepted.append(request)
            results["paraphrases accepted"] = f"{len(accepted)}/{len(semantic)}"
            semantic = accepted
            n = args.samples
            # Interleaved in rounds so that drift on a noisy machine hits every kind alike.
            samples: dict[str, list[float]] = {
                "exact hit": [],
                "semantic hit": [],
                "miss (LLM)": [],
            }
            for start in range(0, n, 50):
                end = min(start + 50, n)
                samples["exact hit"] += await timed(
                    stub, [exact[i % len(exact)] for i in range(start, end)], pb.SOURCE_EXACT
                )
                samples["semantic hit"] += await timed(
                    stub,
                    [semantic[i % len(semantic)] for i in range(start, end)],
                    pb.SOURCE_SEMANTIC,
                )
                samples["miss (LLM)"] += await timed(stub, misses[start:end], pb.SOURCE_LLM)
            for name, durations in samples.items():
                results[name] = percentiles(durations)
            results["exact hits/s (32 concurrent)"] = await throughput(
                stub, exact, 32, args.seconds
            )
            results["semantic hits/s (32 concurrent)"] = await throughput(
                stub, semantic, 32, args.seconds
            )
            results["server RSS MB idle"] = idle_rss
            results["server RSS MB filled"] = rss_mb(server.pid)
    results["local embedding (in-process)"] = percentiles(embedding_latency(args.samples))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=900, help="cached entries (<= 900)")
    parser.add_argument("--samples", type=int, default=500, help="timed calls of each kind")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of throughput runs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    results = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"semcache latency, {args.entries} entries, one call in flight, through gRPC on loopback")
    for name in ("exact hit", "semantic hit", "miss (LLM)", "local embedding (in-process)"):
        print(format_percentiles(name, results[name]))
    exact, semantic = results["exact hit"], results["semantic hit"]
    print(f"semantic / exact p50: {semantic['p50_ms'] / exact['p50_ms']:.1f}x")
    for name in ("exact hits/s (32 concurrent)", "semantic hits/s (32 concurrent)"):
        print(f"{name:<34} {results[name]:8.0f}")
    idle, filled = results["server RSS MB idle"], results["server RSS MB filled"]
    print(f"paraphrases the policy accepted: {results['paraphrases accepted']}")
    print(
        f"server RSS: {idle:.0f} MB idle, {filled:.0f} MB with {args.entries} entries; "
        f"filled in {results['fill_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
