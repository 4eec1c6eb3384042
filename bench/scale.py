"""The server's vector index at scale: build, lookup, recall, snapshot and memory of `TieredIndex`.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.scale [--sizes 10000,100000,1000000] \\
        [--data-dir ../shared/data] [--embedding-cache DIR] [--json PATH]

One partition holds every entry, as the largest partition of a busy cache would. It is built as
the server's rebuild builds it (`add_many` in chunks of 50,000, then `wait_for_promotions`), with
the default `GraphParameters` and `graph_rows`, and searched for k = 1 as the semantic layer
searches it: on the calling thread (`nearest_now`) and from an event loop (`nearest`, which hops
to a worker thread).

Data. Every distinct prompt of the shared labelled pairs (``../shared/data/*.jsonl``, some 112k),
embedded once by the local embedder through `calibration.data.prepare_file`, whose per-file .npy
cache calibration and bench.accuracy share. 2,000 random prompts are held out as queries and
never inserted; the others, in a fixed random order, are the real entries, and a size up to
their number takes the first N of them. A larger size adds perturbed copies of the real entries:

    copy   = normalise(source + sigma * g),  g ~ N(0, I_384) in float32,
    source = a uniformly random real entry,  sigma = sqrt((1 / c**2 - 1) / 384),
    c      = the cosine of a random real entry to its nearest other real entry,

so a copy's cosine to its source (about c, since |g|**2 is about 384) follows the real prompts'
nearest-neighbour cosines, exact duplicates (c = 1, sigma = 0) included. Copies are generated
chunk by chunk from a seed fixed by the chunk, so the build, the exact search and the rescoring
regenerate the same vectors and no 1.5 GB matrix is ever held.

Queries. At every size, the 2,000 held-out real prompts plus 2,000 perturbed queries (the same
recipe applied to random real entries of that size), so that queries have near neighbours as in
real use. Recall@1 is against exact float32 search over the same vectors: "ids" counts queries
answered by the exact nearest entry, "as similar" by an entry whose exact cosine is within 1e-4
of the best one (distinct prompts can have identical vectors, and so do copies with sigma = 0).

Check. At 30,000 entries, one index of real prompts and one of copies (made from a seed pool of
real prompts that is as small a share of the set as the real prompts are of the 1M set, the
seeds included as at 1M) answer the same kinds of queries; their recall@1 side by side shows
whether copies are as hard for the graph as real prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# onnxruntime must be loaded before usearch: usearch 2.26's extension exports the libstdc++ it
# links statically, and onnxruntime 1.32 loaded after it crashes (SIGSEGV in std::codecvt).
import onnxruntime  # noqa: F401
from semcache_server.adapters.indexes.tiered import (
    DEFAULT_GRAPH_ROWS,
    GraphParameters,
    TieredIndex,
)
from semcache_server.adapters.replication import _REBUILD_CHUNK
from semcache_server.calibration.command import open_embedder
from semcache_server.calibration.data import prepare_file
from semcache_server.core.ports import Neighbour
from tqdm import tqdm

from bench.harness import percentiles, rss_mb

Matrix = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EMBEDDING_CACHE = Path.home() / ".cache" / "semcache" / "bench"
SIZES = (10_000, 100_000, 1_000_000)
CHUNK_ROWS = _REBUILD_CHUNK
"""Rows a build adds at once, and rows a chunk of copies is generated with (as the rebuild)."""
HELD_OUT = 2_000
PERTURBED_QUERIES = 2_000
CHECK_ROWS = 30_000
REFERENCE_ROWS = 1_000_000
"""The check's copies come from as small a share of real seeds as the 1M set's."""
NEIGHBOUR_SAMPLE = 2_000
"""Real entries whose nearest-neighbour cosines give the copies' cosines to their sources."""
STATS_SAMPLE = 1_000
"""Entries of a check set whose nearest-neighbour cosines are printed."""
EXACT_ROWS = 8_192
"""Rows scored at once by the exact search (8,192 x 4,000 queries in float32: 131 MB)."""
SAME_COSINE = 1e-4
"""A found entry this close to the best cosine counts as found (duplicates tie)."""
WARM_UP = 200
PARTITION = "bench"
SEED = 20_250_601
GOAL_ROWS = 1_000_000
GOAL_P99_MS = 2.0
GOAL_RECALL = 0.99
GOAL_LOAD_S = 30.0
GOAL_RSS_BYTES = 2 * 2**30


# --- data -----------------------------------------------------------------------------------


async def distinct_prompt_vectors(files: Sequence[Path], cache_dir: Path) -> Matrix:
    """One unit vector per distinct prompt of the data files, in a fixed order.

    Each file is embedded as `prepare_file` embeds it for calibration and bench.accuracy, so
    their cached .npy files serve here too and nothing is embedded twice.
    """
    embedder = open_embedder("local")
    seen: set[str] = set()
    parts: list[Matrix] = []
    try:
        for path in files:
            prepared = await prepare_file(
                path, embedder, split="all", limit=None, cache_dir=cache_dir
            )
            fresh = [text for text in prepared.embedded.rows if text not in seen]
            seen.update(fresh)
            parts.append(prepared.embedded.of(fresh))
    finally:
        await embedder.aclose()
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def perturb(sources: Matrix, cosines: Matrix, rng: np.random.Generator) -> Matrix:
    """normalise(source + sigma * N(0, I)), sigma set so each row's cosine to its source is
    about the cosine asked for it (|noise|**2 is about sigma**2 * dimensions)."""
    dimensions = sources.shape[1]
    wanted = np.clip(cosines, 0.05, 1.0)
    sigma = np.sqrt((1.0 / wanted**2 - 1.0) / dimensions).astype(np.float32)
    rows = rng.standard_normal(sources.shape, dtype=np.float32)
    rows *= sigma[:, None]
    rows += sources
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


@dataclass(frozen=True)
class Corpus:
    """size entries: the first rows of sources, then perturbed copies of random sources.

    A chunk of copies is drawn from a generator seeded by its first row, so any pass over the
    entries (build, exact search, rescoring) sees the same vectors without keeping them.
    """

    sources: Matrix
    size: int
    cosines: Matrix
    """Cosines of a copy to its source, drawn from at random."""
    seed: int

    @property
    def real(self) -> int:
        return min(self.size, len(self.sources))

    @property
    def copies(self) -> int:
        return self.size - self.real

    def chunk(self, start: int) -> Matrix:
        """Rows start .. start + CHUNK_ROWS (start a multiple of CHUNK_ROWS)."""
        stop = min(start + CHUNK_ROWS, self.size)
        real = self.sources[start : min(stop, self.real)]
        first_copy = max(start, self.real)
        if first_copy >= stop:
            return real
        rng = np.random.default_rng([self.seed, start])
        picked = rng.integers(0, len(self.sources), stop - first_copy)
        copies = perturb(self.sources[picked], rng.choice(self.cosines, stop - first_copy), rng)
        return copies if len(real) == 0 else np.concatenate([real, copies])

    def chunks(self, label: str) -> Iterator[tuple[int, Matrix]]:
        with tqdm(total=self.size, desc=label, unit="entry", unit_scale=True) as progress:
            for start in range(0, self.size, CHUNK_ROWS):
                vectors = self.chunk(start)
                yield start, vectors
                progress.update(len(vectors))

    def rows(self, wanted: Rows) -> Matrix:
        """The vectors of some rows, regenerating only the chunks that hold them."""
        found = np.empty((len(wanted), self.sources.shape[1]), dtype=np.float32)
        chunk_of = wanted // CHUNK_ROWS
        for number in np.unique(chunk_of).tolist():
            vectors = self.chunk(number * CHUNK_ROWS)
            inside = chunk_of == number
            found[inside] = vectors[wanted[inside] - number * CHUNK_ROWS]
        return found


def entry_id(row: int) -> str:
    """A 32-hex id whose first 64 bits (the usearch key) are the row number."""
    return f"{row:016x}" * 2


def row_of(entry: str) -> int:
    return int(entry[:16], 16)


def exact_best(
    chunks: Iterator[tuple[int, Matrix]], queries: Matrix, exclude: Rows | None = None
) -> tuple[Rows, Matrix]:
    """Row and cosine of each query's most similar entry, by float32 brute force (the first
    row on ties); exclude names a row per query that may not answer it (the query itself)."""
    best_rows = np.full(len(queries), -1, dtype=np.int64)
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    every = np.arange(len(queries))
    for start, chunk in chunks:
        for offset in range(0, len(chunk), EXACT_ROWS):
            block = chunk[offset : offset + EXACT_ROWS]
            first = start + offset
            scores = queries @ block.T
            if exclude is not None:
                inside = np.flatnonzero((exclude >= first) & (exclude < first + len(block)))
                scores[inside, exclude[inside] - first] = -np.inf
            column = scores.argmax(axis=1)
            top = scores[every, column]
            better = top > best
            best_rows[better] = first + column[better]
            best[better] = top[better]
    return best_rows, best


def nearest_cosines(corpus: Corpus, sample: Rows, label: str) -> Matrix:
    """The cosine of each sampled entry to its nearest other entry."""
    _, best = exact_best(corpus.chunks(label), corpus.rows(sample), exclude=sample)
    return best


def queries_for(corpus: Corpus, held_out: Matrix, seed: int) -> Matrix:
    """The held-out real prompts, then perturbed copies of random real entries of the corpus."""
    rng = np.random.default_rng([seed, corpus.size, len(corpus.sources)])
    picked = rng.integers(0, corpus.real, PERTURBED_QUERIES)
    perturbed = perturb(corpus.sources[picked], rng.choice(corpus.cosines, len(picked)), rng)
    return np.ascontiguousarray(np.concatenate([held_out, perturbed]))


def kinds(held_out: int, queries: int) -> dict[str, slice]:
    return {"held-out": slice(0, held_out), "perturbed": slice(held_out, queries)}


def quantiles(values: Matrix) -> dict[str, float]:
    """p10/p50/p90 and the share at cosine 1 (identical vectors)."""
    p10, p50, p90 = np.percentile(values, [10, 50, 90]).tolist()
    return {"p10": p10, "p50": p50, "p90": p90, "identical": float(np.mean(values >= 0.9999))}


def format_quantiles(stats: dict[str, float]) -> str:
    return (
        f"p10 {stats['p10']:.3f} / p50 {stats['p50']:.3f} / p90 {stats['p90']:.3f}"
        f" ({100 * stats['identical']:.1f}% identical)"
    )


# --- the index ------------------------------------------------------------------------------


def build(corpus: Corpus, graph_rows: int, label: str) -> tuple[TieredIndex, float]:
    """The index of a corpus, built in rebuild-sized chunks; seconds spent in the index alone."""
    index = TieredIndex(graph_rows, GraphParameters())
    seconds = 0.0
    for start, vectors in corpus.chunks(label):
        ids = [entry_id(row) for row in range(start, start + len(vectors))]
        began = time.perf_counter()
        index.add_many(PARTITION, ids, vectors)
        seconds += time.perf_counter() - began
        del vectors, ids
    began = time.perf_counter()
    index.wait_for_promotions()
    return index, seconds + time.perf_counter() - began


@dataclass(frozen=True)
class Answers:
    """What the index answered each query, and how long each search took."""

    rows: Rows
    """The nearest entry's row; -1 where the index found none."""
    similarity: Matrix
    """The similarity the index reported for it (what a hit policy compares to its threshold)."""
    seconds: list[float]

    @classmethod
    def empty(cls, queries: int) -> Answers:
        rows = np.full(queries, -1, dtype=np.int64)
        return cls(rows, np.full(queries, np.nan, dtype=np.float32), [])

    def record(self, number: int, neighbours: list[Neighbour], seconds: float) -> None:
        self.seconds.append(seconds)
        if neighbours:
            self.rows[number] = row_of(neighbours[0].entry_id)
            self.similarity[number] = neighbours[0].similarity


def search_now(index: TieredIndex, queries: Matrix) -> Answers:
    """Each query searched by `nearest_now`, on this thread."""
    for query in queries[:WARM_UP]:
        index.nearest_now(PARTITION, query, 1)
    answers = Answers.empty(len(queries))
    for number, query in enumerate(queries):
        began = time.perf_counter()
        neighbours = index.nearest_now(PARTITION, query, 1)
        answers.record(number, neighbours, time.perf_counter() - began)
    return answers


async def search_on_loop(index: TieredIndex, queries: Matrix) -> Answers:
    """Each query searched by `await nearest` from an event loop: the server's path."""
    for query in queries[:WARM_UP]:
        await index.nearest(PARTITION, query, 1)
    answers = Answers.empty(len(queries))
    for number, query in enumerate(queries):
        began = time.perf_counter()
        neighbours = await index.nearest(PARTITION, query, 1)
        answers.record(number, neighbours, time.perf_counter() - began)
    return answers


@dataclass(frozen=True)
class Recall:
    ids: float
    as_similar: float


@dataclass(frozen=True)
class Scored:
    recall: Recall
    by_kind: dict[str, Recall]
    similarity_error: dict[str, float]
    """|reported similarity - exact float32 cosine| of the entries found: p50, p99, max."""


def score(
    corpus: Corpus, queries: Matrix, answers: Answers, best_rows: Rows, best: Matrix
) -> Scored:
    """Recall@1 over all queries and per kind of query, rescoring found entries exactly."""
    found = answers.rows
    answered = found >= 0
    exact = np.full(len(queries), -np.inf, dtype=np.float32)
    exact[answered] = np.einsum("ij,ij->i", corpus.rows(found[answered]), queries[answered])
    same_id = found == best_rows
    as_similar = same_id | (exact >= best - SAME_COSINE)

    def recall(rows: slice) -> Recall:
        return Recall(float(np.mean(same_id[rows])), float(np.mean(as_similar[rows])))

    error = np.abs(answers.similarity[answered] - exact[answered])
    p50, p99 = np.percentile(error, [50, 99]).tolist() if len(error) else (np.nan, np.nan)
    return Scored(
        recall=recall(slice(None)),
        by_kind={name: recall(rows) for name, rows in kinds(HELD_OUT, len(queries)).items()},
        similarity_error={"p50": p50, "p99": p99, "max": float(error.max(initial=0.0))},
    )


@dataclass
class SizeResult:
    entries: int
    real: int
    copies: int
    build_s: float
    nearest_now_ms: dict[str, float]
    nearest_loop_ms: dict[str, float]
    recall: Recall
    recall_by_kind: dict[str, Recall]
    similarity_error: dict[str, float]
    """|similarity the index reported - exact cosine| of the entries found: p50, p99, max."""
    unanswered: int
    """Queries the index returned no neighbour for."""
    loop_differs: int
    """Queries whose answer from the event loop differed from `nearest_now`'s."""
    save_s: float
    load_s: float
    disk_bytes: int
    loaded_differs: int
    """Queries the loaded snapshot answered differently from the index that saved it."""
    index_bytes: int
    rss_growth_bytes: int
    rss_after_bytes: int
    best_cosine: dict[str, dict[str, float]] = field(default_factory=dict)
    """Quantiles of each kind of query's best exact cosine: how near its nearest entry is."""


def rss_bytes() -> int:
    return int(rss_mb(os.getpid()) * 2**20)


def measure(
    corpus: Corpus, queries: Matrix, graph_rows: int, snapshot_dir: Path | None
) -> SizeResult:
    """Every figure of one size; the index is the only large thing alive while RSS is read."""
    size = f"{corpus.size:,}"
    best_rows, best = exact_best(corpus.chunks(f"exact search, {size}"), queries)
    gc.collect()
    before = rss_bytes()
    index, build_s = build(corpus, graph_rows, f"building {size}")
    gc.collect()
    after = rss_bytes()
    index_bytes = index.memory_bytes()
    now = search_now(index, queries)
    loop = asyncio.run(search_on_loop(index, queries))
    scored = score(corpus, queries, now, best_rows, best)
    with tempfile.TemporaryDirectory(prefix="semcache-scale-", dir=snapshot_dir) as scratch:
        directory = Path(scratch)
        began = time.perf_counter()
        index.save(directory)
        save_s = time.perf_counter() - began
        disk_bytes = sum(path.stat().st_size for path in directory.iterdir())
        del index
        gc.collect()
        began = time.perf_counter()
        loaded = TieredIndex.load(directory, graph_rows, GraphParameters())
        load_s = time.perf_counter() - began
    reloaded = search_now(loaded, queries)
    del loaded
    gc.collect()
    return SizeResult(
        entries=corpus.size,
        real=corpus.real,
        copies=corpus.copies,
        build_s=build_s,
        nearest_now_ms=percentiles(now.seconds),
        nearest_loop_ms=percentiles(loop.seconds),
        recall=scored.recall,
        recall_by_kind=scored.by_kind,
        similarity_error=scored.similarity_error,
        unanswered=int(np.sum(now.rows < 0)),
        loop_differs=int(np.sum(loop.rows != now.rows)),
        save_s=save_s,
        load_s=load_s,
        disk_bytes=disk_bytes,
        loaded_differs=int(np.sum(reloaded.rows != now.rows)),
        index_bytes=index_bytes,
        rss_growth_bytes=after - before,
        rss_after_bytes=after,
        best_cosine={
            name: quantiles(best[rows]) for name, rows in kinds(HELD_OUT, len(queries)).items()
        },
    )


# --- copies against real prompts ------------------------------------------------------------


@dataclass(frozen=True)
class CheckSet:
    name: str
    real: int
    copies: int
    neighbour_cosine: dict[str, float]
    best_cosine: dict[str, dict[str, float]]
    recall_by_kind: dict[str, Recall]
    nearest_now_ms: dict[str, float]


def check_copies(
    entries: Matrix, held_out: Matrix, cosines: Matrix, rows: int, graph_rows: int
) -> list[CheckSet]:
    """Real prompts and copies of a small seed pool, at the same size, under the same queries."""
    seeds = max(1, round(rows * len(entries) / REFERENCE_ROWS))
    sets = {
        "real prompts": Corpus(entries[:rows], rows, cosines, SEED),
        "copies": Corpus(entries[rows : rows + seeds], rows, cosines, SEED),
    }
    results: list[CheckSet] = []
    for name, corpus in sets.items():
        queries = queries_for(corpus, held_out, SEED)
        sample = np.random.default_rng([SEED, rows]).choice(rows, STATS_SAMPLE, replace=False)
        neighbour = nearest_cosines(corpus, sample, f"{name}: neighbours")
        best_rows, best = exact_best(corpus.chunks(f"{name}: exact search"), queries)
        index, _ = build(corpus, graph_rows, f"{name}: building")
        answers = search_now(index, queries)
        del index
        scored = score(corpus, queries, answers, best_rows, best)
        results.append(
            CheckSet(
                name=name,
                real=corpus.real,
                copies=corpus.copies,
                neighbour_cosine=quantiles(neighbour),
                best_cosine={
                    kind: quantiles(best[part])
                    for kind, part in kinds(HELD_OUT, len(queries)).items()
                },
                recall_by_kind=scored.by_kind,
                nearest_now_ms=percentiles(answers.seconds),
            )
        )
    return results


# --- report ---------------------------------------------------------------------------------


def size_table(results: Sequence[SizeResult]) -> str:
    lines = [
        "| entries | real + copies | build s | nearest_now p50 / p99 ms "
        "| nearest (loop) p50 / p99 ms | recall@1 ids | recall@1 as similar "
        "| save s | load s | disk MB | index B/entry | RSS B/entry |",
        "|" + " --- |" * 12,
    ]
    for result in results:
        now, loop = result.nearest_now_ms, result.nearest_loop_ms
        lines.append(
            f"| {result.entries:,} | {result.real:,} + {result.copies:,} | {result.build_s:.1f} "
            f"| {now['p50_ms']:.3f} / {now['p99_ms']:.3f} "
            f"| {loop['p50_ms']:.3f} / {loop['p99_ms']:.3f} "
            f"| {result.recall.ids:.4f} | {result.recall.as_similar:.4f} "
            f"| {result.save_s:.2f} | {result.load_s:.2f} | {result.disk_bytes / 1e6:.1f} "
            f"| {result.index_bytes / result.entries:.0f} "
            f"| {result.rss_growth_bytes / result.entries:.0f} |"
        )
    return "\n".join(lines)


def detail_lines(results: Sequence[SizeResult]) -> list[str]:
    lines = ["recall@1 (ids / as similar) by kind of query, with the query's best exact cosine:"]
    for result in results:
        parts = [
            f"{kind} {recall.ids:.4f} / {recall.as_similar:.4f} "
            f"(best cosine p50 {result.best_cosine[kind]['p50']:.3f})"
            for kind, recall in result.recall_by_kind.items()
        ]
        lines.append(f"  {result.entries:>9,}: " + ";  ".join(parts))
    lines.append("similarity the index reported vs the exact float32 cosine of the entry it found:")
    for result in results:
        error = result.similarity_error
        lines.append(
            f"  {result.entries:>9,}: off by p50 {error['p50']:.1e}, p99 {error['p99']:.1e}, "
            f"max {error['max']:.1e}; queries without an answer: {result.unanswered}"
        )
    lines.append(
        "answers that differed: event loop vs nearest_now "
        + ", ".join(f"{r.loop_differs}" for r in results)
        + "; loaded snapshot vs saved index "
        + ", ".join(f"{r.loaded_differs}" for r in results)
    )
    return lines


def check_lines(results: Sequence[CheckSet], rows: int) -> list[str]:
    copies = results[-1]
    lines = [
        f"copies vs real prompts at {rows:,} entries (same kinds of queries, default graph); "
        f"the copies come from {copies.real:,} real seeds ({copies.copies / copies.real:.1f} "
        f"each), the share of real prompts in the {REFERENCE_ROWS:,}-entry set:",
        "| set | real + copies | entries' nearest-neighbour cosine "
        "| held-out queries: recall@1 ids / as similar | perturbed queries: recall@1 ids / as "
        "similar | nearest_now p50 / p99 ms |",
        "|" + " --- |" * 6,
    ]
    for result in results:
        recall = [
            f"{result.recall_by_kind[kind].ids:.4f} / {result.recall_by_kind[kind].as_similar:.4f}"
            f" (best cosine p50 {result.best_cosine[kind]['p50']:.3f})"
            for kind in ("held-out", "perturbed")
        ]
        lines.append(
            f"| {result.name} | {result.real:,} + {result.copies:,} "
            f"| {format_quantiles(result.neighbour_cosine)} | {recall[0]} | {recall[1]} "
            f"| {result.nearest_now_ms['p50_ms']:.3f} / {result.nearest_now_ms['p99_ms']:.3f} |"
        )
    return lines


def goals(results: Sequence[SizeResult]) -> list[dict[str, Any]]:
    """The goals at 1M entries, each with the measured figure and PASS/FAIL."""
    at = next((result for result in results if result.entries == GOAL_ROWS), None)
    if at is None:
        return []
    checks: list[tuple[str, float, str, bool]] = [
        (
            "lookup p99 ms, nearest_now",
            at.nearest_now_ms["p99_ms"],
            f"<= {GOAL_P99_MS}",
            at.nearest_now_ms["p99_ms"] <= GOAL_P99_MS,
        ),
        (
            "lookup p99 ms, nearest from the event loop",
            at.nearest_loop_ms["p99_ms"],
            f"<= {GOAL_P99_MS}",
            at.nearest_loop_ms["p99_ms"] <= GOAL_P99_MS,
        ),
        (
            "recall@1 (as similar)",
            at.recall.as_similar,
            f">= {GOAL_RECALL}",
            at.recall.as_similar >= GOAL_RECALL,
        ),
        ("snapshot load s", at.load_s, f"<= {GOAL_LOAD_S} s", at.load_s <= GOAL_LOAD_S),
        (
            "RSS growth of the build, GB",
            at.rss_growth_bytes / 2**30,
            "<= 2 GB",
            at.rss_growth_bytes <= GOAL_RSS_BYTES,
        ),
    ]
    return [
        {"goal": name, "value": value, "target": target, "pass": passed}
        for name, value, target, passed in checks
    ]


# --- command line ---------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are positive entry counts, e.g. 10000,100000")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--sizes", type=_sizes, default=list(SIZES), help="entries, e.g. 1e4")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="the labelled pairs")
    parser.add_argument("--embedding-cache", type=Path, default=EMBEDDING_CACHE)
    parser.add_argument("--graph-rows", type=int, default=DEFAULT_GRAPH_ROWS)
    parser.add_argument("--snapshot-dir", type=Path, default=None, help="for the snapshots")
    parser.add_argument("--no-check", action="store_true", help="skip copies vs real prompts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def run(args: argparse.Namespace) -> int:
    data_files = sorted(args.data_dir.glob("*.jsonl")) if args.data_dir.is_dir() else []
    if not data_files:
        print(f"skipping bench.scale: no labelled pairs (*.jsonl) in {args.data_dir}", flush=True)
        return 0
    prompts = asyncio.run(distinct_prompt_vectors(data_files, args.embedding_cache))
    order = np.random.default_rng(SEED).permutation(len(prompts))
    held_out = np.ascontiguousarray(prompts[order[:HELD_OUT]])
    entries = np.ascontiguousarray(prompts[order[HELD_OUT:]])
    del prompts, order
    sample = np.random.default_rng([SEED, 1]).choice(len(entries), NEIGHBOUR_SAMPLE, replace=False)
    everything = Corpus(entries, len(entries), np.ones(1, dtype=np.float32), SEED)
    cosines = nearest_cosines(everything, sample, "real nearest neighbours")
    copy_cosines = np.einsum(
        "ij,ij->i", perturb(entries[sample], cosines, np.random.default_rng(SEED)), entries[sample]
    )
    report: dict[str, Any] = {
        "data": {
            "files": [path.name for path in data_files],
            "distinct_prompts": len(entries) + HELD_OUT,
            "held_out": HELD_OUT,
            "real_entries": len(entries),
        },
        "perturbation": {
            "recipe": "copy = normalise(source + sigma * N(0, I)), sigma = sqrt((1/c^2 - 1) / d), "
            "c = a random real entry's cosine to its nearest other real entry",
            "real_neighbour_cosine": quantiles(cosines),
            "copy_to_source_cosine": quantiles(copy_cosines),
        },
        "index": {
            "partitions": 1,
            "graph_rows": args.graph_rows,
            "parameters": asdict(GraphParameters()),
            "chunk_rows": CHUNK_ROWS,
            "queries": {"held_out": HELD_OUT, "perturbed": PERTURBED_QUERIES, "k": 1},
        },
    }
    print(
        f"{len(entries) + HELD_OUT:,} distinct prompts in {len(data_files)} files: "
        f"{HELD_OUT:,} held out as queries, {len(entries):,} real entries",
        flush=True,
    )
    print(
        "copies: normalise(source + sigma * N(0, I_d)), source a random real entry, "
        "sigma = sqrt((1/c^2 - 1) / d), c drawn from real entries' nearest-neighbour cosines\n"
        f"  real entries' nearest-neighbour cosine ({NEIGHBOUR_SAMPLE:,} sampled): "
        f"{format_quantiles(quantiles(cosines))}\n"
        f"  copies' cosine to their source:                    "
        f"{format_quantiles(quantiles(copy_cosines))}",
        flush=True,
    )
    if not args.no_check:
        rows = min(CHECK_ROWS, len(entries) // 2)
        checked = check_copies(entries, held_out, cosines, rows, args.graph_rows)
        report["check"] = [asdict(result) for result in checked]
        print("\n" + "\n".join(check_lines(checked, rows)), flush=True)
    results: list[SizeResult] = []
    for size in args.sizes:
        corpus = Corpus(entries, size, cosines, SEED)
        queries = queries_for(corpus, held_out, SEED)
        results.append(measure(corpus, queries, args.graph_rows, args.snapshot_dir))
        print("\n" + size_table(results[-1:]), flush=True)
    report["sizes"] = [asdict(result) for result in results]
    report["goals"] = goals(results)
    print(
        f"\nTieredIndex, one partition, graph_rows {args.graph_rows:,}, {GraphParameters()}; "
        f"queries: {HELD_OUT:,} held-out real prompts + {PERTURBED_QUERIES:,} perturbed "
        "copies of real entries, k = 1",
        flush=True,
    )
    print(size_table(results))
    print(
        f"build: add_many in chunks of {CHUNK_ROWS:,}, then wait_for_promotions; index B/entry: "
        "memory_bytes() / entries; RSS B/entry: VmRSS growth over the build / entries"
    )
    print("\n".join(["", *detail_lines(results)]))
    print(f"\ngoals at {GOAL_ROWS:,} entries:")
    for goal in report["goals"]:
        verdict = "PASS" if goal["pass"] else "FAIL"
        print(f"  {verdict}  {goal['goal']}: {goal['value']:.4g} (goal {goal['target']})")
    if not report["goals"]:
        print(f"  not judged: {GOAL_ROWS:,} is not among --sizes")
    rss_line = ", ".join(f"{r.entries:,}: {r.rss_after_bytes / 2**30:.2f} GB" for r in results)
    print(f"process RSS after each build (model and real vectors included): {rss_line}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
