"""Latency and throughput of the cache's layers, through gRPC against `semcache serve` processes.

    .venv/bin/python -m bench.latency [--entries 900] [--samples 300] [--seconds 5]
        [--concurrency 1,32,256] [--overload 5000] [--no-gptcache] [--only gptcache]
        [--json [PATH]]

One command, one run, so every figure shares the machine's state (issue #11):

1. One call in flight: p50/p90/p99 of the floor (a `grpc.health.v1.Health/Check` round trip on
   the same server and channel, the least any call through this gRPC stack costs), an exact hit,
   a semantic hit and a miss answered at once by an Ollama-protocol server on loopback, timed in
   interleaved rounds so drift on a noisy machine hits every kind alike; and the bare embedding
   of one prompt in this process (`MiniLMOnnxModel.encode`), after the servers have stopped.
2. Each kind at every `--concurrency` level above 1: that many worker coroutines in a closed loop
   for `--seconds`, one channel (its own HTTP/2 connection) per 32 workers; p50, p99, calls/s,
   failures by status code, and the CPU used by this client, the server and the whole machine.
   Level 1 is the interleaved rounds (its calls/s is 1 / mean latency).
3. The goals of issue #11, each with PASS/FAIL: exact hit against the floor, semantic hit against
   the bare embedding, hits/s at 32 callers.
4. A mixed run: 256 callers, 50% exact hits, 25% semantic hits, 25% misses, for `--seconds`.
5. Overload (`--overload N`, 0 skips it; `--only overload` runs it alone): a second `semcache
   serve` with small LLM bounds and a slow Ollama-protocol server gets N concurrent distinct
   misses over `--overload-channels` channels (one by default: one client's burst), while a few
   workers in another process, on their own connection, keep asking one stored exact hit; the
   misses' final status codes are tallied, with the exact hits' latencies meanwhile.
6. GPTCache side by side (`--no-gptcache` skips it): bench.gptcache_side, in its own environment
   (`.venv-gptcache/`, made by `bench/gptcache_env.sh`; skipped with a note when absent), stores
   the same entries and answers in GPTCache (SQLite + FAISS, the same MiniLM embedder) and times
   its in-process `get` on the very lookups of step 1's exact and semantic hits, one at a time;
   p50/p99 of both and the ratio against issue #11's goal (GPTCache >= 3x semcache's latency).
   `--only gptcache` runs step 1 and this alone (a minute or two).

Misses use `skip_store` and distinct prompts, so they stay misses. Without `--json` a markdown
report is printed; `--json` prints every figure as JSON instead, and `--json PATH` writes the JSON
to PATH and prints the report as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client import build_request

from bench.harness import (
    ROOT,
    TOPICS,
    add_json_option,
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

FLOOR = "floor (health check)"
EXACT = "exact hit"
SEMANTIC = "semantic hit"
MISS = "miss (LLM)"
EMBEDDING = "local embedding (in-process)"
KINDS = (FLOOR, EXACT, SEMANTIC, MISS)
MIX = (EXACT, EXACT, SEMANTIC, MISS)
"""The mixed run's calls in turn: 50% exact hits, 25% semantic hits, 25% misses."""
MIXED_CALLERS = 256
WORKERS_PER_CHANNEL = 32
"""One HTTP/2 connection per 32 callers, so a single connection is not the only bottleneck."""
CONNECTIONS_PER_SERVER_WORKER = 4
"""With `--server-workers N`, at least 4N connections, so the kernel has some to spread."""
CALL_TIMEOUT = 30.0
ROUND = 50
"""Calls of one kind in a row in the interleaved rounds."""

OVERLOAD_FIRST_TOKEN_DELAY = 2.0
"""A slow LLM, so LLM slots stay taken and the queue in front of them fills."""
OVERLOAD_FLAGS = ("--max-llm-calls", "64", "--max-llm-queue", "256")
OVERLOAD_DEADLINE = 10.0
OVERLOAD_CHANNELS = 1
"""The misses share one channel, as one client's burst does: thousands of streams on one
connection."""
OVERLOAD_HIT_WORKERS = 4
"""Exact-hit callers, in another process (a client loop busy with the burst would delay them
by itself) on a connection of their own."""
HITTER_START_SECONDS = 3.0
OVERLOAD_MAX_GAP = 1.0
"""Exact hits count as served throughout when none failed and none waited longer than this
after the one before."""
ACCEPTED_CODES = ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
REPORTED_CODES = (*ACCEPTED_CODES, "CANCELLED", "other")

# The goals of issue #11.
EXACT_P50_OVER_FLOOR = 1.3
EXACT_P99_OVER_FLOOR = 2.0
EXACT_PER_SECOND_AT_32 = 2500.0
SEMANTIC_OVER_EMBEDDING_MS = 1.0
SEMANTIC_PER_SECOND_AT_32 = 400.0
MIXED_EXACT_P99_MS = 5.0
GOAL_CONCURRENCY = 32
GPTCACHE_OVER_SEMCACHE = 3.0

GPTCACHE_VENV = ROOT / ".venv-gptcache"
GPTCACHE = "gptcache"
OVERLOAD = "overload"
GPTCACHE_KINDS = (EXACT, SEMANTIC)
GPTCACHE_GET = "get"
"""bench.gptcache_side's ways of timing a lookup, in the order reported, with what each includes."""
GPTCACHE_WAYS = {
    GPTCACHE_GET: "GPTCache `get` (embeds; default Config)",
    "get, report off": "GPTCache `get`, `disable_report=True` (embeds)",
    "get, embedding precomputed": "GPTCache `get`, embedding precomputed",
    "embedding": "MiniLM embedding alone, in GPTCache's process",
}
SEMCACHE_INCLUDES = {
    EXACT: "semcache `Ask` through gRPC (no embedding)",
    SEMANTIC: "semcache `Ask` through gRPC (embeds)",
}

SEPARATE_CONNECTIONS = [("grpc.use_local_subchannel_pool", 1)]
"""Without it, channels to one target with the same options share one connection."""

Call = Callable[[int, int], Awaitable[None]]
"""One timed call: (worker, call number) -> None; raises on a wrong answer."""


class WrongAnswer(Exception):
    """A call that succeeded but did not answer as its kind should (e.g. a miss served a hit)."""


def prompts(count: int) -> list[tuple[str, str]]:
    """(cached prompt, paraphrase) pairs, all distinct."""
    pairs = [
        (cached.format(topic=topic, level=level), paraphrase.format(topic=topic, level=level))
        for (cached, paraphrase), topic, level in itertools.product(TEMPLATES, TOPICS, LEVELS)
    ]
    if count > len(pairs):
        raise SystemExit(f"at most {len(pairs)} entries")
    return pairs[:count]


def miss_requests(tag: str) -> Iterator[pb.AskRequest]:
    """Endless distinct prompts far from every cached one, not stored: each stays a miss."""
    for i in itertools.count():
        prompt = f"Tell me {tag} fact number {i} about {TOPICS[i % len(TOPICS)]}."
        yield build_request(pb.AskRequest, prompt, model=MODEL, skip_store=True)


async def fill(
    stub: pb_grpc.SemcacheServiceStub, cached: list[str], concurrency: int = 8
) -> dict[str, str]:
    """Stores each prompt's answer; returns them by prompt (GPTCache's side stores the same)."""
    queue = list(cached)
    answers: dict[str, str] = {}

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            # Exact-only while filling, so that look-alike prompts each get their own entry.
            request = build_request(pb.AskRequest, prompt, model=MODEL, threshold=0.0)
            answers[prompt] = (await stub.Ask(request, timeout=CALL_TIMEOUT)).text

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def open_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """Channels that each open their own connection."""
    return [grpc.aio.insecure_channel(target, options=SEPARATE_CONNECTIONS) for _ in range(count)]


def channels_for(workers: int, minimum: int = 1) -> int:
    return max(math.ceil(workers / WORKERS_PER_CHANNEL), minimum)


def health_call(channels: Sequence[grpc.aio.Channel]) -> Call:
    stubs = [health_pb2_grpc.HealthStub(channel) for channel in channels]
    request = health_pb2.HealthCheckRequest()

    async def call(worker: int, number: int) -> None:
        response = await stubs[worker % len(stubs)].Check(request, timeout=CALL_TIMEOUT)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise WrongAnswer("not SERVING")

    return call


def ask_call(
    channels: Sequence[grpc.aio.Channel],
    request_for: Callable[[int], pb.AskRequest],
    expect: pb.Source,
) -> Call:
    stubs = [pb_grpc.SemcacheServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]

    async def call(worker: int, number: int) -> None:
        request = request_for(number)
        response = await stubs[worker % len(stubs)].Ask(request, timeout=CALL_TIMEOUT)
        if response.source != expect:
            raise WrongAnswer(f"source {pb.Source.Name(response.source)}")

    return call


@dataclass
class Workload:
    """The requests of each kind; calls() binds them to a set of channels."""

    exact: list[pb.AskRequest]
    semantic: list[pb.AskRequest]
    misses: Iterator[pb.AskRequest]

    def calls(self, channels: Sequence[grpc.aio.Channel]) -> dict[str, Call]:
        return {
            FLOOR: health_call(channels),
            EXACT: ask_call(channels, lambda i: self.exact[i % len(self.exact)], pb.SOURCE_EXACT),
            SEMANTIC: ask_call(
                channels, lambda i: self.semantic[i % len(self.semantic)], pb.SOURCE_SEMANTIC
            ),
            MISS: ask_call(channels, lambda i: next(self.misses), pb.SOURCE_LLM),
        }


@dataclass
class Lookups:
    """What semcache stored and was timed on one call at a time, for GPTCache's side: the
    (prompt, answer) entries and, by kind, the (prompt, expected answer) of each timed call."""

    entries: list[tuple[str, str]]
    by_kind: dict[str, list[tuple[str, str]]]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its live children (`--workers`), from /proc."""
    total = 0.0
    for process in server_processes(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_processes(pid: int) -> list[int]:
    """The server and, with `--workers`, its worker processes."""
    with contextlib.suppress(psutil.Error):
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    return [pid]


def server_rss_mb(pid: int) -> float:
    return sum(rss_mb(process) for process in server_processes(pid))


def children_cpu_seconds() -> float:
    """User plus system CPU time of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time spent on anything but idle and I/O wait, over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU used while a run lasts, in % of one core: shows which side ran out on a small box."""

    server_pid: int
    started: float = field(default_factory=time.perf_counter)
    client: float = field(default_factory=time.process_time)
    server: float = 0.0
    machine: float = field(default_factory=machine_busy_seconds)

    def __post_init__(self) -> None:
        self.server = cpu_seconds(self.server_pid)

    def read(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        return {
            "client_cpu_pct": 100 * (time.process_time() - self.client) / elapsed,
            "server_cpu_pct": 100 * (cpu_seconds(self.server_pid) - self.server) / elapsed,
            "machine_cpu_pct": 100 * (machine_busy_seconds() - self.machine) / elapsed,
        }


@dataclass
class Tally:
    """Latencies of the calls that succeeded, and the failures by status code, per kind."""

    durations: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, Counter[str]] = field(default_factory=dict)

    async def time(self, kind: str, call: Call, worker: int, number: int) -> None:
        durations = self.durations.setdefault(kind, [])
        failures = self.failures.setdefault(kind, Counter())
        started = time.perf_counter()
        try:
            await call(worker, number)
        except grpc.aio.AioRpcError as error:
            failures[error.code().name] += 1
            return
        except WrongAnswer as error:
            failures[str(error)] += 1
            return
        durations.append(time.perf_counter() - started)

    def summary(self, kind: str, seconds: float) -> dict[str, Any]:
        durations = self.durations.get(kind, [])
        return {
            **(percentiles(durations) if durations else {"n": 0.0}),
            "calls_per_s": len(durations) / seconds,
            "failures": dict(self.failures.get(kind, Counter())),
        }


async def rounds(calls: dict[str, Call], samples: int) -> dict[str, Any]:
    """One call in flight, kinds interleaved in rounds so drift hits every kind alike."""
    tally = Tally()
    for start in range(0, samples, ROUND):
        for kind, call in calls.items():
            for number in range(start, min(start + ROUND, samples)):
                await tally.time(kind, call, 0, number)
    results = {}
    for kind in calls:
        busy = sum(tally.durations.get(kind, []))
        results[kind] = tally.summary(kind, busy) if busy else tally.summary(kind, 1.0)
        results[kind]["workers"] = 1
        results[kind]["channels"] = 1
    return results


async def closed_loop(
    calls: dict[str, Call],
    mix: Sequence[str],
    workers: int,
    seconds: float,
    server_pid: int,
) -> dict[str, Any]:
    """workers coroutines, each starting its next call when the last returns, for seconds; the
    calls take their kinds from mix in turn."""
    tally = Tally()
    numbers = itertools.count()
    meter = CpuMeter(server_pid)
    stop_at = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        while time.perf_counter() < stop_at:
            number = next(numbers)
            kind = mix[number % len(mix)]
            await tally.time(kind, calls[kind], index, number)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(workers)))
    elapsed = time.perf_counter() - started
    cpu = meter.read()
    results = {}
    for kind in tally.durations:
        results[kind] = {**tally.summary(kind, elapsed), **cpu, "workers": workers}
    return results


async def accepted_paraphrases(
    stub: pb_grpc.SemcacheServiceStub, semantic: list[pb.AskRequest]
) -> list[pb.AskRequest]:
    """The policy rightly refuses some template paraphrases (gray zone): time only the ones it
    accepts, and say how many that was."""
    accepted = []
    for request in semantic:
        probe = pb.AskRequest()
        probe.CopyFrom(request)
        probe.cache.skip_store = True
        if (await stub.Ask(probe, timeout=CALL_TIMEOUT)).source == pb.SOURCE_SEMANTIC:
            accepted.append(request)
    return accepted


async def measure_cache(args: argparse.Namespace) -> tuple[dict[str, Any], Lookups]:
    """Everything but the overload run, on one server whose LLM answers at once; with `--only
    gptcache`, the interleaved rounds alone."""
    pairs = prompts(args.entries)
    levels = sorted(set(args.concurrency) | {1})
    workers = args.server_workers
    # The kernel spreads connections, not calls, over workers on one port (SO_REUSEPORT).
    least = CONNECTIONS_PER_SERVER_WORKER * workers if workers > 1 else 1
    most_channels = max(channels_for(max(levels), least), channels_for(MIXED_CALLERS, least))
    results: dict[str, Any] = {
        "entries": args.entries,
        "cpu_cores": os.cpu_count(),
        "server_workers": workers,
    }
    extra = ("--workers", str(workers)) if workers > 1 else ()
    with fake_ollama() as ollama, semcache_server(ollama.url, *extra) as server:
        channels = open_channels(server.target, most_channels)
        try:
            for channel in channels:
                await asyncio.wait_for(channel.channel_ready(), timeout=30)
            stub = pb_grpc.SemcacheServiceStub(channels[0])  # type: ignore[no-untyped-call]
            idle_rss = server_rss_mb(server.pid)
            fill_started = time.perf_counter()
            answers = await fill(stub, [cached for cached, _ in pairs])
            results["fill_seconds"] = time.perf_counter() - fill_started
            exact = [build_request(pb.AskRequest, c, model=MODEL) for c, _ in pairs]
            semantic = [build_request(pb.AskRequest, p, model=MODEL) for _, p in pairs]
            for request in exact[:50]:  # warm-up
                await stub.Ask(request, timeout=CALL_TIMEOUT)
            accepted = await accepted_paraphrases(stub, semantic)
            results["paraphrases accepted"] = f"{len(accepted)}/{len(semantic)}"
            if not accepted:
                raise SystemExit("the policy accepted no paraphrase: no semantic hits to time")
            workload = Workload(exact, accepted, miss_requests("bench"))
            by_level: dict[str, dict[str, Any]] = {}
            single = await rounds(workload.calls(channels[:1]), args.samples)
            by_level["1"] = single
            # The prompts the rounds asked, in order (ask_call's request_for(number) above).
            cached_for = {paraphrase: cached for cached, paraphrase in pairs}
            lookups = Lookups(
                entries=[(cached, answers[cached]) for cached, _ in pairs],
                by_kind={
                    EXACT: [
                        (r.prompt, answers[r.prompt])
                        for r in (exact[i % len(exact)] for i in range(args.samples))
                    ],
                    SEMANTIC: [
                        (r.prompt, answers[cached_for[r.prompt]])
                        for r in (accepted[i % len(accepted)] for i in range(args.samples))
                    ],
                },
            )
            for level in levels:
                if level == 1 or args.only == GPTCACHE:
                    continue
                calls = workload.calls(channels[: channels_for(level, least)])
                by_level[str(level)] = {}
                for kind in KINDS:
                    run = await closed_loop(calls, (kind,), level, args.seconds, server.pid)
                    by_level[str(level)][kind] = {
                        **run[kind],
                        "channels": channels_for(level, least),
                    }
            results["levels"] = by_level
            if args.only != GPTCACHE:
                mixed_channels = channels_for(MIXED_CALLERS, least)
                results["mixed"] = await closed_loop(
                    workload.calls(channels[:mixed_channels]),
                    MIX,
                    MIXED_CALLERS,
                    args.seconds,
                    server.pid,
                )
                results["mixed_channels"] = mixed_channels
            results["server RSS MB idle"] = idle_rss
            results["server RSS MB filled"] = server_rss_mb(server.pid)
        finally:
            for channel in channels:
                await channel.close()
    for kind in (EXACT, SEMANTIC, MISS):  # the figures this benchmark has always printed
        results[kind] = single[kind]
    for kind in (EXACT, SEMANTIC):
        key = f"{kind}s/s ({GOAL_CONCURRENCY} concurrent)"
        at_goal = results["levels"].get(str(GOAL_CONCURRENCY), {}).get(kind)
        results[key] = at_goal["calls_per_s"] if at_goal else None
    return results, lookups


def setting_named(message: str) -> str:
    """The command-line setting a RESOURCE_EXHAUSTED message names, or the message itself."""
    found = re.findall(r"--[a-z][a-z-]+", message)
    return ", ".join(found) if found else message


def exact_hits_meanwhile(
    target: str, request: bytes, stop: Any, results: Any, workers: int
) -> None:
    """In a process of its own: workers ask one stored exact hit until stop is set, then put
    (finish times, latencies, failures by kind, examples) on results."""

    async def run() -> None:
        stored = pb.AskRequest.FromString(request)
        finished: list[float] = []
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        examples: dict[str, str] = {}
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]

            async def worker() -> None:
                while not stop.is_set():
                    started = time.time()
                    try:
                        response = await stub.Ask(stored, timeout=CALL_TIMEOUT)
                    except grpc.aio.AioRpcError as error:
                        failures[error.code().name] += 1
                        examples.setdefault(f"exact hit {error.code().name}", error.details() or "")
                        continue
                    if response.source != pb.SOURCE_EXACT:
                        failures[f"source {pb.Source.Name(response.source)}"] += 1
                        continue
                    finished.append(time.time())
                    latencies.append(finished[-1] - started)

            await asyncio.gather(*(worker() for _ in range(workers)))
        results.put((finished, latencies, dict(failures), examples))

    asyncio.run(run())


async def overload(count: int, channels: int = OVERLOAD_CHANNELS) -> dict[str, Any]:
    """count concurrent distinct misses against small LLM bounds and a slow LLM, while a few
    workers in another process, on their own connection, keep asking one stored exact hit."""
    outcomes: dict[str, list[float]] = {code: [] for code in REPORTED_CODES}
    other_codes: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    examples: dict[str, str] = {}
    shared = 0
    slow = fake_ollama(first_token_delay=OVERLOAD_FIRST_TOKEN_DELAY)
    spawn = multiprocessing.get_context("spawn")
    with slow as ollama, semcache_server(ollama.url, *OVERLOAD_FLAGS) as server:
        miss_channels = open_channels(server.target, channels)
        try:
            for channel in miss_channels:
                await asyncio.wait_for(channel.channel_ready(), timeout=30)
            miss_stubs = [pb_grpc.SemcacheServiceStub(c) for c in miss_channels]  # type: ignore[no-untyped-call]
            stored = build_request(pb.AskRequest, "What is the capital of France?", model=MODEL)
            await miss_stubs[0].Ask(stored, timeout=CALL_TIMEOUT)  # the warm-up call
            if (await miss_stubs[0].Ask(stored, timeout=CALL_TIMEOUT)).source != pb.SOURCE_EXACT:
                raise SystemExit("overload: the stored answer is not an exact hit")
            requests = list(itertools.islice(miss_requests("overload"), count))
            stop, hit_results = spawn.Event(), spawn.Queue()
            hitter = spawn.Process(
                target=exact_hits_meanwhile,
                args=(
                    server.target,
                    stored.SerializeToString(),
                    stop,
                    hit_results,
                    OVERLOAD_HIT_WORKERS,
                ),
            )
            hitter.start()

            async def miss(index: int) -> None:
                nonlocal shared
                started = time.perf_counter()
                try:
                    response = await miss_stubs[index % len(miss_stubs)].Ask(
                        requests[index], timeout=OVERLOAD_DEADLINE
                    )
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                    if code == "RESOURCE_EXHAUSTED":
                        named = setting_named(error.details() or "")
                        refusals[named] += 1
                        examples.setdefault(named, error.details() or "")
                    elif code != "DEADLINE_EXCEEDED":
                        examples.setdefault(code, error.details() or "")
                    if code not in outcomes:
                        other_codes[code] += 1
                        code = "other"
                    outcomes[code].append(time.perf_counter() - started)
                    return
                outcomes["OK"].append(time.perf_counter() - started)
                shared += response.shared_llm_call

            await asyncio.sleep(HITTER_START_SECONDS)  # its interpreter and channel start
            started_wall = time.time()
            started = time.perf_counter()
            await asyncio.gather(*(miss(index) for index in range(count)))
            elapsed = time.perf_counter() - started
            stop.set()
            finished, hits, hit_failures, hit_examples = await asyncio.to_thread(
                hit_results.get, True, 60
            )
            await asyncio.to_thread(hitter.join, 30)
            examples.update(hit_examples)
        finally:
            for channel in miss_channels:
                await channel.close()
    during = [t for t in finished if started_wall <= t <= started_wall + elapsed]
    ends = [started_wall, *during, started_wall + elapsed]
    gaps = [(b - a, a) for a, b in itertools.pairwise(sorted(ends))]
    longest_gap, gap_began = max(gaps)
    hits_during = [
        latency
        for t, latency in zip(finished, hits, strict=True)
        if started_wall <= t <= started_wall + elapsed
    ]
    return {
        "misses": count,
        "flags": " ".join(OVERLOAD_FLAGS),
        "first_token_delay_s": OVERLOAD_FIRST_TOKEN_DELAY,
        "deadline_s": OVERLOAD_DEADLINE,
        "miss_channels": len(miss_channels),
        "seconds": elapsed,
        "outcomes": {
            code: {"count": len(durations), **(percentiles(durations) if durations else {})}
            for code, durations in outcomes.items()
        },
        "other_codes": dict(other_codes),
        "refused_by": dict(refusals),
        "examples": examples,
        "shared_llm_calls": shared,
        "exact_hits": {
            **(percentiles(hits_during) if hits_during else {"n": 0.0}),
            "workers": OVERLOAD_HIT_WORKERS,
            "failures": hit_failures,
            "longest_gap_ms": 1000 * longest_gap,
            "longest_gap_began_s": gap_began - started_wall,
        },
    }


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


async def gptcache_side(lookups: Lookups, samples: int) -> dict[str, Any]:
    """bench.gptcache_side in `.venv-gptcache/` on the same entries and lookups; its latencies as
    percentiles by kind and way, with how many of its `get` calls returned the expected answer.

    A subprocess in another environment, so GPTCache never enters `.venv`; it runs after the
    semcache servers have stopped, as the bare embedding does, and has the machine to itself.
    """
    python = GPTCACHE_VENV / "bin" / "python"
    if not python.exists():
        return {"skipped": f"no {GPTCACHE_VENV.name}/: create it with bench/gptcache_env.sh"}
    request = {
        "entries": lookups.entries,
        "lookups": lookups.by_kind,
        "round": ROUND,
        "warmup": min(50, samples),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "server"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    machine_started = machine_busy_seconds()
    own_started = children_cpu_seconds()
    process = await asyncio.create_subprocess_exec(
        str(python),
        # SQLAlchemy 2 warns about GPTCache's declarative_base import on every run.
        "-W",
        "ignore::DeprecationWarning",
        "-m",
        "bench.gptcache_side",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate(json.dumps(request).encode())
    if process.returncode != 0:
        raise SystemExit(f"bench.gptcache_side failed (exit {process.returncode}); see above")
    elapsed = time.perf_counter() - started
    # Its own CPU against the machine's: whatever else ran meanwhile competed with it.
    cpu = {
        "side_cpu_pct": 100 * (children_cpu_seconds() - own_started) / elapsed,
        "machine_cpu_pct": 100 * (machine_busy_seconds() - machine_started) / elapsed,
    }
    side = json.loads(output)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind, ways in side["durations_s"].items():
        by_kind[kind] = {}
        for way, durations in ways.items():
            stats: dict[str, Any] = percentiles(durations)
            if way in side["right"][kind]:
                stats["right"] = side["right"][kind][way]
                stats["found"] = side["found"][kind][way]
            by_kind[kind][way] = stats
    return {
        "versions": side["versions"],
        "entries": side["entries"],
        "put_seconds": side["put_seconds"],
        "similarity_threshold": side["similarity_threshold"],
        "faiss_threads": side["faiss_threads"],
        **cpu,
        "lookups": by_kind,
    }


AddGoal = Callable[[str, float, str, str, bool], None]


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #11's goals and #18's overload goals: (goal, measured, target, PASS/FAIL); a goal
    with no figure is skipped."""
    rows: list[dict[str, Any]] = []

    def add(goal: str, measured: float, shown: str, target: str, passed: bool) -> None:
        rows.append(
            {
                "goal": goal,
                "measured": measured,
                "shown": shown,
                "target": target,
                "verdict": verdict(passed),
            }
        )

    if "levels" in results:
        cache_goals(results, add)
    over = results.get("overload")
    if over:
        overload_goals(over, add)
    return rows


def cache_goals(results: dict[str, Any], add: AddGoal) -> None:
    single = results["levels"]["1"]
    floor, exact, semantic = single[FLOOR], single[EXACT], single[SEMANTIC]
    ratio = exact["p50_ms"] / floor["p50_ms"]
    add(
        "exact hit p50 / floor p50",
        ratio,
        f"{ratio:.2f}x",
        f"<= {EXACT_P50_OVER_FLOOR}x",
        ratio <= EXACT_P50_OVER_FLOOR,
    )
    ratio = exact["p99_ms"] / floor["p99_ms"]
    add(
        "exact hit p99 / floor p99",
        ratio,
        f"{ratio:.2f}x",
        f"<= {EXACT_P99_OVER_FLOOR}x",
        ratio <= EXACT_P99_OVER_FLOOR,
    )
    embedding = results.get(EMBEDDING)
    if embedding:
        extra = semantic["p50_ms"] - embedding["p50_ms"]
        add(
            "semantic hit p50 - bare embedding p50",
            extra,
            f"{extra:.2f} ms",
            f"<= {SEMANTIC_OVER_EMBEDDING_MS} ms",
            extra <= SEMANTIC_OVER_EMBEDDING_MS,
        )
    at_goal = results["levels"].get(str(GOAL_CONCURRENCY))
    if at_goal:
        rate = at_goal[EXACT]["calls_per_s"]
        add(
            f"exact hits/s at {GOAL_CONCURRENCY} callers",
            rate,
            f"{rate:.0f}",
            f">= {EXACT_PER_SECOND_AT_32:.0f}",
            rate >= EXACT_PER_SECOND_AT_32,
        )
        rate = at_goal[SEMANTIC]["calls_per_s"]
        add(
            f"semantic hits/s at {GOAL_CONCURRENCY} callers",
            rate,
            f"{rate:.0f}",
            f">= {SEMANTIC_PER_SECOND_AT_32:.0f}",
            rate >= SEMANTIC_PER_SECOND_AT_32,
        )
    mixed = results.get("mixed", {}).get(EXACT, {})
    if mixed.get("p99_ms") is not None:
        p99 = mixed["p99_ms"]
        add(
            f"mixed run ({MIXED_CALLERS} callers) exact hit p99",
            p99,
            f"{p99:.2f} ms",
            f"<= {MIXED_EXACT_P99_MS} ms",
            p99 <= MIXED_EXACT_P99_MS,
        )
    side = results.get(GPTCACHE, {}).get("lookups")
    if side:
        for kind in GPTCACHE_KINDS:
            for percentile in ("p50", "p99"):
                key = f"{percentile}_ms"
                ratio = side[kind][GPTCACHE_GET][key] / single[kind][key]
                add(
                    f"{kind} {percentile}: GPTCache `get` / semcache through gRPC",
                    ratio,
                    f"{ratio:.2f}x",
                    f">= {GPTCACHE_OVER_SEMCACHE:g}x",
                    ratio >= GPTCACHE_OVER_SEMCACHE,
                )


def overload_goals(over: dict[str, Any], add: AddGoal) -> None:
    bad = sum(over["outcomes"][code]["count"] for code in ("CANCELLED", "other"))
    add(
        "overload: misses end OK, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED",
        bad,
        f"{bad} otherwise",
        "0 otherwise",
        bad == 0,
    )
    hits = over["exact_hits"]
    failed = sum(hits["failures"].values())
    gap = hits["longest_gap_ms"]
    add(
        "overload: exact hits served throughout",
        failed,
        f"{int(hits['n'])} ok, {failed} failed, longest pause {gap:.0f} ms",
        f"0 failed, pause < {OVERLOAD_MAX_GAP * 1000:.0f} ms",
        failed == 0 and hits["n"] > 0 and gap < OVERLOAD_MAX_GAP * 1000,
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def cell(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    return "-" if value is None else f"{value:.2f}"


def failures_text(failures: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in failures.items()) or "0"


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    if "levels" not in results:  # --only overload
        print_overload(results["overload"])
        print_goals(results)
        return
    single = results["levels"]["1"]
    print(
        f"## semcache latency: {results['entries']} entries, gRPC on loopback, "
        f"{results['cpu_cores']} cores\n"
    )
    print(f"### One call in flight: interleaved rounds of {ROUND}, n = {args.samples} per kind\n")
    print("| kind | p50 ms | p90 ms | p99 ms | max ms | x floor p50 | failed |")
    print("|---|---:|---:|---:|---:|---:|---|")
    floor_p50 = single[FLOOR]["p50_ms"]
    for kind in (*KINDS, EMBEDDING):
        if kind == EMBEDDING and EMBEDDING not in results:
            continue
        stats = results[EMBEDDING] if kind == EMBEDDING else single[kind]
        print(
            f"| {kind} | {cell(stats, 'p50_ms')} | {cell(stats, 'p90_ms')} | "
            f"{cell(stats, 'p99_ms')} | {cell(stats, 'max_ms')} | "
            f"{stats['p50_ms'] / floor_p50:.2f} | "
            f"{failures_text(stats.get('failures', {}))} |"
        )
    if "mixed" in results:
        print_concurrency(results, args)
    over = results.get("overload")
    if over:
        print_overload(over)
    if GPTCACHE in results:
        print_gptcache(results)
    print_goals(results)
    print("\n### Also\n")
    for kind in (EXACT, SEMANTIC, MISS, EMBEDDING):
        if kind in results:
            print(format_percentiles(kind, results[kind]))
    exact, semantic = results[EXACT], results[SEMANTIC]
    print(f"semantic / exact p50: {semantic['p50_ms'] / exact['p50_ms']:.1f}x")
    idle, filled = results["server RSS MB idle"], results["server RSS MB filled"]
    print(f"paraphrases the policy accepted: {results['paraphrases accepted']}")
    print(
        f"server RSS: {idle:.0f} MB idle, {filled:.0f} MB with {results['entries']} entries; "
        f"filled in {results['fill_seconds']:.1f} s"
    )


def print_goals(results: dict[str, Any]) -> None:
    print("\n### Goals (issues #11 and #18)\n")
    print("| goal | measured | target | verdict |")
    print("|---|---|---|---|")
    for row in results["goals"]:
        print(f"| {row['goal']} | {row['shown']} | {row['target']} | {row['verdict']} |")


def print_concurrency(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n### Concurrency: closed loop, {args.seconds:g} s per row; one channel (its own "
        f"HTTP/2 connection) per {WORKERS_PER_CHANNEL} callers"
        + (
            f"; `semcache serve --workers {workers}`, at least "
            f"{CONNECTIONS_PER_SERVER_WORKER * workers} connections"
            if (workers := results.get("server_workers", 1)) > 1
            else ""
        )
        + "\n"
    )
    print(
        "CPU is % of one core over the row (client: this process; machine: all "
        f"{results['cpu_cores']} cores, so at most {100 * results['cpu_cores']}%). "
        "Level 1 is the rounds above (calls/s = 1 / mean latency).\n"
    )
    print(
        "| kind | in flight | channels | p50 ms | p99 ms | x floor p50 | calls/s | failed "
        "| CPU client / server / machine % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for level, kinds in results["levels"].items():
        floor_p50 = kinds[FLOOR]["p50_ms"]
        for kind in KINDS:
            stats = kinds[kind]
            cpu = (
                f"{stats['client_cpu_pct']:.0f} / {stats['server_cpu_pct']:.0f} / "
                f"{stats['machine_cpu_pct']:.0f}"
                if "client_cpu_pct" in stats
                else "-"
            )
            ratio = f"{stats['p50_ms'] / floor_p50:.2f}" if "p50_ms" in stats else "-"
            print(
                f"| {kind} | {level} | {stats['channels']} | {cell(stats, 'p50_ms')} | "
                f"{cell(stats, 'p99_ms')} | {ratio} | {stats['calls_per_s']:.0f} | "
                f"{failures_text(stats['failures'])} | {cpu} |"
            )
    print(
        f"\n### Mixed: {MIXED_CALLERS} callers, 50% exact / 25% semantic / 25% misses, "
        f"{args.seconds:g} s, {results['mixed_channels']} channels\n"
    )
    print("| kind | p50 ms | p99 ms | calls/s | failed |")
    print("|---|---:|---:|---:|---|")
    for kind, stats in results["mixed"].items():
        print(
            f"| {kind} | {cell(stats, 'p50_ms')} | {cell(stats, 'p99_ms')} | "
            f"{stats['calls_per_s']:.0f} | {failures_text(stats['failures'])} |"
        )
    some = next(iter(results["mixed"].values()))
    print(
        f"\nCPU: client {some['client_cpu_pct']:.0f}%, server {some['server_cpu_pct']:.0f}%, "
        f"machine {some['machine_cpu_pct']:.0f}%"
    )


def print_overload(over: dict[str, Any]) -> None:
    print(
        f"\n### Overload: {over['misses']} concurrent distinct misses, deadline "
        f"{over['deadline_s']:g} s, over {plural(over['miss_channels'], 'channel')}; "
        f"`semcache serve "
        f"{over['flags']}`, LLM first token after {over['first_token_delay_s']:g} s\n"
    )
    print("| final status | count | p50 ms | max ms |")
    print("|---|---:|---:|---:|")
    for code, stats in over["outcomes"].items():
        print(f"| {code} | {stats['count']} | {cell(stats, 'p50_ms')} | {cell(stats, 'max_ms')} |")
    print(f"\nAll misses ended within {over['seconds']:.1f} s.")
    if over["other_codes"]:
        print(f"Other codes: {over['other_codes']}")
    refused = ", ".join(f"{name}: {n}" for name, n in over["refused_by"].items())
    print(f"RESOURCE_EXHAUSTED by setting named: {refused or 'none'}")
    for named, message in over["examples"].items():
        print(f'Example ({named}): "{message}"')
    print(f"Misses answered with shared_llm_call: {over['shared_llm_calls']}")
    hits = over["exact_hits"]
    print(
        f"Exact hits meanwhile ({hits['workers']} workers, own connection): "
        f"{int(hits['n'])} answered, p50 {cell(hits, 'p50_ms')} ms, "
        f"p99 {cell(hits, 'p99_ms')} ms, max {cell(hits, 'max_ms')} ms, "
        f"longest pause {hits['longest_gap_ms']:.0f} ms "
        f"(from {hits.get('longest_gap_began_s', 0):.2f} s into the burst), "
        f"failed: {failures_text(hits['failures'])}"
    )


def gptcache_cell(stats: dict[str, Any], semcache: dict[str, Any], key: str) -> str:
    return f"{stats[key] / semcache[key]:.2f}"


def print_gptcache(results: dict[str, Any]) -> None:
    """The side-by-side table: per lookup kind, semcache's rounds and GPTCache's ways."""
    side = results[GPTCACHE]
    if "skipped" in side:
        print(f"\nGPTCache side by side skipped: {side['skipped']}.")
        return
    print(
        "\n### GPTCache side by side: the same entries, lookups and embedder, one call at a time\n"
    )
    versions = side["versions"]
    # SearchDistanceEvaluation scores 4 - squared L2 distance, against 4 x the threshold; on
    # unit vectors the squared distance is 2 - 2 cosine.
    min_cosine = 1 - 2 * (1 - side["similarity_threshold"])
    print(
        f"GPTCache {versions['gptcache']} (faiss-cpu {versions['faiss-cpu']}, SQLAlchemy "
        f"{versions['SQLAlchemy']}, onnxruntime {versions['onnxruntime']}) in "
        f'`{GPTCACHE_VENV.name}/`: `CacheBase("sqlite")` + `VectorBase("faiss")` in a '
        f"temporary directory, faiss on {side['faiss_threads']} thread, "
        f"`SearchDistanceEvaluation`, similarity threshold {side['similarity_threshold']:g} "
        f"(its default: a hit from cosine {min_cosine:.2f}), semcache's MiniLM ONNX encoder "
        f"(1 thread) as `embedding_func`; the same {side['entries']} entries stored with `put` "
        f"({side['put_seconds']:.1f} s), then its in-process `get` on the prompts semcache was "
        f"timed on above, in interleaved rounds of {ROUND}, after semcache's servers stopped. "
        "semcache: one `Ask` at a time through gRPC on loopback to `semcache serve` and "
        "redis-server (the rounds above); an exact hit hashes the request and reads Redis "
        "without embedding, a semantic hit embeds in the server. GPTCache embeds every lookup, "
        "exact repeats included, and by default commits a report row to SQLite on every hit.\n"
    )
    print(
        f"CPU during GPTCache's run, in % of one core: its process {side['side_cpu_pct']:.0f}, "
        f"the machine {side['machine_cpu_pct']:.0f} (of {100 * results['cpu_cores']}); more "
        "than its own is other work competing with it.\n"
    )
    single = results["levels"]["1"]
    print(
        "| lookup | timed | p50 ms | p90 ms | p99 ms | x semcache p50 | x semcache p99 "
        "| expected answer |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for kind in GPTCACHE_KINDS:
        ours = single[kind]
        failed = sum(ours["failures"].values())
        print(
            f"| {kind} | {SEMCACHE_INCLUDES[kind]} | {cell(ours, 'p50_ms')} | "
            f"{cell(ours, 'p90_ms')} | {cell(ours, 'p99_ms')} | 1.00 | 1.00 | "
            f"{int(ours['n'])}/{int(ours['n']) + failed} (source) |"
        )
        for way, timed in GPTCACHE_WAYS.items():
            stats = side["lookups"][kind][way]
            right = f"{stats['right']}/{int(stats['n'])}" if "right" in stats else "-"
            print(
                f"| {kind} | {timed} | {cell(stats, 'p50_ms')} | {cell(stats, 'p90_ms')} | "
                f"{cell(stats, 'p99_ms')} | {gptcache_cell(stats, ours, 'p50_ms')} | "
                f"{gptcache_cell(stats, ours, 'p99_ms')} | {right} |"
            )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.only == OVERLOAD:
        results: dict[str, Any] = {
            "overload": await overload(args.overload, args.overload_channels)
        }
        results["goals"] = goals(results)
        return results
    results, lookups = await measure_cache(args)
    if args.only != GPTCACHE:
        if args.overload > 0:
            results["overload"] = await overload(args.overload, args.overload_channels)
        results[EMBEDDING] = percentiles(embedding_latency(args.samples))
    if args.gptcache:
        results[GPTCACHE] = await gptcache_side(lookups, args.samples)
    results["goals"] = goals(results)
    return results


def concurrency_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("comma-separated counts of 1 or more")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=900, help="cached entries (<= 900)")
    parser.add_argument("--samples", type=int, default=300, help="timed calls of each kind")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of each concurrent and the mixed run"
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency_levels,
        default=[1, 32, 256],
        help="calls in flight, comma-separated (default 1,32,256)",
    )
    parser.add_argument(
        "--overload", type=int, default=5000, help="concurrent misses of the overload run; 0 skips"
    )
    parser.add_argument(
        "--overload-channels",
        type=int,
        default=OVERLOAD_CHANNELS,
        help="channels the overload run's misses share (default 1: one client's burst)",
    )
    parser.add_argument(
        "--gptcache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time GPTCache's get on the same data (needs .venv-gptcache: bench/gptcache_env.sh)",
    )
    parser.add_argument(
        "--only",
        choices=[GPTCACHE, OVERLOAD],
        help="gptcache: only the one-call rounds and the GPTCache comparison; overload: only "
        "the overload run",
    )
    parser.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="`semcache serve --workers N` for the measured server (not the overload run); "
        "rows above one caller then use at least 4N connections",
    )
    add_json_option(parser)
    args = parser.parse_args()
    if args.only == GPTCACHE and not args.gptcache:
        parser.error("--only gptcache and --no-gptcache contradict each other")
    if args.only == GPTCACHE and not GPTCACHE_VENV.exists():
        parser.error(f"no {GPTCACHE_VENV.name}/: create it with bench/gptcache_env.sh")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    results = asyncio.run(measure(args))
    if args.json == "-":
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print_report(results, args)


if __name__ == "__main__":
    main()
