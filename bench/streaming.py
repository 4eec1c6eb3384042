"""Streaming figures of AskStream, measured through gRPC against `semcache serve` processes.

    .venv/bin/python -m bench.streaming [--samples 300] [--quick] [--json]

1. Time to first token on a miss, semcache vs the same Ollama-protocol server called directly
   with the real `ollama.AsyncClient`, calls interleaved in random order so drift on a noisy
   machine hits every kind alike; with no first-token delay and with a realistic one. Kinds:
   the default (streams speculate), `--speculative-llm off`, and a request for the exact layer
   only (no embedding at all), and bench.bare_relay: a grpc.aio handler that forwards Ollama's
   tokens with no cache at all, the least any Python gRPC front adds on this machine. Then the
   price of speculating: the time to first token of streamed semantic hits, default against off.
2. Streamed-hit throughput: cached ~2,000-character answers replayed to concurrent callers.
3. Many open streams held by one server process: its resident memory per open stream.

Every figure comes from one run, so the comparisons share the machine's state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import ollama
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client import build_request

from bench.harness import (
    TOPICS,
    bare_relay,
    fake_ollama,
    format_percentiles,
    percentiles,
    rss_mb,
    semcache_server,
)

MODEL = "llama3.2"
SPECULATION_OFF = ("--speculative-llm", "off")
LEVELS = ["child", "student", "beginner", "expert", "manager", "teacher", "nurse", "lawyer"]
COLOURS = ["red", "amber", "green", "teal", "blue", "violet", "grey", "golden", "silver", "pink"]
ANIMALS = ["fox", "heron", "otter", "badger", "lynx", "falcon", "newt", "walrus", "moth", "ibex"]
# Filler for long prompts; the fake Ollama echoes the prompt, so a long prompt is a long answer.
FILLER_TEXT = (
    "the quick brown fox jumps over the lazy dog while a patient heron waits by the river "
    "and counts the ripples that the wind draws on the water before the evening rain"
)
FILLER = FILLER_TEXT.split(" ")
TTFT_KINDS = (
    "direct",
    "semcache",
    "semcache, speculation off",
    "semcache, exact layer only",
    "bare Python gRPC relay",
)
SEMANTIC_KINDS = ("semantic hit", "semantic hit, speculation off")


# --------------------------------------------------------------------------------------- prompts


def fill_prompts(count: int) -> list[str]:
    """Entries for the semantic index to search through, far from every miss prompt."""
    pairs = itertools.product(TOPICS[:10], LEVELS, range(1_000))
    return [
        f"Explain {topic} briefly for a {level} (part {part})." for topic, level, part in pairs
    ][:count]


def miss_prompts(tag: str) -> Iterator[str]:
    """Unique short chat prompts, never cached (sent with skip_store), so each is a miss."""
    for index in itertools.count():
        colour = COLOURS[index % len(COLOURS)]
        animal = ANIMALS[(index // len(COLOURS)) % len(ANIMALS)]
        yield f"Write a short poem about a {colour} {animal} called {tag}-{index}."


def long_prompt(tag: str, chars: int) -> str:
    """A distinct prompt of about `chars` characters (the fake's answer is 'Echo: ' + prompt)."""
    words = [f"Entry {tag}:"]
    length = len(words[0])
    for word in itertools.cycle(FILLER):
        if length + 1 + len(word) > chars:
            break
        words.append(word)
        length += 1 + len(word)
    return " ".join(words)


def echo(prompt: str) -> str:
    """What the fake Ollama answers to a prompt."""
    return f"Echo: {prompt}"


async def fill(stub: pb_grpc.SemcacheServiceStub, prompts: list[str], concurrency: int = 8) -> None:
    queue = list(prompts)

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            # Exact-only while filling, so that look-alike prompts each get their own entry.
            request = build_request(pb.AskRequest, prompt, model=MODEL, threshold=0.0)
            response = await stub.Ask(request, timeout=60)
            if not response.stored and response.source == pb.SOURCE_LLM:
                raise SystemExit(f"fill: {prompt[:40]!r} was not stored")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---------------------------------------------------------------------------------- first token


def paraphrase(prompt: str) -> str:
    """A rewording of a fill prompt that the default policy takes as a semantic hit."""
    return prompt.replace("Explain ", "Briefly explain ").replace(" briefly for ", " for ")


@dataclass
class TimedStream:
    first_token_s: float | None
    source: int
    text: str
    ended: bool


async def timed_stream(
    stub: pb_grpc.SemcacheServiceStub, request: pb.AskStreamRequest
) -> TimedStream:
    """One AskStream read to its end: when its first delta came, its source, text and end."""
    started = time.perf_counter()
    timed = TimedStream(None, pb.SOURCE_UNSPECIFIED, "", ended=False)
    parts: list[str] = []
    async for message in stub.AskStream(request, timeout=30):
        kind = message.WhichOneof("event")
        if kind == "delta":
            if timed.first_token_s is None:
                timed.first_token_s = time.perf_counter() - started
            parts.append(message.delta.text)
        elif kind == "start":
            timed.source = message.start.source
        else:
            timed.ended = True
    timed.text = "".join(parts)
    return timed


async def semcache_first_token(
    stub: pb_grpc.SemcacheServiceStub, prompt: str, exact_only: bool = False
) -> float:
    """Seconds from the call to the first delta of a miss, whose stream is read and checked."""
    request = build_request(
        pb.AskStreamRequest,
        prompt,
        model=MODEL,
        skip_store=True,
        threshold=0.0 if exact_only else None,
    )
    timed = await timed_stream(stub, request)
    answered = timed.source == pb.SOURCE_LLM and timed.ended and timed.text == echo(prompt)
    if not answered or timed.first_token_s is None:
        raise SystemExit(f"a miss stream for {prompt!r} did not complete as an LLM answer")
    return timed.first_token_s


async def direct_first_token(client: ollama.AsyncClient, prompt: str) -> float:
    """Seconds from the call to its first non-empty content chunk, read to the end."""
    started = time.perf_counter()
    stream = await client.chat(
        model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
    )
    first: float | None = None
    parts: list[str] = []
    async for chunk in stream:
        if chunk.message.content:
            if first is None:
                first = time.perf_counter() - started
            parts.append(chunk.message.content)
    if "".join(parts) != echo(prompt) or first is None:
        raise SystemExit(f"the direct stream for {prompt!r} was not the expected answer")
    return first


async def semantic_first_token(stub: pb_grpc.SemcacheServiceStub, prompt: str) -> float:
    """Seconds from the call to the first delta of a streamed semantic hit. skip_store: a
    speculative LLM call that finishes before the hit is decided would store the paraphrase,
    and the next paraphrase (part N+1) would find it nearer than its own entry."""
    request = build_request(pb.AskStreamRequest, prompt, model=MODEL, skip_store=True)
    timed = await timed_stream(stub, request)
    if timed.source != pb.SOURCE_SEMANTIC or not timed.ended or timed.first_token_s is None:
        raise SystemExit(f"{prompt!r} was not streamed as a semantic hit: {timed}")
    return timed.first_token_s


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[float]]], samples: int, warmup: int
) -> dict[str, list[float]]:
    """Each kind once a round, in a new random order every round."""
    order = list(calls)
    shuffle = random.Random(7)
    samples_of: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + samples):
        shuffle.shuffle(order)
        for name in order:
            seconds = await calls[name]()
            if round_index >= warmup:
                samples_of[name].append(seconds)
    return samples_of


def versus(stats: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    return {
        "ratio_p50": stats["p50_ms"] / base["p50_ms"],
        "ratio_p99": stats["p99_ms"] / base["p99_ms"],
        "added_p50_ms": stats["p50_ms"] - base["p50_ms"],
        "added_p99_ms": stats["p99_ms"] - base["p99_ms"],
    }


async def first_token_run(
    first_token_delay: float, samples: int, warmup: int, fill_count: int
) -> dict[str, Any]:
    """One fake Ollama; semcache by default and with speculation off in front of it."""
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(fake_ollama(first_token_delay=first_token_delay))
        default = stack.enter_context(semcache_server(fake.url))
        off = stack.enter_context(semcache_server(fake.url, *SPECULATION_OFF))
        relay = stack.enter_context(bare_relay(fake.url))
        targets = (default.target, off.target, relay)
        channels = [grpc.aio.insecure_channel(target) for target in targets]
        client = ollama.AsyncClient(host=fake.url)
        try:
            stubs = [pb_grpc.SemcacheServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
            filled = fill_prompts(fill_count)
            for stub in stubs[:2]:
                await fill(stub, filled)
            misses = {name: miss_prompts(f"{name}-{first_token_delay}") for name in TTFT_KINDS}
            hits = itertools.cycle(paraphrase(prompt) for prompt in filled)
            calls: dict[str, Callable[[], Awaitable[float]]] = {
                "direct": lambda: direct_first_token(client, next(misses["direct"])),
                "semcache": lambda: semcache_first_token(stubs[0], next(misses["semcache"])),
                "semcache, speculation off": lambda: semcache_first_token(
                    stubs[1], next(misses["semcache, speculation off"])
                ),
                "semcache, exact layer only": lambda: semcache_first_token(
                    stubs[0], next(misses["semcache, exact layer only"]), exact_only=True
                ),
                "bare Python gRPC relay": lambda: semcache_first_token(
                    stubs[2], next(misses["bare Python gRPC relay"])
                ),
                "semantic hit": lambda: semantic_first_token(stubs[0], next(hits)),
                "semantic hit, speculation off": lambda: semantic_first_token(stubs[1], next(hits)),
            }
            samples_of = await interleaved(calls, samples, warmup)
        finally:
            for channel in channels:
                await channel.close()
            await client._client.aclose()
    result: dict[str, Any] = {"first_token_delay_s": first_token_delay}
    stats = {name: percentiles(values) for name, values in samples_of.items()}
    result.update(stats)
    for name in TTFT_KINDS[1:]:
        result[f"{name} vs direct"] = versus(stats[name], stats["direct"])
    result["semcache vs bare relay"] = versus(stats["semcache"], stats["bare Python gRPC relay"])
    result["semantic hit vs off"] = versus(stats["semantic hit"], stats[SEMANTIC_KINDS[1]])
    return result


# -------------------------------------------------------------------------------- hit throughput


async def replay_throughput(
    entries: int, reply_chars: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """Exact hits of long answers, streamed to `concurrency` callers at once for `seconds`."""
    with fake_ollama() as fake, semcache_server(fake.url) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            prompts = [
                long_prompt(f"hit-{index}", reply_chars - len("Echo: ")) for index in range(entries)
            ]
            await fill(stub, prompts)
            requests = [build_request(pb.AskStreamRequest, p, model=MODEL) for p in prompts]
            lengths = [len(echo(p)) for p in prompts]
            streams = chunks = chars = 0
            durations: list[float] = []

            async def replay(index: int) -> None:
                nonlocal streams, chunks, chars
                started = time.perf_counter()
                received = 0
                pieces = 0
                kinds: list[str] = []
                async for message in stub.AskStream(requests[index], timeout=30):
                    kind = message.WhichOneof("event")
                    if kind == "delta":
                        received += len(message.delta.text)
                        pieces += 1
                    elif kind == "start" and message.start.source != pb.SOURCE_EXACT:
                        raise SystemExit(f"expected an exact hit, got {message.start.source}")
                    kinds.append(kind)
                if received != lengths[index] or kinds[-1] != "end":
                    raise SystemExit("a replayed stream was incomplete")
                durations.append(time.perf_counter() - started)
                streams += 1
                chunks += pieces
                chars += received

            async def worker(offset: int, stop_at: float) -> None:
                for index in itertools.count(offset, concurrency):
                    if time.perf_counter() >= stop_at:
                        return
                    await replay(index % entries)

            for index in range(min(entries, 50)):  # warm-up
                await replay(index)
            streams = chunks = chars = 0
            durations.clear()
            started = time.perf_counter()
            stop_at = started + seconds
            await asyncio.gather(*(worker(k, stop_at) for k in range(concurrency)))
            elapsed = time.perf_counter() - started
    return {
        "entries": entries,
        "reply_chars": sum(lengths) / len(lengths),
        "concurrency": concurrency,
        "seconds": elapsed,
        "streams_per_s": streams / elapsed,
        "chunks_per_s": chunks / elapsed,
        "chunks_per_stream": chunks / streams,
        "mb_text_per_s": chars / elapsed / 1e6,
        "stream_duration": percentiles(durations),
    }


# ---------------------------------------------------------------------------------- open streams


@dataclass
class HeldStream:
    prompt: str
    started: bool = False
    flowing: bool = False
    """At least one delta received."""
    finished: bool = False
    ok: bool = False
    error: str = ""
    text: list[str] = field(default_factory=list)


async def hold_stream(stub: pb_grpc.SemcacheServiceStub, held: HeldStream) -> None:
    # Exact lookups only and nothing stored: the figure is what an open stream costs, not the
    # embedder (which a miss would wait for before its first token, one at a time).
    request = build_request(
        pb.AskStreamRequest, held.prompt, model=MODEL, threshold=0.0, skip_store=True
    )
    end: pb.AskStreamEnd | None = None
    try:
        async for message in stub.AskStream(request, timeout=600):
            kind = message.WhichOneof("event")
            if kind == "start":
                held.started = message.start.source == pb.SOURCE_LLM
            elif kind == "delta":
                held.flowing = True
                held.text.append(message.delta.text)
            else:
                end = message.end
    except grpc.aio.AioRpcError as error:
        held.error = f"{error.code().name}: {error.details()}"
    finally:
        held.finished = True
    held.ok = (
        held.started
        and end is not None
        and end.finish_reason == pb.FINISH_REASON_STOP
        and "".join(held.text) == echo(held.prompt)
    )


@dataclass(frozen=True)
class Poll:
    seconds: float
    open: int
    """Streams that had their start and have not ended."""
    receiving: int
    """Open streams that have received at least one delta."""
    rss_mb: float


async def median_rss(pid: int, samples: int, interval: float = 0.1) -> float:
    readings = []
    for _ in range(samples):
        readings.append(rss_mb(pid))
        await asyncio.sleep(interval)
    return statistics.median(readings)


async def poll_open_streams(
    pid: int, held_streams: list[HeldStream], opened_at: float, hold_polls: int = 10
) -> list[Poll]:
    """Poll every 0.1 s until every stream ended, or all have been receiving for `hold_polls`."""
    polls: list[Poll] = []
    all_receiving = 0
    while any(not held.finished for held in held_streams):
        await asyncio.sleep(0.1)
        unfinished = [held for held in held_streams if not held.finished]
        poll = Poll(
            seconds=time.perf_counter() - opened_at,
            open=sum(1 for held in unfinished if held.started),
            receiving=sum(1 for held in unfinished if held.flowing),
            rss_mb=rss_mb(pid),
        )
        polls.append(poll)
        all_receiving = all_receiving + 1 if poll.receiving == len(held_streams) else 0
        if all_receiving >= hold_polls:
            break
    return polls


async def open_streams(count: int, reply_words: int, token_delay: float) -> dict[str, Any]:
    """`count` misses streaming slowly at once; the server's RSS while they are open."""
    with (
        fake_ollama(token_delay=token_delay) as fake,
        semcache_server(fake.url) as server,
    ):
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            words = " ".join(itertools.islice(itertools.cycle(FILLER), reply_words))
            # A burst first: it makes the server's first-use allocations, and the full garbage
            # collection it triggers frees ~25 MB left from start-up, which would otherwise show
            # as streams costing less than nothing.
            warm = [HeldStream(f"Warm-up {index}: {words[:40]}") for index in range(300)]
            await asyncio.gather(*(hold_stream(stub, held) for held in warm))
            idle_rss = await median_rss(server.pid, samples=10)

            held_streams = [HeldStream(f"Held stream {index}: {words}") for index in range(count)]
            opened_at = time.perf_counter()
            tasks = [asyncio.create_task(hold_stream(stub, held)) for held in held_streams]
            polls = await poll_open_streams(server.pid, held_streams, opened_at)
            await asyncio.gather(*tasks)
            drained_after = time.perf_counter() - opened_at
            await asyncio.sleep(1.0)
            after_rss = await median_rss(server.pid, samples=10)
    # The reading: the polls where (nearly) the most streams were open at once.
    peak_open = max((poll.open for poll in polls), default=0)
    near_peak = [poll for poll in polls if poll.open >= 0.98 * peak_open] or [Poll(0, 0, 0, 0.0)]
    held_rss = statistics.median(poll.rss_mb for poll in near_peak)
    open_at_reading = min(poll.open for poll in near_peak)
    receiving = max(poll.receiving for poll in polls) if polls else 0
    completed = sum(1 for h in held_streams if h.ok)
    errors = sorted({h.error for h in held_streams if h.error})
    return {
        "streams": count,
        "reply_tokens": reply_words + 4,
        "token_delay_s": token_delay,
        "peak_open": peak_open,
        "open_at_reading": open_at_reading,
        "peak_receiving_tokens": receiving,
        "all_received_tokens_at_once": receiving == count,
        "seconds_to_peak_open": near_peak[0].seconds,
        "rss_idle_mb": idle_rss,
        "rss_held_mb": held_rss,
        "rss_after_mb": after_rss,
        "mb_per_open_stream_vs_before": (held_rss - idle_rss) / max(open_at_reading, 1),
        "mb_per_open_stream_vs_after": (held_rss - after_rss) / max(open_at_reading, 1),
        "completed_ok": completed,
        "errors": errors,
        "seconds_until_all_ended": drained_after,
    }


# -------------------------------------------------------------------------------------- printing


def format_versus(name: str, versus: dict[str, float]) -> str:
    return (
        f"{name:<40} p50 {versus['ratio_p50']:.2f}x ({versus['added_p50_ms']:+.2f} ms)   "
        f"p99 {versus['ratio_p99']:.2f}x ({versus['added_p99_ms']:+.2f} ms)"
    )


def print_report(results: dict[str, Any]) -> None:
    print("semcache streaming, through gRPC on loopback; one machine, one run")
    print()
    print(
        "1. Time to first token on a miss (unique prompts, skip_store; "
        f"{results['fill']} entries in the index), calls interleaved in random order"
    )
    for run in results["first_token"]:
        delay_ms = run["first_token_delay_s"] * 1000
        print(f"   Ollama-protocol server's first-token delay {delay_ms:.0f} ms:")
        for kind in TTFT_KINDS:
            print("   " + format_percentiles(kind, run[kind]))
        for kind in TTFT_KINDS[1:]:
            print("   " + format_versus(f"{kind} / direct", run[f"{kind} vs direct"]))
        print("   " + format_versus("semcache / bare relay", run["semcache vs bare relay"]))
        print("   streamed semantic hits (what speculating costs them):")
        for kind in SEMANTIC_KINDS:
            print("   " + format_percentiles(kind, run[kind]))
        print("   " + format_versus("default / off", run["semantic hit vs off"]))
    print()
    replay = results["replay"]
    print(
        f"2. Streamed exact hits: {replay['entries']} entries of "
        f"{replay['reply_chars']:.0f} chars, {replay['concurrency']} concurrent callers "
        f"for {replay['seconds']:.1f} s"
    )
    print(
        f"   {replay['streams_per_s']:8.0f} streams/s   {replay['chunks_per_s']:9.0f} chunks/s   "
        f"{replay['chunks_per_stream']:.0f} chunks a stream   "
        f"{replay['mb_text_per_s']:.1f} MB text/s"
    )
    print("   " + format_percentiles("whole stream, under load", replay["stream_duration"]))
    print()
    held = results["open_streams"]
    print(
        f"3. {held['streams']} concurrent misses of {held['reply_tokens']} tokens "
        f"{held['token_delay_s'] * 1000:.0f} ms apart, one server process"
    )
    print(
        f"   open at once: {held['peak_open']} ({held['seconds_to_peak_open']:.1f} s after the "
        f"first call); at most {held['peak_receiving_tokens']} receiving tokens at once"
    )
    per_stream = [held[f"mb_per_open_stream_vs_{when}"] * 1024 for when in ("before", "after")]
    print(
        f"   server RSS (medians) {held['rss_idle_mb']:.0f} MB idle before -> "
        f"{held['rss_held_mb']:.0f} MB with {held['open_at_reading']} open -> "
        f"{held['rss_after_mb']:.0f} MB idle after"
    )
    print(
        f"   per open stream: {per_stream[0]:.0f} KB against idle before, {per_stream[1]:.0f} KB "
        "against idle after (RSS drifts by a few MB on its own)"
    )
    print(
        f"   ended correctly: {held['completed_ok']}/{held['streams']}, "
        f"all ended {held['seconds_until_all_ended']:.1f} s after the first call"
    )
    if not held["all_received_tokens_at_once"]:
        print(
            f"   note: at most {held['peak_receiving_tokens']} streams received tokens at "
            "once; the others had their start and waited for a connection to Ollama "
            "(semcache's ollama.AsyncClient keeps httpx's default pool of 100)"
        )
    for error in held["errors"]:
        print(f"   error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300, help="timed first tokens of each kind")
    parser.add_argument("--warmup", type=int, default=30, help="untimed rounds before sampling")
    parser.add_argument("--first-token-delay", type=float, default=0.05, help="realistic delay")
    parser.add_argument("--fill", type=int, default=200, help="entries in the index for misses")
    parser.add_argument("--concurrency", type=int, default=32, help="callers of the hit phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the hit phase")
    parser.add_argument("--reply-chars", type=int, default=2000, help="cached answer length")
    parser.add_argument("--streams", type=int, default=500, help="streams held open at once")
    parser.add_argument("--hold-words", type=int, default=200, help="answer length, held phase")
    parser.add_argument("--token-delay", type=float, default=0.1, help="held phase, seconds")
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.warmup, args.fill = 40, 5, 20
        args.seconds, args.streams, args.hold_words = 2.0, 120, 60
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    results = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "samples": args.samples,
        "fill": args.fill,
        "first_token": [],
    }
    for delay in (0.0, args.first_token_delay):
        results["first_token"].append(
            await first_token_run(delay, args.samples, args.warmup, args.fill)
        )
    results["replay"] = await replay_throughput(
        entries=64, reply_chars=args.reply_chars, concurrency=args.concurrency, seconds=args.seconds
    )
    results["open_streams"] = await open_streams(args.streams, args.hold_words, args.token_delay)
    return results


if __name__ == "__main__":
    main()
