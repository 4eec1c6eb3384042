"""How often semantic hits are right: the protocol of shared/data/README.md, run through the cache.

    .venv/bin/python -m bench.accuracy --data ../shared/data/qqp_dev.jsonl \\
        [--data ...] [--split all|calibration|heldout] [--limit N] [--json]

Everything between the query and the verdict is the real code: the cache chain that the
composition root (`app.build_cache`) wires for the server, with its exact and semantic layers
over a real redis-server (`RedisProcess`), and the real policy objects. Only two parts are
stand-ins: the LLM (a stub that answers every miss; storing is off while scoring) and the
embedder, which serves vectors computed beforehand in batches, because embedding 40k prompts one
by one would take most of an hour. The cost of a real embedding is
measured separately on a sample and printed next to the tables.

Per data file, the cache is loaded with every distinct `cached` prompt (each with its own
answer); then every `query` of the chosen split is asked once, in file order, once per policy:
the static thresholds of the sweep, optionally guarded thresholds, and the embedder's default
policy (`default_policy`). The cache holds every cached prompt of the file under every split:
``--split heldout`` asks only the queries that calibration never saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from semcache_server import app
from semcache_server.adapters.indexes.exact import ExactIndex
from semcache_server.calibration.command import open_embedder
from semcache_server.calibration.data import (
    SPLITS,
    Embedded,
    LabelledPair,
    Score,
    prepare_file,
    read_pairs,
)
from semcache_server.core.domain import (
    CacheControl,
    Candidate,
    EmbedderUnavailable,
    FinishReason,
    Judgement,
    Query,
    SemanticStatus,
    Source,
    TextDelta,
)
from semcache_server.core.policy import (
    CalibratedPolicy,
    GuardedThresholdPolicy,
    ThresholdPolicy,
    default_policy,
)
from semcache_server.core.ports import (
    Embedder,
    Embeddings,
    HitPolicy,
    LLMEvent,
    LLMFinish,
    RequestSent,
)
from semcache_server.settings import Settings
from semcache_server.testing.redis_process import RedisProcess
from tqdm import tqdm

from bench.harness import percentiles

STATIC_THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.95, 0.97, 0.99)
MODEL = "bench-model"
EMBED_SAMPLE = 200


class PrecomputedEmbedder:
    """Serves vectors embedded beforehand by the real model, under that model's id."""

    def __init__(self, model_id: str, embedded: Embedded) -> None:
        self._model_id = model_id
        self._embedded = embedded

    @property
    def model_id(self) -> str:
        return self._model_id

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        try:
            return Embeddings(self._embedded.of(texts), [""] * len(texts))
        except KeyError as error:
            raise EmbedderUnavailable(f"no precomputed vector for {error}") from None

    async def aclose(self) -> None:
        return None


class AnsweringLLM:
    """Answers every prompt at once; the answer names the prompt, like a real one would."""

    async def stream(
        self, query: Query, on_sent: RequestSent | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        yield TextDelta(f"the answer to: {query.prompt}")
        yield LLMFinish(FinishReason.STOP, prompt_tokens=1, completion_tokens=1)

    async def aclose(self) -> None:
        return None


class TimedPolicy:
    """Wraps a policy to time its judge calls: the policy's own share of a lookup."""

    def __init__(self, inner: HitPolicy) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    @property
    def floor(self) -> float:
        return self.inner.floor

    @property
    def candidates(self) -> int:
        return self.inner.candidates

    async def judge(self, prompt: str, candidates: Sequence[Candidate]) -> Judgement:
        started = time.perf_counter()
        judgement = await self.inner.judge(prompt, candidates)
        self.seconds.append(time.perf_counter() - started)
        return judgement


@dataclass
class PolicyResult:
    name: str
    score: Score
    rejected_by_guard: int
    exact_hits: int
    lookup_ms: dict[str, float]
    judge_us: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            **self.score.as_dict(),
            "exact_hits": self.exact_hits,
            "rejected_by_guard": self.rejected_by_guard,
            "lookup_p50_ms": self.lookup_ms["p50_ms"],
            "lookup_p99_ms": self.lookup_ms["p99_ms"],
            "judge_p50_us": self.judge_us.get("p50_ms", math.nan) * 1000,
            "judge_p99_us": self.judge_us.get("p99_ms", math.nan) * 1000,
            "judge_calls": int(self.judge_us.get("n", 0)),
        }


@dataclass
class FileResult:
    embedder: str
    data: str
    split: str
    cache_entries: int
    results: list[PolicyResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "data": self.data,
            "split": self.split,
            "cache_entries": self.cache_entries,
            "policies": [result.as_dict() for result in self.results],
        }


def describe(policy: HitPolicy) -> str:
    if isinstance(policy, CalibratedPolicy):
        return (
            f"default: calibrated [{policy.gray_floor:.3f},{policy.accept_above:.4f}) "
            f"cut {policy.cutoff:.2f}"
        )
    if isinstance(policy, GuardedThresholdPolicy):
        return f"default: guarded {policy.threshold:.2f}"
    return f"default: {policy!r}"


class Bench:
    """One loaded cache (a data file's cached prompts) that policies are scored against."""

    def __init__(self, redis_url: str, embedder: Embedder) -> None:
        self._redis_url = redis_url
        self._client = aioredis.Redis.from_url(redis_url)
        self._embedder = embedder
        self._index = ExactIndex()
        self.prompt_of: dict[str, str] = {}

    async def _cache(self, policy: HitPolicy) -> app.Cache:
        """The server's own wiring, with the precomputed embedder, the answering LLM, the policy
        under test, and the index loaded once for every policy."""
        return await app.build_cache(
            Settings(redis_timeout=10.0),
            self._redis_url,
            embedder=self._embedder,
            llm=AnsweringLLM(),
            policy=policy,
            index=self._index,
        )

    async def load(self, cached: Sequence[str], label: str) -> None:
        """Store every cached prompt with its own answer, through the chain's own store path."""
        await self._client.flushdb()
        self._index = ExactIndex()
        self.prompt_of = {}
        cache = await self._cache(ThresholdPolicy(1.0))
        try:
            for prompt in tqdm(cached, desc=label, unit="entry"):
                answer = await cache.chain.ask(Query(prompt, MODEL), CacheControl(skip_lookup=True))
                if not answer.completion.stored:
                    raise RuntimeError(f"could not store {prompt!r}: is Redis up?")
                self.prompt_of[answer.completion.entry_id] = prompt
        finally:
            await cache.aclose()

    async def score(
        self, name: str, policy: HitPolicy, asked: Sequence[LabelledPair]
    ) -> PolicyResult:
        timed = TimedPolicy(policy)
        cache = await self._cache(timed)
        hits = correct = rejected = exact = 0
        lookups: list[float] = []
        for pair in tqdm(asked, desc=f"  {name}", unit="query"):
            answer = await cache.chain.ask(Query(pair.query, MODEL), CacheControl(skip_store=True))
            origin = answer.origin
            lookups.append(origin.lookup_seconds)
            if origin.semantic_status is SemanticStatus.REJECTED_BY_GUARD:
                rejected += 1
            if origin.source is not Source.LLM:
                hits += 1
                exact += origin.source is Source.EXACT
                hit_prompt = self.prompt_of[origin.entry_id]
                correct += hit_prompt == pair.cached and pair.duplicate
        await cache.aclose()
        if cache.store_outages.failures:
            raise RuntimeError("Redis failed during the run; the figures would be wrong")
        score = Score(
            queries=len(asked),
            duplicates=sum(pair.duplicate for pair in asked),
            hits=hits,
            correct=correct,
        )
        return PolicyResult(
            name,
            score,
            rejected,
            exact,
            percentiles(lookups),
            percentiles(timed.seconds) if timed.seconds else {},
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def policies_for(
    model_id: str,
    thresholds: Sequence[float],
    guarded: Sequence[float],
    extra: Sequence[CalibratedPolicy],
) -> list[tuple[str, HitPolicy]]:
    chosen: list[tuple[str, HitPolicy]] = [
        (f"static {t:.2f}", ThresholdPolicy(t)) for t in thresholds
    ]
    chosen += [(f"guarded {t:.2f}", GuardedThresholdPolicy(t)) for t in guarded]
    for policy in extra:
        if policy.embedder == model_id:
            chosen.append((describe(policy).replace("default", "file"), policy))
    default = default_policy(model_id)
    chosen.append((describe(default), default))
    return chosen


async def measure_embedding(embedder: Embedder, texts: Sequence[str]) -> dict[str, float]:
    """The real cost of embedding one query, which the precomputed vectors leave out."""
    seconds = []
    for text in texts:
        started = time.perf_counter()
        await embedder.embed([text])
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


async def run(
    data: Sequence[Path],
    embedder: Embedder,
    *,
    split: str = "all",
    limit: int | None = None,
    thresholds: Sequence[float] = STATIC_THRESHOLDS,
    guarded: Sequence[float] = (),
    extra: Sequence[CalibratedPolicy] = (),
    cache_dir: Path | None = None,
    redis_url: str | None = None,
) -> list[FileResult]:
    """Score every policy on every data file with one embedder; the embedder stays open."""
    results: list[FileResult] = []
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="semcache-acc-")))
            redis = RedisProcess(scratch / "redis").start()
            stack.callback(redis.stop)
            redis_url = redis.url
        for path in data:
            prepared = await prepare_file(
                path, embedder, split=split, limit=limit, cache_dir=cache_dir
            )
            bench = Bench(redis_url, PrecomputedEmbedder(embedder.model_id, prepared.embedded))
            try:
                cached = prepared.cached
                await bench.load(cached, f"loading {len(cached)} entries")
                result = FileResult(embedder.model_id, path.name, split, len(cached))
                for name, policy in policies_for(embedder.model_id, thresholds, guarded, extra):
                    result.results.append(await bench.score(name, policy, prepared.asked))
            finally:
                await bench.aclose()
            results.append(result)
    return results


def _percent(value: float) -> str:
    return "   -  " if math.isnan(value) else f"{value:6.3f}"


def format_table(result: FileResult) -> str:
    first = result.results[0].score if result.results else Score(0, 0, 0, 0)
    lines = [
        f"== {result.embedder} | {result.data} | split {result.split}: {first.queries} queries, "
        f"{first.duplicates} duplicates, {result.cache_entries} cached prompts",
        f"{'policy':<42} {'hits':>6} {'correct':>7} {'false':>6} {'prec':>6} {'recall':>6} "
        f"{'FHR':>7} {'guard':>6} {'lookup p50/p99 ms':>18} {'judge p50/p99 us':>17}",
    ]
    for row in result.results:
        s = row.score
        judge = (
            f"{row.judge_us['p50_ms'] * 1000:7.1f}/{row.judge_us['p99_ms'] * 1000:7.1f}"
            if row.judge_us
            else f"{'-':>15}"
        )
        lines.append(
            f"{row.name:<42} {s.hits:6d} {s.correct:7d} {s.false_hits:6d} {_percent(s.precision)} "
            f"{_percent(s.recall)} {s.false_hit_rate:7.4f} {row.rejected_by_guard:6d} "
            f"{row.lookup_ms['p50_ms']:8.2f}/{row.lookup_ms['p99_ms']:7.2f}  {judge}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, action="append", required=True, help="JSONL pairs")
    parser.add_argument("--split", choices=SPLITS, default="all")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs of each file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--thresholds", type=float, nargs="*", default=list(STATIC_THRESHOLDS))
    parser.add_argument(
        "--guarded", type=float, nargs="*", default=[], help="guarded static thresholds to add"
    )
    parser.add_argument(
        "--policy", type=Path, action="append", default=[], help="extra calibrated policy JSON"
    )
    parser.add_argument("--ollama-host", default=os.environ.get("OLLAMA_HOST"))
    parser.add_argument("--ollama-embed-model", default=None, help="default: as semcache serve")
    parser.add_argument("--no-ollama", action="store_true", help="only the local embedder")
    parser.add_argument("--embedding-cache", type=Path, default=None, help="directory for .npy")
    return parser


async def _main(args: argparse.Namespace) -> int:
    extra = [CalibratedPolicy.load(path) for path in args.policy]
    report: dict[str, Any] = {"results": [], "skipped": [], "embedding_ms": {}}
    embedders: list[tuple[str, Embedder]] = [("local", open_embedder("local"))]
    if not args.no_ollama:
        ollama = open_embedder(
            "ollama", ollama_host=args.ollama_host, ollama_embed_model=args.ollama_embed_model
        )
        try:
            await ollama.embed(["is the embedding model there?"])
            embedders.append(("ollama", ollama))
        except EmbedderUnavailable as error:
            reason = f"skip {ollama.model_id}: not reachable ({error})"
            report["skipped"].append({"embedder": ollama.model_id, "reason": str(error)})
            print(reason, file=sys.stderr if args.json else sys.stdout, flush=True)
            await ollama.aclose()
    for _, embedder in embedders:
        try:
            sample = [pair.query for pair in read_pairs(args.data[0], EMBED_SAMPLE)]
            embedding = await measure_embedding(embedder, sample)
            report["embedding_ms"][embedder.model_id] = embedding
            results = await run(
                args.data,
                embedder,
                split=args.split,
                limit=args.limit,
                thresholds=args.thresholds,
                guarded=args.guarded,
                extra=extra,
                cache_dir=args.embedding_cache,
            )
        finally:
            await embedder.aclose()
        report["results"] += [result.as_dict() for result in results]
        if not args.json:
            print(
                f"\nembedding one query with {embedder.model_id} (not in the lookup figures): "
                f"p50 {embedding['p50_ms']:.2f} ms, p99 {embedding['p99_ms']:.2f} ms",
                flush=True,
            )
            for result in results:
                print("\n" + format_table(result), flush=True)
    if args.json:
        print(json.dumps(_finite(report), indent=2))
    return 0


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined figure (precision without hits) becomes null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
