"""A load-and-fault run (issue #12): many clients of two tenants while Redis and Ollama fail.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.fault_run [--seconds 240 | --quick]
        [--clients 64] [--think-ms 150] [--max-calls 400000] [--seed 12] [--keep DIR]
        [--negative-control] [--json [PATH]]

Real processes on loopback: a redis-server with AOF on (`appendonly yes`, `appendfsync
everysec`), `semcache serve` on it with an API keys file of two tenants and `--redis-timeout 0.3`,
and an Ollama-protocol server (in this process, on its own thread) whose answers are 40-odd tokens
long, streamed a token every few milliseconds.

1. Warm-up: each tenant stores the answers of its prompts (some identical in both tenants).
2. Load for `--seconds` (`--quick`: 60): `--clients` callers, half of each tenant, each in a
   closed loop with a random pause of up to twice `--think-ms` between calls, spread over one
   channel (its own HTTP/2 connection) per 16 callers. Each call is unary or streamed (half
   each) and asks, with a 10 s deadline, one of: a prompt its tenant asked before (mostly one it
   was told was stored, an exact hit; else one of its last questions whatever became of it, as a
   user asks again after an error); a paraphrase of a stored prompt, its own tenant's or the
   other's (a semantic hit or a miss); a fresh prompt (a miss). Both tenants walk the same
   sequence of fresh prompts, so identical questions are in flight for both at once: a leak
   across tenants would have every chance to show.
3. Faults on a timeline of 60 s cycles, printed as they happen: Ollama stalls (first token after
   12 s, past every deadline) for 8-10 s; Redis is killed (SIGKILL) and restarted on the same
   port and data after 4-8 s; Redis is paused (SIGSTOP ... SIGCONT) for 5 s; Ollama drops every
   stream after 5 tokens for 8-10 s. Even cycles keep the faults apart, so that the phase of a
   failed call names its cause; odd cycles overlap a Redis fault with an Ollama one.
4. After the load: Redis is killed once more and restarted from its AOF, then checked.

It reports calls by final status (by phase too: which faults a call overlapped), p50/p99 latency
by source and for errors, and the checks with PASS/FAIL: answers served to the wrong tenant (the
entry ids each tenant was acknowledged, and each served entry's `namespace` and `owner` in
Redis), partial answers stored (every entry's text against the full reply for its prompt), entries
lost that Redis had acknowledged (every `stored=true` entry id, after the final restart), OK
answers whose text is not the full answer, calls ending in a status the README does not promise,
and failed calls with only Redis faulty or no fault at all (the README: Redis failures never fail
a request), single-flight claims held in Redis for longer than any LLM call takes, and claims
still there a lease after the last call ended (renewed for nobody, issue #18). Then the server's
RSS after warm-up and at the end, its health, and its log's ERROR, WARNING and Traceback lines.
`--negative-control` runs the same with both tenants in one shared namespace and a Redis that
keeps nothing: the wrong-tenant and lost-entry lines must then FAIL, which shows they can.

Without `--json` a markdown report is printed; `--json` prints JSON instead, and `--json PATH`
writes the JSON to PATH and prints the report as well. It exits 1 when a check fails (with
`--negative-control`: when a line that must fail passes), so it can gate a change. Progress goes
to stderr. `--keep DIR` keeps the server's and Redis's logs and every call (`calls.jsonl`) for a
diagnosis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import grpc
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisError
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client import build_request
from semcache_server.adapters.redis_layout import KeyLayout
from semcache_server.core.flights import ClaimSettings
from semcache_server.edge.auth import tenant_namespace
from semcache_server.testing.ollama_protocol import Behaviour, FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from bench.harness import TOPICS, add_json_option, percentiles, rss_mb, terminate
from bench.latency import MODEL, CpuMeter, open_channels, prompts

TENANTS = ("alpha", "bravo")
CALL_TIMEOUT = 10.0
"""Every call's deadline."""
REDIS_TIMEOUT = 0.3
REDIS_AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
NO_PERSISTENCE = ("--appendonly", "no")
"""`--negative-control`'s Redis, whose SIGKILL loses every entry."""
WORKERS_PER_CHANNEL = 16
QUICK_SECONDS = 60.0
CYCLE_SECONDS = 60.0

REPLY_WORDS = 40
"""Words after the echo in every answer: a stream of 40-odd tokens, so a drop cuts it mid-way."""
TOKEN_DELAY = 0.003
STALL_FIRST_TOKEN = 12.0
"""Past CALL_TIMEOUT: a stalled LLM call outlives every caller."""
DROP_AFTER_TOKENS = 5
LONGEST_LLM_CALL = STALL_FIRST_TOKEN + 3.0
"""No LLM call of this run takes longer (a stalled one least of all), so neither does a claim."""
CLAIM_LEASE = ClaimSettings.lease_seconds
"""A claim nobody renews is gone this long after its last renewal."""

POOL_PAIRS = 40
"""(prompt, paraphrase) pairs in each pool: shared by both tenants, alpha's, bravo's."""
WARMUP_CONCURRENCY = 8
KIND_WEIGHTS = {"repeat": 0.45, "paraphrase": 0.25, "fresh": 0.30}
"""Each call asks a repeat of a prompt asked before, a paraphrase, or a fresh prompt."""
RECENT_SHARE = 0.3
"""Repeats of one of the tenant's last RECENT_PROMPTS questions, whatever became of them (as a
user asks again after an error); the others repeat a prompt the tenant was told it stored."""
RECENT_PROMPTS = 2000
"""About the last minute of a tenant's paraphrases and fresh prompts at the default pace."""
STREAMED_SHARE = 0.5

SLOW_SECONDS = 2.0
"""OK calls slower than this are counted by phase, and listed in the JSON with the failed ones."""
MAX_LISTED_CALLS = 5000
EXPECTED_CODES = ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
"""Final statuses the README promises under these faults; any other is flagged."""
SOURCES = {pb.SOURCE_EXACT: "exact", pb.SOURCE_SEMANTIC: "semantic", pb.SOURCE_LLM: "llm"}
HITS = ("exact", "semantic")

OLLAMA_STALL = "ollama stall"
OLLAMA_DROPS = "ollama drops"
REDIS_DOWN = "redis down"
REDIS_PAUSED = "redis paused"
REDIS_FAULTS = frozenset({REDIS_DOWN, REDIS_PAUSED})
FAULT_TEXT = {
    OLLAMA_STALL: f"Ollama stalls: first token after {STALL_FIRST_TOKEN:g} s",
    OLLAMA_DROPS: f"Ollama drops every stream after {DROP_AFTER_TOKENS} tokens",
    REDIS_DOWN: "Redis SIGKILL",
    REDIS_PAUSED: "Redis SIGSTOP",
}
END_TEXT = {
    OLLAMA_STALL: "Ollama answers normally again",
    OLLAMA_DROPS: "Ollama answers normally again",
    REDIS_DOWN: "Redis restarted (same port, same AOF)",
    REDIS_PAUSED: "Redis SIGCONT",
}
AFTERMATH = {
    OLLAMA_STALL: STALL_FIRST_TOKEN - CALL_TIMEOUT + 2.0,
    OLLAMA_DROPS: 2.0,
    REDIS_DOWN: 1.0,
    REDIS_PAUSED: 1.0,
}
"""Seconds after a fault ends during which a call still counts as overlapping it. A call may board
an LLM call that began during a stall (single-flight) and wait on it until its deadline: it must
have boarded by the stall's end plus STALL_FIRST_TOKEN - CALL_TIMEOUT to fail on it."""

LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")


def log(text: str, since: float | None = None) -> None:
    """Progress, on stderr so `--json` keeps stdout clean; during the load, with the seconds
    since it began (the faults table's clock)."""
    when = "" if since is None else f"[{time.monotonic() - since:5.1f} s] "
    print(f"{when}{text}", file=sys.stderr, flush=True)


class LongOllama(FakeOllama):
    """Answers of REPLY_WORDS words more than the echo, so streams are really streamed."""

    def reply_for(self, prompt: str) -> str:
        filler = " ".join(f"point{i}" for i in range(REPLY_WORDS))
        return f"Echo: {prompt} {filler}."


def normal_behaviour() -> Behaviour:
    return Behaviour(token_delay=TOKEN_DELAY)


def fresh_prompt(number: int) -> str:
    """The number-th fresh prompt; both tenants walk the same sequence."""
    first = TOPICS[number % len(TOPICS)]
    second = TOPICS[(number * 7 + 3) % len(TOPICS)]
    return f"Question {number} of the fault run: how does {first} relate to {second}?"


# ---------------------------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    name: str
    start: float
    end: float


def timeline(seconds: float) -> list[Fault]:
    """60 s cycles; odd cycles overlap a Redis fault with an Ollama one."""
    faults: list[Fault] = []
    for cycle in range(max(1, int(seconds // CYCLE_SECONDS))):
        base = cycle * CYCLE_SECONDS
        if cycle % 2 == 0:
            # Apart, so that a call failing on one fault (by its deadline, 10 s later) overlaps
            # no other: the phases of the report tell which fault made it fail.
            plan = [
                (OLLAMA_STALL, 2, 10),
                (REDIS_DOWN, 25, 29),
                (REDIS_PAUSED, 34, 39),
                (OLLAMA_DROPS, 50, 58),
            ]
        else:
            plan = [
                (OLLAMA_STALL, 5, 15),
                (REDIS_PAUSED, 8, 13),
                (OLLAMA_DROPS, 24, 34),
                (REDIS_DOWN, 27, 31),
                (REDIS_DOWN, 42, 50),
            ]
        faults += [Fault(name, base + start, base + end) for name, start, end in plan]
    return [fault for fault in faults if fault.end <= seconds]


def redis_pid(url: str) -> int:
    """redis-server's pid, from INFO."""
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        info: dict[str, Any] = client.info("server")
        return int(info["process_id"])


class Faults:
    """Applies the timeline; puts everything back in order however the run ends.

    Redis is killed, restarted, paused and resumed on a worker thread under one lock, and the
    state changes with the action in that thread: a cancelled timeline never leaves a restart
    half done for `restore()` to repeat (two redis-servers on one port)."""

    def __init__(self, redis_process: RedisProcess, ollama: FakeOllama, started: float) -> None:
        self._redis = redis_process
        self._ollama = ollama
        self._started = started
        self._lock = threading.Lock()
        self._paused_pid: int | None = None
        self._redis_down = False
        self.happened: list[dict[str, Any]] = []
        """Each fault with the times (s since the load began) it really started and ended."""

    def _now(self) -> float:
        return time.monotonic() - self._started

    def _kill(self) -> None:
        with self._lock:
            self._redis.stop()
            self._redis_down = True

    def _restart(self) -> None:
        with self._lock:
            if self._redis_down:
                self._redis.start()
                self._redis_down = False

    def _pause(self) -> None:
        with self._lock:
            if not self._redis_down:
                pid = redis_pid(self._redis.url)
                os.kill(pid, signal.SIGSTOP)
                self._paused_pid = pid

    def _resume(self) -> None:
        with self._lock:
            if self._paused_pid is not None:
                os.kill(self._paused_pid, signal.SIGCONT)
                self._paused_pid = None

    async def begin(self, name: str) -> None:
        if name == OLLAMA_STALL:
            self._ollama.behaviour = Behaviour(
                token_delay=TOKEN_DELAY, first_token_delay=STALL_FIRST_TOKEN
            )
        elif name == OLLAMA_DROPS:
            self._ollama.behaviour = Behaviour(
                token_delay=TOKEN_DELAY, drop_after_tokens=DROP_AFTER_TOKENS
            )
        elif name == REDIS_DOWN:
            await asyncio.to_thread(self._kill)
        elif name == REDIS_PAUSED:
            await asyncio.to_thread(self._pause)

    async def end(self, name: str) -> None:
        if name in (OLLAMA_STALL, OLLAMA_DROPS):
            self._ollama.behaviour = normal_behaviour()
        elif name == REDIS_DOWN:
            await asyncio.to_thread(self._restart)
        elif name == REDIS_PAUSED:
            await asyncio.to_thread(self._resume)

    async def run(self, faults: list[Fault]) -> None:
        events = sorted(
            [(fault.start, 1, fault) for fault in faults]
            + [(fault.end, 0, fault) for fault in faults],
            key=lambda event: (event[0], event[1]),
        )
        records: dict[Fault, dict[str, Any]] = {}
        for at, starting, fault in events:
            await asyncio.sleep(max(0.0, at - self._now()))
            if starting:
                records[fault] = {"fault": fault.name, "start_s": round(self._now(), 2)}
                self.happened.append(records[fault])
                await self.begin(fault.name)
                log(FAULT_TEXT[fault.name], self._started)
            else:
                await self.end(fault.name)
                records[fault]["end_s"] = round(self._now(), 2)
                log(END_TEXT[fault.name], self._started)

    async def restore(self) -> None:
        """Whatever the timeline was doing when the run stopped: Redis up and running, Ollama
        normal."""
        now = self._now()
        for record in self.happened:
            record.setdefault("end_s", round(now, 2))
        self._ollama.behaviour = normal_behaviour()
        await asyncio.to_thread(self._resume)
        await asyncio.to_thread(self._restart)


# ------------------------------------------------------------------------------------ the load


@dataclass
class Tenant:
    name: str
    key: str
    repeats: list[str]
    """Prompts this tenant stored, asked again for exact hits."""
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_PROMPTS))
    """The last paraphrases and fresh prompts this tenant asked."""
    fresh_next: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)
    """entry id -> prompt, of every response that said stored=true."""

    @property
    def namespace(self) -> str:
        return tenant_namespace(self.name)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)


@dataclass(slots=True)
class Outcome:
    """One call as the client saw it."""

    tenant: str
    kind: str
    streamed: bool
    prompt: str
    began: float
    ended: float = 0.0
    code: str = "OK"
    message: str = ""
    source: str = ""
    text: str = ""
    entry_id: str = ""
    matched_prompt: str = ""
    stored: bool = False
    shared: bool = False
    """The server said shared_llm_call: this call rode an LLM call already under way, or waited
    for one that a claim in Redis said was under way."""
    ended_cleanly: bool = True
    """A stream that closed OK carried an `end` message."""


async def ask(
    stub: Any, tenant: Tenant, prompt: str, streamed: bool, outcome: Outcome, **control: Any
) -> None:
    """One call, unary or streamed; fills outcome in."""
    try:
        if not streamed:
            request = build_request(pb.AskRequest, prompt, model=MODEL, **control)
            response = await stub.Ask(request, timeout=CALL_TIMEOUT, metadata=tenant.metadata)
            outcome.source = SOURCES.get(response.source, str(response.source))
            outcome.text = response.text
            outcome.entry_id = response.entry_id
            outcome.matched_prompt = response.matched_prompt
            outcome.stored = response.stored
            outcome.shared = response.shared_llm_call
            return
        stream_request = build_request(pb.AskStreamRequest, prompt, model=MODEL, **control)
        call = stub.AskStream(stream_request, timeout=CALL_TIMEOUT, metadata=tenant.metadata)
        parts: list[str] = []
        outcome.ended_cleanly = False
        async for message in call:
            which = message.WhichOneof("event")
            if which == "start":
                outcome.source = SOURCES.get(message.start.source, str(message.start.source))
                outcome.entry_id = message.start.entry_id
                outcome.matched_prompt = message.start.matched_prompt
                outcome.shared = message.start.shared_llm_call
            elif which == "delta":
                parts.append(message.delta.text)
            elif which == "end":
                outcome.ended_cleanly = True
                outcome.stored = message.end.stored
                outcome.entry_id = message.end.entry_id or outcome.entry_id
        outcome.text = "".join(parts)
    except grpc.aio.AioRpcError as error:
        outcome.code = error.code().name
        outcome.message = error.details() or ""
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as error:  # a client-side failure is a figure too
        outcome.code = f"client {type(error).__name__}"
        outcome.message = str(error)
    finally:
        outcome.ended = time.monotonic()


@dataclass
class Load:
    """The callers, their shared state and what they saw."""

    tenants: dict[str, Tenant]
    paraphrases: list[str]
    started: float
    stop_at: float
    max_calls: int
    think: float
    outcomes: list[Outcome] = field(default_factory=list)
    calls: int = 0

    def pick(self, tenant: Tenant, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        if kind == "repeat":
            if tenant.recent and rng.random() < RECENT_SHARE:
                return kind, rng.choice(tenant.recent)
            return kind, rng.choice(tenant.repeats)
        if kind == "paraphrase":
            return kind, rng.choice(self.paraphrases)
        number = tenant.fresh_next
        tenant.fresh_next += 1
        return kind, fresh_prompt(number)

    def note(self, tenant: Tenant, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if outcome.kind != "repeat":
            tenant.recent.append(outcome.prompt)
        if outcome.code == "OK" and outcome.stored and outcome.entry_id:
            if outcome.entry_id not in tenant.acknowledged and outcome.kind == "fresh":
                tenant.repeats.append(outcome.prompt)
            tenant.acknowledged[outcome.entry_id] = outcome.prompt

    async def worker(self, stub: Any, tenant: Tenant, rng: random.Random) -> None:
        while time.monotonic() < self.stop_at and self.calls < self.max_calls:
            self.calls += 1
            kind, prompt = self.pick(tenant, rng)
            streamed = rng.random() < STREAMED_SHARE
            outcome = Outcome(tenant.name, kind, streamed, prompt, time.monotonic())
            await ask(stub, tenant, prompt, streamed, outcome)
            self.note(tenant, outcome)
            await asyncio.sleep(rng.uniform(0, 2 * self.think))


@dataclass
class Monitor:
    """The server's RSS and health, and the claims in Redis, every couple of seconds."""

    pid: int
    target: str
    redis_url: str
    rss_mb: list[float] = field(default_factory=list)
    not_serving: list[tuple[float, str]] = field(default_factory=list)
    claims_seen: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Claim key -> (first, last) time it was seen in every sample between, in s since the load
    began; a key missing from a sample starts again."""
    claims_held: list[tuple[str, float, float]] = field(default_factory=list)
    """Stretches that ended: (key, first, last)."""

    async def run(self, started: float, stop: asyncio.Event) -> None:
        layout = KeyLayout()
        async with (
            grpc.aio.insecure_channel(self.target) as channel,
            aioredis.Redis.from_url(
                self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            ) as client,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                now = time.monotonic() - started
                with contextlib.suppress(OSError, RuntimeError):
                    self.rss_mb.append(rss_mb(self.pid))
                status = await health_status(health)
                if status != "SERVING":
                    self.not_serving.append((round(now, 1), status))
                with contextlib.suppress(RedisError, OSError):  # Redis is down or paused
                    keys = [
                        key.decode()
                        async for key in client.scan_iter(match=layout.claim("*"), count=1000)
                    ]
                    seen = {key: (self.claims_seen.get(key, (now, now))[0], now) for key in keys}
                    self.claims_held += [
                        (key, *times) for key, times in self.claims_seen.items() if key not in seen
                    ]
                    self.claims_seen = seen
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    def long_claims(self) -> list[dict[str, Any]]:
        """Claims held for longer than any LLM call of this run can take: left behind. One left
        behind makes the next caller of its question wait for an answer nobody is generating."""
        prefix = KeyLayout().claim("")
        stretches = self.claims_held + [(key, *t) for key, t in self.claims_seen.items()]
        return [
            {"entry_id": key[len(prefix) :], "first_s": round(first, 1), "last_s": round(last, 1)}
            for key, first, last in sorted(stretches, key=lambda row: row[1:])
            if last - first > LONGEST_LLM_CALL
        ]


async def health_status(health: Any) -> str:
    try:
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)


async def warm_up(stub: Any, tenant: Tenant) -> list[Outcome]:
    """Stores the tenant's prompts, exact-only so look-alikes each get their own entry."""
    queue = list(tenant.repeats)
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            outcome = Outcome(tenant.name, "warm-up", False, prompt, time.monotonic())
            await ask(stub, tenant, prompt, False, outcome, threshold=0.0)
            outcomes.append(outcome)
            if outcome.code == "OK" and outcome.stored:
                tenant.acknowledged[outcome.entry_id] = prompt

    await asyncio.gather(*(worker() for _ in range(WARMUP_CONCURRENCY)))
    # Not stored but OK: a hit, which only a namespace shared with the other tenant gives here.
    failed = [o for o in outcomes if o.code != "OK" or not (o.stored or o.source in HITS)]
    if failed:
        raise RuntimeError(
            f"warm-up of {tenant.name}: {len(failed)} prompts not stored, e.g. "
            f"{failed[0].code} {failed[0].message!r}"
        )
    log(f"warm-up: {tenant.name} stored {len(tenant.acknowledged)} answers")
    return outcomes


@dataclass
class Run:
    """Everything the checks need from the load phase."""

    tenants: dict[str, Tenant]
    outcomes: list[Outcome]
    faults: list[dict[str, Any]]
    monitor: Monitor
    rss_start_mb: float
    rss_end_mb: float
    health_end: str
    started: float
    """When the load began (time.monotonic()); fault times count from it."""
    load_seconds: float
    channels: int
    cpu: dict[str, float]
    """% of one core over the load: this process (the callers and the Ollama-protocol server),
    `semcache serve`, and the whole machine (anything else running included)."""


async def load_phase(
    args: argparse.Namespace,
    server: ServeProcess,
    redis_process: RedisProcess,
    ollama: FakeOllama,
    tenants: dict[str, Tenant],
    paraphrases: list[str],
) -> Run:
    channel_count = -(-args.clients // WORKERS_PER_CHANNEL)
    channels = open_channels(server.target, channel_count)
    try:
        stubs = [pb_grpc.SemcacheServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
        for tenant in tenants.values():
            await warm_up(stubs[0], tenant)
        rss_start = rss_mb(server.pid)
        load_started = time.monotonic()
        meter = CpuMeter(server.pid)
        load = Load(
            tenants,
            paraphrases,
            load_started,
            load_started + args.seconds,
            args.max_calls,
            args.think_ms / 1000,
        )
        faults = Faults(redis_process, ollama, load_started)
        monitor = Monitor(server.pid, server.target, redis_process.url)
        stop = asyncio.Event()
        names = list(tenants)
        rng = random.Random(args.seed)
        log(f"load: {args.clients} callers for {args.seconds:g} s")
        fault_task = asyncio.create_task(faults.run(timeline(args.seconds)))
        monitor_task = asyncio.create_task(monitor.run(load_started, stop))
        progress = asyncio.create_task(report_progress(load, load_started))
        callers = [
            asyncio.create_task(
                load.worker(
                    stubs[number % len(stubs)],
                    tenants[names[number % len(names)]],
                    random.Random(rng.random()),
                )
            )
            for number in range(args.clients)
        ]
        try:
            # Bounded: callers stop starting calls at stop_at and every call has a deadline.
            bound = args.seconds + CALL_TIMEOUT + 2 * args.think_ms / 1000 + 30
            _, pending = await asyncio.wait(callers, timeout=bound)
            if pending:
                raise RuntimeError(f"{len(pending)} callers still busy after {bound:.0f} s")
            for caller in callers:
                caller.result()  # a caller's own failure ends the run
        finally:
            for task in (*callers, fault_task, progress):
                task.cancel()
            await asyncio.gather(*callers, fault_task, progress, return_exceptions=True)
            await faults.restore()
            stop.set()
            await monitor_task
        load_seconds = time.monotonic() - load_started
        cpu = meter.read()
        log(f"load over: {len(load.outcomes)} calls in {load_seconds:.0f} s")
        rss_end = rss_mb(server.pid)
        async with grpc.aio.insecure_channel(server.target) as channel:
            health_end = await health_status(health_pb2_grpc.HealthStub(channel))
        return Run(
            tenants,
            load.outcomes,
            faults.happened,
            monitor,
            rss_start,
            rss_end,
            health_end,
            load_started,
            load_seconds,
            channel_count,
            cpu,
        )
    finally:
        for channel in channels:
            await channel.close()


async def report_progress(load: Load, started: float) -> None:
    while True:
        await asyncio.sleep(15)
        codes = Counter(outcome.code for outcome in load.outcomes)
        summary = ", ".join(f"{code} {count}" for code, count in codes.items())
        log(f"{len(load.outcomes)} calls: {summary}", started)


# ---------------------------------------------------------------------------------- the checks


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, decode_responses=True)


def scan_entries(client: redis.Redis, layout: KeyLayout) -> Iterator[tuple[str, dict[str, str]]]:
    """(entry id, its text fields) of every entry in Redis."""
    fields = ["prompt", "text", "namespace", "owner"]
    prefix = layout.entry("")
    batch: list[str] = []

    def flush() -> Iterator[tuple[str, dict[str, str]]]:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hmget(key, fields)
        for key, values in zip(batch, pipe.execute(), strict=True):
            yield key[len(prefix) :], dict(zip(fields, values, strict=True))
        batch.clear()

    for key in client.scan_iter(match=layout.entry("*"), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            yield from flush()
    if batch:
        yield from flush()


def leftover_claims(client: redis.Redis, layout: KeyLayout) -> list[dict[str, Any]]:
    """Claims (cross-replica single-flight) still in Redis once every call has ended."""
    prefix = layout.claim("")
    return [
        {"entry_id": key[len(prefix) :], "ttl_ms": client.pttl(key)}
        for key in client.scan_iter(match=layout.claim("*"), count=1000)
    ]


def check(run: Run, client: redis.Redis, ollama: FakeOllama) -> dict[str, Any]:
    """The checks against what the clients saw and what Redis holds after the final restart."""
    layout = KeyLayout()
    tenants = run.tenants
    stored_by = {
        entry_id: name for name, tenant in tenants.items() for entry_id in tenant.acknowledged
    }
    entries = dict(scan_entries(client, layout))

    # Served to the wrong tenant: by the ids the clients were acknowledged, and by Redis.
    wrong_by_id: list[dict[str, Any]] = []
    wrong_in_redis: list[dict[str, Any]] = []
    served_missing: set[str] = set()
    wrong_text: list[dict[str, str]] = []
    unverified = 0
    for number, outcome in enumerate(run.outcomes):
        if outcome.code != "OK":
            continue
        expected_prompt: str | None = outcome.prompt
        if outcome.source in HITS:
            owner = stored_by.get(outcome.entry_id)
            if owner is not None and owner != outcome.tenant:
                wrong_by_id.append(
                    {
                        "call": number,
                        "tenant": outcome.tenant,
                        "entry_id": outcome.entry_id,
                        "owner": owner,
                    }
                )
            entry = entries.get(outcome.entry_id)
            if entry is None:
                served_missing.add(outcome.entry_id)
            else:
                if entry["namespace"] != tenants[outcome.tenant].namespace or (
                    entry["owner"] != outcome.tenant
                ):
                    wrong_in_redis.append(
                        {
                            "call": number,
                            "tenant": outcome.tenant,
                            "entry_id": outcome.entry_id,
                            "namespace": entry["namespace"],
                            "owner": entry["owner"],
                        }
                    )
                if outcome.source == "semantic":
                    expected_prompt = entry["prompt"]
            if outcome.source == "semantic" and entry is None:
                # Gone from Redis (only the negative control loses entries), and the matched
                # prompt is told only to the entry's owner: nothing to compare with then.
                expected_prompt = outcome.matched_prompt or None
        if expected_prompt is None:
            unverified += 1
        elif outcome.text != ollama.reply_for(expected_prompt):
            wrong_text.append(
                {
                    "tenant": outcome.tenant,
                    "source": outcome.source,
                    "streamed": str(outcome.streamed),
                    "prompt": outcome.prompt,
                    "text": outcome.text[:120],
                }
            )

    partial = [
        {"entry_id": entry_id, "prompt": entry["prompt"], "text": entry["text"][:120]}
        for entry_id, entry in entries.items()
        if entry["text"] != ollama.reply_for(entry["prompt"])
    ]
    foreign = [
        {"entry_id": entry_id, "namespace": entry["namespace"], "owner": entry["owner"]}
        for entry_id, entry in entries.items()
        if entry["namespace"] != tenant_namespace(entry["owner"])
    ]
    lost = [
        {"tenant": stored_by[entry_id], "entry_id": entry_id, "prompt": prompt}
        for tenant in tenants.values()
        for entry_id, prompt in tenant.acknowledged.items()
        if entry_id not in entries
    ]
    return {
        "entries_in_redis": len(entries),
        "entries_by_namespace": dict(Counter(entry["namespace"] for entry in entries.values())),
        "acknowledged": sum(len(tenant.acknowledged) for tenant in tenants.values()),
        "wrong_tenant_by_id": wrong_by_id,
        "wrong_tenant_in_redis": wrong_in_redis,
        "foreign": foreign,
        "served_entries_missing": sorted(served_missing),
        "partial_stored": partial,
        "lost": lost,
        "wrong_text": wrong_text,
        "text_unverified": unverified,
    }


def phases(outcome: Outcome, faults: list[dict[str, Any]], started: float) -> frozenset[str]:
    """The faults a call overlapped, each counted until its aftermath is over."""
    began, ended = outcome.began - started, outcome.ended - started
    return frozenset(
        fault["fault"]
        for fault in faults
        if fault["start_s"] <= ended and began <= fault["end_s"] + AFTERMATH[fault["fault"]]
    )


def describe(outcome: Outcome, started: float) -> str:
    """One call in a line, for the slowest of a kind and for failures."""
    rpc = "stream" if outcome.streamed else "unary"
    what = outcome.message[:140] if outcome.code != "OK" else outcome.source
    if outcome.shared:
        what += " (shared_llm_call)"
    return (
        f"{outcome.code} {rpc} {outcome.kind} ({outcome.tenant}) from "
        f"{outcome.began - started:.1f} s, {outcome.ended - outcome.began:.2f} s: {what}"
    )


def latency_rows(outcomes: list[Outcome], started: float) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        key = outcome.source if outcome.code == "OK" else f"error {outcome.code}"
        groups[key].append(outcome)
    order = [*SOURCES.values()]
    rows: dict[str, dict[str, Any]] = {}
    for key in sorted(groups, key=lambda k: (order.index(k) if k in order else len(order), k)):
        members = groups[key]
        stats: dict[str, Any] = percentiles([o.ended - o.began for o in members])
        stats["n"] = len(members)
        for streamed, name in ((False, "unary"), (True, "stream")):
            some = [o.ended - o.began for o in members if o.streamed == streamed]
            stats[f"{name}_p99_ms"] = percentiles(some)["p99_ms"] if some else None
            stats[f"{name}_n"] = len(some)
        slowest = sorted(members, key=lambda o: o.ended - o.began)[-3:]
        stats["slowest"] = [describe(o, started) for o in reversed(slowest)]
        rows[key] = stats
    return rows


def log_summary(path: Path) -> dict[str, Any]:
    """Counts of the server log's levels and Tracebacks, and its distinct messages."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    tracebacks = 0
    other_lines = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        found = LOG_LINE.match(line)
        if found is None:
            other_lines += 1
            continue
        levels[found["level"]] += 1
        text = re.sub(r"\d+(\.\d+)?", "N", found["message"])[:160]
        messages[f"{found['level']} {found['logger']}: {text}"] += 1
    return {
        "path": str(path),
        "levels": dict(levels),
        "tracebacks": tracebacks,
        "other_lines": other_lines,
        "messages": messages.most_common(20),
    }


def summarise(
    run: Run,
    checked: dict[str, Any],
    renewed_claims: list[dict[str, Any]],
    log_info: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """renewed_claims: claims still in Redis a lease after the last call ended."""
    outcomes = run.outcomes
    load_started = run.started
    codes = Counter(o.code for o in outcomes)
    by_rpc = {
        "unary": dict(Counter(o.code for o in outcomes if not o.streamed)),
        "stream": dict(Counter(o.code for o in outcomes if o.streamed)),
    }
    by_kind: dict[str, dict[str, int]] = {}
    for kind in KIND_WEIGHTS:
        by_kind[kind] = dict(
            Counter(o.source if o.code == "OK" else o.code for o in outcomes if o.kind == kind)
        )
    by_phase: dict[str, Counter[str]] = defaultdict(Counter)
    slow_by_phase: Counter[str] = Counter()
    redis_only_failed: list[Outcome] = []
    calm_failed: list[Outcome] = []
    for outcome in outcomes:
        overlapped = phases(outcome, run.faults, load_started)
        name = " + ".join(sorted(overlapped)) or "no fault"
        by_phase[name][outcome.code if outcome.code != "OK" else f"OK {outcome.source}"] += 1
        if outcome.code == "OK" and outcome.ended - outcome.began > SLOW_SECONDS:
            slow_by_phase[name] += 1
        if outcome.code != "OK":
            if not overlapped:
                calm_failed.append(outcome)
            elif overlapped <= REDIS_FAULTS:
                redis_only_failed.append(outcome)
    failed_or_slow = [
        {
            "tenant": o.tenant,
            "kind": o.kind,
            "rpc": "stream" if o.streamed else "unary",
            "prompt": o.prompt,
            "began_s": round(o.began - load_started, 3),
            "seconds": round(o.ended - o.began, 3),
            "code": o.code,
            "message": o.message,
            "source": o.source,
            "shared_llm_call": o.shared,
            "phase": sorted(phases(o, run.faults, load_started)),
        }
        for o in outcomes
        if o.code != "OK" or o.ended - o.began > SLOW_SECONDS
    ]
    errors: Counter[str] = Counter(
        f"{o.code}: {o.message[:140]}" for o in outcomes if o.code != "OK"
    )
    unexpected = {code: n for code, n in codes.items() if code not in EXPECTED_CODES}
    unended = sum(1 for o in outcomes if o.streamed and o.code == "OK" and not o.ended_cleanly)

    def examples(failed: list[Outcome]) -> list[str]:
        return [describe(o, load_started) for o in failed[:5]]

    wrong_tenant = len(
        {row["call"] for row in checked["wrong_tenant_by_id"] + checked["wrong_tenant_in_redis"]}
    )
    rows = [
        ("answers served to the wrong tenant (issue #12)", wrong_tenant),
        ("partial answers stored (issue #12)", len(checked["partial_stored"])),
        ("acknowledged entries lost, after a final SIGKILL (issue #12)", len(checked["lost"])),
        ("entries whose namespace is not their owner's", len(checked["foreign"])),
        ("OK answers whose text is not the full answer", len(checked["wrong_text"])),
        ("calls ending in another status (UNKNOWN, INTERNAL, ...)", sum(unexpected.values())),
        ("streams that ended OK without an end message", unended),
        ("failed calls with only Redis faulty (README: never)", len(redis_only_failed)),
        ("failed calls with no fault active", len(calm_failed)),
        (
            f"claims held longer than any LLM call takes ({LONGEST_LLM_CALL:g} s, issue #18)",
            len(run.monitor.long_claims()),
        ),
        ("claims still renewed a lease after the last call (issue #18)", len(renewed_claims)),
    ]
    checks = [
        {"check": name, "measured": value, "target": 0, "verdict": verdict(value == 0)}
        for name, value in rows
    ]
    checks.append(
        {
            "check": "server SERVING at the end",
            "measured": run.health_end,
            "target": "SERVING",
            "verdict": verdict(run.health_end == "SERVING"),
        }
    )
    return {
        "seconds": round(run.load_seconds, 1),
        "clients": args.clients,
        "think_ms": args.think_ms,
        "max_calls": args.max_calls,
        "seed": args.seed,
        "negative_control": args.negative_control,
        "channels": run.channels,
        "cpu_cores": os.cpu_count(),
        "calls": len(outcomes),
        "calls_per_s": len(outcomes) / run.load_seconds,
        "cpu_pct": run.cpu,
        "codes": dict(codes),
        "codes_by_rpc": by_rpc,
        "by_kind": by_kind,
        "by_phase": {name: dict(counter) for name, counter in sorted(by_phase.items())},
        "ok_slow_by_phase": dict(slow_by_phase),
        "latency": latency_rows(outcomes, load_started),
        "faults": run.faults,
        "errors": errors.most_common(12),
        "failed_or_slow_calls": failed_or_slow[:MAX_LISTED_CALLS],
        "unexpected_codes": unexpected,
        "redis_only_failed_examples": examples(redis_only_failed),
        "calm_failed_examples": examples(calm_failed),
        "checked": checked,
        "checks": checks,
        "claims_held_too_long": run.monitor.long_claims(),
        "claims_renewed_after_load": renewed_claims,
        "rss_mb": {
            "start": round(run.rss_start_mb, 1),
            "max": round(max(run.monitor.rss_mb, default=run.rss_end_mb), 1),
            "end": round(run.rss_end_mb, 1),
        },
        "health": {"end": run.health_end, "not_serving": run.monitor.not_serving},
        "server_log": log_info,
    }


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


MUST_FAIL_IN_NEGATIVE_CONTROL = (
    "answers served to the wrong tenant (issue #12)",
    "acknowledged entries lost, after a final SIGKILL (issue #12)",
)


def exit_status(results: dict[str, Any]) -> int:
    """1 when a check failed; in a negative control, 1 when a line that must fail passed (the
    run could not have shown what it checks)."""
    verdicts = {row["check"]: row["verdict"] for row in results["checks"]}
    if results["negative_control"]:
        return int(any(verdicts[name] == "PASS" for name in MUST_FAIL_IN_NEGATIVE_CONTROL))
    return int(any(value == "FAIL" for value in verdicts.values()))


# ---------------------------------------------------------------------------------- the report


def cell(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"## semcache fault run: {results['seconds']:g} s of load, {args.clients} callers of 2 "
        f"tenants over {results['channels']} channels, gRPC on loopback, "
        f"{results['cpu_cores']} cores\n"
    )
    print(
        f"Mix: {', '.join(f'{k} {v:.0%}' for k, v in KIND_WEIGHTS.items())}; "
        f"{STREAMED_SHARE:.0%} streamed; deadline {CALL_TIMEOUT:g} s; pause between calls up to "
        f"{2 * args.think_ms:g} ms; `semcache serve --redis-timeout {REDIS_TIMEOUT:g}`; Redis "
        f"`{' '.join(NO_PERSISTENCE if args.negative_control else REDIS_AOF)}`.\n"
    )
    if args.negative_control:
        print(
            "**Negative control**: both tenants share one namespace (`--shared-tenants`) and "
            "Redis keeps nothing on disk, so the wrong-tenant and lost-entry lines must FAIL.\n"
        )
    print("### Faults\n")
    print("| from s | to s | fault |")
    print("|---:|---:|---|")
    for fault in results["faults"]:
        print(f"| {fault['start_s']:.1f} | {fault['end_s']:.1f} | {FAULT_TEXT[fault['fault']]} |")

    cpu = results["cpu_pct"]
    print(
        f"\n### Calls by final status ({results['calls']} calls, "
        f"{results['calls_per_s']:.0f} a second)\n"
    )
    print(
        f"CPU over the load, in % of one core: this process (callers and the Ollama-protocol "
        f"server) {cpu['client_cpu_pct']:.0f}, `semcache serve` {cpu['server_cpu_pct']:.0f}, "
        f"the machine {cpu['machine_cpu_pct']:.0f} of {100 * results['cpu_cores']}.\n"
    )
    print("| status | unary | stream | total |")
    print("|---|---:|---:|---:|")
    by_rpc = results["codes_by_rpc"]
    for code, total in sorted(results["codes"].items(), key=lambda item: -item[1]):
        flag = "" if code in EXPECTED_CODES else " (flagged)"
        print(
            f"| {code}{flag} | {by_rpc['unary'].get(code, 0)} | "
            f"{by_rpc['stream'].get(code, 0)} | {total} |"
        )
    print("\n| asked | " + " | ".join(results["by_kind"]) + " |")
    print("|---|" + "---:|" * len(results["by_kind"]))
    answers = sorted({answer for row in results["by_kind"].values() for answer in row})
    for answer in answers:
        cells = " | ".join(str(row.get(answer, 0)) for row in results["by_kind"].values())
        label = f"OK {answer}" if answer in SOURCES.values() else answer
        print(f"| {label} | {cells} |")

    aftermath = ", ".join(f"{name} {seconds:g} s" for name, seconds in AFTERMATH.items())
    print(
        "\n### By phase: the faults a call overlapped, each counted for calls that began up to "
        f"a few seconds after it ended ({aftermath})\n"
    )
    print(f"| phase | calls | outcomes | OK after more than {SLOW_SECONDS:g} s |")
    print("|---|---:|---|---:|")
    slow = results["ok_slow_by_phase"]
    for name, counts in results["by_phase"].items():
        text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {sum(counts.values())} | {text} | {slow.get(name, 0)} |")

    print("\n### Latency by source (to the last message), errors by status\n")
    print("| answer | n | p50 ms | p99 ms | max ms | unary p99 ms | stream p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, stats in results["latency"].items():
        print(
            f"| {key} | {stats['n']} | {cell(stats['p50_ms'])} | {cell(stats['p99_ms'])} | "
            f"{cell(stats['max_ms'])} | {cell(stats['unary_p99_ms'])} | "
            f"{cell(stats['stream_p99_ms'])} |"
        )

    print("\n### Checks\n")
    print("| check | measured | target | verdict |")
    print("|---|---|---|---|")
    for row in results["checks"]:
        print(f"| {row['check']} | {row['measured']} | {row['target']} | {row['verdict']} |")
    print_details(results)


def print_details(results: dict[str, Any]) -> None:
    checked = results["checked"]
    print("\n### Details\n")
    print(
        f"- Redis after the final SIGKILL and restart: {checked['entries_in_redis']} entries "
        f"({', '.join(f'{k} {v}' for k, v in checked['entries_by_namespace'].items())}); "
        f"{checked['acknowledged']} acknowledged (`stored=true`) during the run."
    )
    long_claims = results["claims_held_too_long"]
    firsts = sorted({claim["first_s"] for claim in long_claims})
    print(
        f"- Claims (single-flight, in Redis) held for longer than any LLM call takes "
        f"({LONGEST_LLM_CALL:g} s; sampled every 2 s while Redis answers): {len(long_claims)}"
        + (f", first seen at {firsts[:12]} s" if long_claims else "")
    )
    claims = results["claims_left_after_load"]
    if claims:
        print(
            f"- Claims left in Redis 1 s after the last call ended: {len(claims)} (TTLs "
            f"{sorted(claim['ttl_ms'] for claim in claims)[:10]} ms)"
        )
    renewed = results["claims_renewed_after_load"]
    if renewed:
        print(
            f"- Claims still in Redis {1 + CLAIM_LEASE:g} s after the last call ended (renewed "
            f"for nobody): {len(renewed)} (TTLs {sorted(c['ttl_ms'] for c in renewed)[:10]} ms)"
        )
    if checked["served_entries_missing"]:
        print(f"- Served entries no longer in Redis: {len(checked['served_entries_missing'])}")
    if checked["text_unverified"]:
        print(f"- OK answers whose text could not be checked: {checked['text_unverified']}")
    rss = results["rss_mb"]
    print(
        f"- Server RSS: {rss['start']:.0f} MB after warm-up, {rss['max']:.0f} MB at most, "
        f"{rss['end']:.0f} MB at the end; health at the end: {results['health']['end']}."
    )
    print("- Slowest calls of each kind:")
    for stats in results["latency"].values():
        for line in stats["slowest"][:2]:
            print(f"  - {line}")
    not_serving = results["health"]["not_serving"]
    if not_serving:
        print(f"- Health not SERVING during the load: {not_serving[:10]}")
    server_log = results["server_log"]
    levels = server_log["levels"]
    print(
        f"- Server log (`{server_log['path']}`): ERROR {levels.get('ERROR', 0)}, "
        f"CRITICAL {levels.get('CRITICAL', 0)}, WARNING {levels.get('WARNING', 0)}, "
        f"Traceback {server_log['tracebacks']}, other lines {server_log['other_lines']}."
    )
    for message, count in server_log["messages"][:12]:
        print(f"  - {count} x `{message}`")
    if results["errors"]:
        print("- Most frequent errors the clients saw:")
        for message, count in results["errors"]:
            print(f"  - {count} x `{message}`")
    for title, key in (
        ("Failed with only Redis faulty", "redis_only_failed_examples"),
        ("Failed with no fault active", "calm_failed_examples"),
    ):
        if results[key]:
            print(f"- {title}, e.g.:")
            for line in results[key]:
                print(f"  - {line}")
    for title, key in (
        ("Wrong tenant (ids)", "wrong_tenant_by_id"),
        ("Wrong tenant (Redis)", "wrong_tenant_in_redis"),
        ("Partial answers stored", "partial_stored"),
        ("Lost", "lost"),
        ("Wrong text", "wrong_text"),
        ("Namespace not the owner's", "foreign"),
    ):
        if checked[key]:
            print(f"- {title}, e.g.: {checked[key][:3]}")


# ---------------------------------------------------------------------------------- processes


class LogDrain:
    """Copies the server's output to a file on a thread, so its pipe never fills."""

    def __init__(self, source: IO[str], path: Path) -> None:
        self._source = source
        self.path = path
        self._thread = threading.Thread(target=self._copy, name="serve-log", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        with self.path.open("a", encoding="utf-8") as sink:
            for line in self._source:
                sink.write(line)
                sink.flush()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def write_calls(run: Run, path: Path) -> None:
    """Every call, one JSON object a line (kept with `--keep`), to follow one question through."""
    with path.open("w", encoding="utf-8") as sink:
        for o in run.outcomes:
            row = {
                "tenant": o.tenant,
                "kind": o.kind,
                "rpc": "stream" if o.streamed else "unary",
                "prompt": o.prompt,
                "began_s": round(o.began - run.started, 3),
                "seconds": round(o.ended - o.began, 3),
                "code": o.code,
                "message": o.message,
                "source": o.source,
                "entry_id": o.entry_id,
                "stored": o.stored,
                "shared_llm_call": o.shared,
            }
            sink.write(json.dumps(row) + "\n")


def write_keys(path: Path) -> dict[str, str]:
    keys = {name: secrets.token_hex(24) for name in TENANTS}
    path.write_text("".join(f"{name}:{key}\n" for name, key in keys.items()))
    return keys


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM unwind the run, so every process it started is stopped. SIGINT is set
    explicitly: a shell that starts this in the background leaves it ignored."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def measure(args: argparse.Namespace, scratch: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    ollama = stack.enter_context(LongOllama(behaviour=normal_behaviour()))
    redis_process = RedisProcess(
        scratch / "redis",
        extra_args=[
            *(NO_PERSISTENCE if args.negative_control else REDIS_AOF),
            "--logfile",
            str(scratch / "redis.log"),
        ],
    )
    stack.callback(redis_process.stop)
    redis_process.start()
    keys = write_keys(scratch / "api-keys")
    server = ServeProcess(
        scratch / "state",
        ollama.url,
        [
            "--redis-url",
            redis_process.url,
            "--api-keys-file",
            str(scratch / "api-keys"),
            "--log-level",
            "WARNING",
            "--redis-timeout",
            str(REDIS_TIMEOUT),
            *(["--shared-tenants", ",".join(TENANTS)] if args.negative_control else []),
        ],
        capture_output=True,
    )

    def stop_server() -> None:
        if server.process is not None and server.running():
            terminate(server.process, within=15)

    stack.callback(stop_server)
    server.start()
    assert server.process is not None and server.process.stdout is not None
    drain = LogDrain(server.process.stdout, scratch / "serve.log")
    log(f"semcache serve pid {server.pid} on {server.target}, Redis {redis_process.url}")

    pairs = prompts(3 * POOL_PAIRS)
    shared, only_alpha, only_bravo = (
        pairs[:POOL_PAIRS],
        pairs[POOL_PAIRS : 2 * POOL_PAIRS],
        pairs[2 * POOL_PAIRS :],
    )
    own = {TENANTS[0]: only_alpha, TENANTS[1]: only_bravo}
    tenants = {
        name: Tenant(name, keys[name], [cached for cached, _ in shared + own[name]])
        for name in TENANTS
    }
    paraphrases = [paraphrase for _, paraphrase in pairs]
    run = asyncio.run(load_phase(args, server, redis_process, ollama, tenants, paraphrases))

    time.sleep(1)  # the last LLM calls' claims are released as they close
    with redis_client(redis_process.url) as client:
        claims = leftover_claims(client, KeyLayout())
    time.sleep(CLAIM_LEASE)  # a claim whose release was lost has run out by now
    with redis_client(redis_process.url) as client:
        renewed_claims = leftover_claims(client, KeyLayout())
    log("final Redis SIGKILL and restart from the AOF")
    redis_process.stop()
    redis_process.start()
    with redis_client(redis_process.url) as client:
        checked = check(run, client, ollama)
    stop_server()
    drain.join(5)
    results = summarise(run, checked, renewed_claims, log_summary(drain.path), args)
    results["claims_left_after_load"] = claims
    write_calls(run, scratch / "calls.jsonl")
    log("done")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="length of the load (>= 60)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:g} s: a smoke run")
    parser.add_argument("--clients", type=int, default=64, help="concurrent callers")
    parser.add_argument(
        "--think-ms", type=float, default=150.0, help="mean pause of a caller between calls"
    )
    parser.add_argument("--max-calls", type=int, default=400_000, help="hard cap on calls")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--negative-control",
        action="store_true",
        help="both tenants in one shared namespace (--shared-tenants) and Redis without AOF: "
        "the wrong-tenant and lost-entry lines must FAIL, which shows that they can",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the server and Redis logs and every call (calls.jsonl) in this directory",
    )
    add_json_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds = QUICK_SECONDS
    if args.seconds < CYCLE_SECONDS or args.clients < 2:
        parser.error(f"--seconds of at least {CYCLE_SECONDS:g} and --clients of at least 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    interrupt_on_signals()
    with tempfile.TemporaryDirectory(prefix="semcache-fault-") as scratch:
        try:
            with contextlib.ExitStack() as stack:
                results = measure(args, Path(scratch), stack)
        except KeyboardInterrupt:
            print("interrupted: every process this run started is stopped", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for name in ("serve.log", "redis.log", "calls.jsonl"):
                    with contextlib.suppress(OSError):
                        (args.keep / name).write_bytes((Path(scratch) / name).read_bytes())
    if args.keep:
        results["server_log"]["path"] = str(args.keep / "serve.log")
    if args.json == "-":
        json.dump(results, sys.stdout, indent=2, default=str)
        print()
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print_report(results, args)
    raise SystemExit(exit_status(results))


if __name__ == "__main__":
    main()
