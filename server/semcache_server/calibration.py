"""Calibrate the default hit policy of an embedding model from labelled prompt pairs.

Cosine thresholds do not transfer between embedding models, so every embedder gets its own
`CalibratedPolicy`, fitted here and shipped as JSON in ``semcache_server/policies/``:

    python -m semcache_server.calibration --data ../shared/data/qqp_dev.jsonl \\
        --embedder local --out server/semcache_server/policies/local--all-MiniLM-L6-v2.json

Data files hold one ``{"query", "cached", "duplicate"}`` object a line (see the benchmark
protocol in ``shared/data/README.md``). Only the *calibration half* of the pairs is used, chosen
by a hash of the pair's text (`split_of`), so the other half stays held out for an honest report
(``python -m bench.accuracy --split heldout``).

The fit mirrors what the cache will do. Every distinct cached prompt is a cache entry; every
query of the calibration half takes its nearest entry. A query identical to an entry is an exact
hit, which no policy changes. Otherwise the nearest entry is a candidate when its cosine reaches
``gray_floor``; it is a correct hit only when it is the query's own cached prompt and the pair is
a duplicate (a hit on any other entry is wrong, as the protocol scores it). Then:

1. the guards (`guards.mismatches`) veto what they veto; the fit never sees those pairs;
2. ``accept_above`` is the lowest cosine from which guarded candidates alone reach the target
   precision;
3. a logistic model over `guards.features` is fitted on the remaining gray-zone candidates;
4. its ``cutoff`` is the lowest that keeps the precision of all hits (exact, above the gray zone
   and in it) at or above the target, which maximises recall there.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from semcache_server import guards
from semcache_server.embedders import Embedder
from semcache_server.keys import normalise_prompt
from semcache_server.policy import CalibratedPolicy, GrayZoneModel, policy_file_name

SPLITS = ("all", "calibration", "heldout")
DEFAULT_TARGET_PRECISION = 0.85
"""Precision on the calibration half of Quora Question Pairs that the shipped policy is fitted to.

Not 0.90: with MiniLM that is reached only at a recall of about 0.20, and it misses plain
paraphrases ("What's the capital city of Austria?"). Quora's labels are noisy: in an audit of the
false hits at this setting, about two in three were the same question asked twice (unlabelled
duplicates or label noise), so 0.85 measured is roughly 0.94 real. See the bench report.
"""
DEFAULT_GRAY_FLOOR = 0.80
DEFAULT_L2 = 1.0
DEFAULT_OLLAMA_EMBED_MODEL = "nomic-embed-text"
_GRID_STEP = 0.0025

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LabelledPair:
    query: str
    cached: str
    duplicate: bool


def read_pairs(path: Path, limit: int | None = None) -> list[LabelledPair]:
    """The pairs of a data file, in file order (the first `limit` when given)."""
    pairs: list[LabelledPair] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(pairs) >= limit:
                break
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                pairs.append(LabelledPair(raw["query"], raw["cached"], bool(raw["duplicate"])))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a labelled pair: {error}") from None
    return pairs


def split_of(pair: LabelledPair) -> str:
    """Which half a pair is in, "calibration" or "heldout": fixed by a hash of the pair's text."""
    digest = hashlib.sha256(f"{pair.query}\x00{pair.cached}".encode()).digest()
    return "calibration" if digest[0] % 2 == 0 else "heldout"


def select(pairs: Iterable[LabelledPair], split: str) -> list[LabelledPair]:
    """The pairs whose queries are asked and scored under split ("all", or one half)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [pair for pair in pairs if split == "all" or split_of(pair) == split]


def distinct_cached(pairs: Iterable[LabelledPair]) -> list[str]:
    """The cache's contents under the protocol: every distinct cached prompt, in file order."""
    return list(dict.fromkeys(pair.cached for pair in pairs))


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal), without a dependency."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self._label = label
        self._total = max(total, 1)
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._done = 0
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        if self._tty and (now - self._drawn > 0.2 or self._done >= self._total):
            self._drawn = now
            self._stream.write("\r" + self._line(now))
            self._stream.flush()

    def close(self) -> None:
        line = self._line(time.monotonic())
        self._stream.write(("\r" + line + "\n") if self._tty else line + "\n")
        self._stream.flush()

    def _line(self, now: float) -> str:
        share = min(1.0, self._done / self._total)
        elapsed = max(now - self._started, 1e-9)
        bar = "#" * int(share * 30)
        return (
            f"{self._label} [{bar:<30}] {self._done}/{self._total} "
            f"{self._done / elapsed:6.0f}/s {elapsed:6.1f}s"
        )


@dataclass(frozen=True)
class Embedded:
    """Unit vectors of a set of texts, looked up by text."""

    rows: dict[str, int]
    vectors: Matrix

    def of(self, texts: Sequence[str]) -> Matrix:
        return self.vectors[[self.rows[text] for text in texts]]


async def embed_texts(
    embedder: Embedder,
    texts: Iterable[str],
    *,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    label: str = "embedding",
) -> Embedded:
    """Embed every distinct text once, in batches of similar length, with a progress bar.

    With cache_dir, the vectors are kept in a .npy file named by the model and the texts, so a
    second run on the same data skips the embedding (minutes for 40k prompts on a CPU).
    """
    unique = sorted(set(texts))
    rows = {text: row for row, text in enumerate(unique)}
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256("\n".join([embedder.model_id, *unique]).encode()).hexdigest()
        cache_file = cache_dir / f"{policy_file_name(embedder.model_id)[:-5]}-{digest[:20]}.npy"
        if cache_file.exists():
            cached: Matrix = np.load(cache_file)
            if cached.shape[0] == len(unique):
                return Embedded(rows, cached)
    vectors: Matrix | None = None
    progress = Progress(label, len(unique))
    # Sorting by length keeps padding (the cost of a batch follows its longest text) small.
    order = sorted(range(len(unique)), key=lambda row: len(unique[row]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        embedded = await embedder.embed([unique[row] for row in batch])
        if vectors is None:
            vectors = np.zeros((len(unique), embedded.shape[1]), dtype=np.float32)
        vectors[batch] = embedded
        progress.advance(len(batch))
    progress.close()
    if vectors is None:
        vectors = np.zeros((0, 0), dtype=np.float32)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache_file, vectors)
    return Embedded(rows, vectors)


def open_embedder(
    name: str,
    *,
    ollama_host: str | None = None,
    ollama_embed_model: str = DEFAULT_OLLAMA_EMBED_MODEL,
    threads: int | None = None,
) -> Embedder:
    """An embedder by its command-line name: "local" (MiniLM, in process) or "ollama"."""
    if name == "local":
        from semcache_server.embedders.local import LocalEmbedder

        return LocalEmbedder.load(threads=threads or os.cpu_count() or 1)
    if name == "ollama":
        from semcache_server.embedders.ollama import OllamaEmbedder

        return OllamaEmbedder(ollama_host, ollama_embed_model)
    raise ValueError(f"unknown embedder {name!r}: use 'local' or 'ollama'")


@dataclass(frozen=True)
class Lookup:
    """What the cache would see for one asked query, before any policy decides."""

    pair: LabelledPair
    nearest: str
    """The nearest cached prompt (the identical one for an exact hit)."""
    similarity: float
    exact: bool

    @property
    def correct(self) -> bool:
        """Reusing the nearest entry's answer is right (by the protocol's scoring)."""
        return self.nearest == self.pair.cached and self.pair.duplicate


def nearest_lookups(
    pairs: Sequence[LabelledPair], cached: Sequence[str], embedded: Embedded
) -> list[Lookup]:
    """The exact match or nearest cached prompt of every query, as the cache chain finds them."""
    by_key = {normalise_prompt(prompt): prompt for prompt in cached}
    matrix = embedded.of(cached)
    lookups: list[Lookup] = []
    for start in range(0, len(pairs), 1024):
        chunk = pairs[start : start + 1024]
        scores = embedded.of([pair.query for pair in chunk]) @ matrix.T
        best = np.argmax(scores, axis=1)
        for row, pair in enumerate(chunk):
            same = by_key.get(normalise_prompt(pair.query))
            if same is not None:
                lookups.append(Lookup(pair, same, 1.0, exact=True))
            else:
                column = int(best[row])
                lookups.append(Lookup(pair, cached[column], float(scores[row, column]), False))
    return lookups


@dataclass(frozen=True)
class Score:
    """The protocol's figures for one policy on one set of queries."""

    queries: int
    duplicates: int
    hits: int
    correct: int

    @property
    def false_hits(self) -> int:
        return self.hits - self.correct

    @property
    def precision(self) -> float:
        return self.correct / self.hits if self.hits else float("nan")

    @property
    def recall(self) -> float:
        return self.correct / self.duplicates if self.duplicates else float("nan")

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.queries if self.queries else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queries": self.queries,
            "duplicates": self.duplicates,
            "hits": self.hits,
            "correct": self.correct,
            "false_hits": self.false_hits,
            "precision": self.precision,
            "recall": self.recall,
            "false_hit_rate": self.false_hit_rate,
        }


def fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = DEFAULT_L2
) -> GrayZoneModel:
    """L2-regularised logistic regression by Newton's method on standardised features.

    A handful of features and a few thousand pairs: Newton converges in a few steps, and the
    small, penalised model is what keeps the fit from learning the calibration half by heart.
    """
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both correct and wrong gray-zone candidates")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the intercept is not shrunk
    w = np.zeros(z.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return GrayZoneModel(
        features=guards.FEATURE_NAMES,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in w[:-1]),
        bias=float(w[-1]),
    )


def _inert_model() -> GrayZoneModel:
    size = len(guards.FEATURE_NAMES)
    return GrayZoneModel(
        guards.FEATURE_NAMES, (0.0,) * size, (1.0,) * size, (0.0,) * size, bias=0.0
    )


@dataclass(frozen=True)
class _Candidate:
    lookup: Lookup
    vetoed: bool
    features: tuple[float, ...]


def _lowest_accept_above(candidates: Sequence[_Candidate], target: float, floor: float) -> float:
    """The lowest cosine from which guarded candidates alone reach the target precision."""
    kept = sorted((c.lookup.similarity, c.lookup.correct) for c in candidates if not c.vetoed)
    similarities = np.array([s for s, _ in kept])
    correct = np.array([ok for _, ok in kept], dtype=np.float64)
    # suffix sums: hits and correct hits at or above each candidate threshold
    for threshold in np.arange(floor, 1.0 + 1e-9, _GRID_STEP):
        start = int(np.searchsorted(similarities, threshold))
        hits = len(kept) - start
        if hits and correct[start:].sum() / hits >= target:
            return float(round(threshold, 4))
    return 1.0


def choose_policy(
    lookups: Sequence[Lookup],
    embedder_model_id: str,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    gray_floor: float = DEFAULT_GRAY_FLOOR,
    l2: float = DEFAULT_L2,
) -> tuple[CalibratedPolicy, Score]:
    """Fit the policy on lookups (see the module docstring); returns it with its score there."""
    exact = [lookup for lookup in lookups if lookup.exact]
    candidates = []
    for lookup in lookups:
        if lookup.exact or lookup.similarity < gray_floor:
            continue
        a, b = guards.analyse(lookup.pair.query), guards.analyse(lookup.nearest)
        candidates.append(
            _Candidate(
                lookup,
                bool(guards.mismatches(a, b)),
                guards.features(a, b, lookup.similarity),
            )
        )
    accept_above = _lowest_accept_above(candidates, target_precision, gray_floor)
    gray = [c for c in candidates if not c.vetoed and c.lookup.similarity < accept_above]
    above = [c for c in candidates if not c.vetoed and c.lookup.similarity >= accept_above]
    x = np.array([c.features for c in gray], dtype=np.float64).reshape(
        len(gray), len(guards.FEATURE_NAMES)
    )
    y = np.array([c.lookup.correct for c in gray], dtype=np.float64)
    if len(np.unique(y)) < 2:
        # Nothing to learn from (tiny data): no gray zone, a guarded threshold at accept_above.
        gray_floor, gray, y = accept_above, [], y[:0]
        model = _inert_model()
    else:
        model = fit_logistic(x, y, l2)
    scores = np.array([model.probability(c.features) for c in gray])

    base_hits = len(exact) + len(above)
    base_correct = sum(lookup.correct for lookup in exact) + sum(c.lookup.correct for c in above)
    order = np.argsort(-scores, kind="stable")
    hits = base_hits + np.arange(1, len(order) + 1)
    correct = base_correct + np.cumsum(y[order])
    meets = np.nonzero(correct / hits >= target_precision)[0]
    if len(meets):
        last = int(meets[np.argmax(correct[meets])])
        cutoff = float(scores[order][last])
        accepted = [gray[i] for i in order[: last + 1]]
    else:
        cutoff, accepted = 1.0, []
    # Nothing below the lowest accepted cosine was ever a hit here: do not even fetch it.
    lowest = min((c.lookup.similarity for c in accepted), default=accept_above)
    floor = max(gray_floor, float(np.floor(lowest * 200) / 200))

    score = Score(
        queries=len(lookups),
        duplicates=sum(lookup.pair.duplicate for lookup in lookups),
        hits=base_hits + len(accepted),
        correct=base_correct + sum(c.lookup.correct for c in accepted),
    )
    policy = CalibratedPolicy(
        embedder=embedder_model_id,
        gray_floor=round(floor, 4),
        accept_above=accept_above,
        cutoff=cutoff,
        model=model,
        provenance={
            "target_precision": target_precision,
            "gray_floor_searched": gray_floor,
            "l2": l2,
            "guards": [m.value for m in guards.Mismatch],
            "gray_zone_pairs_fitted": len(gray),
            "vetoed_by_guards": sum(c.vetoed for c in candidates),
            "score_on_calibration": score.as_dict(),
        },
    )
    return policy, score


@dataclass(frozen=True)
class PreparedFile:
    """A data file read for scoring: the prompts to cache, the queries to ask, all embedded."""

    cached: list[str]
    asked: list[LabelledPair]
    embedded: Embedded


async def prepare_file(
    path: Path, embedder: Embedder, *, split: str, limit: int | None, cache_dir: Path | None
) -> PreparedFile:
    """Every query is embedded, not only the asked ones, so that the embedding cache file is the
    same for any split (calibration and the accuracy bench share it)."""
    pairs = read_pairs(path, limit)
    cached = distinct_cached(pairs)
    embedded = await embed_texts(
        embedder,
        [*cached, *(pair.query for pair in pairs)],
        cache_dir=cache_dir,
        label=f"embedding {path.name}",
    )
    return PreparedFile(cached, select(pairs, split), embedded)


async def calibrate_async(
    data: Sequence[Path],
    embedder: str | Embedder = "local",
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    gray_floor: float = DEFAULT_GRAY_FLOOR,
    l2: float = DEFAULT_L2,
    split: str = "calibration",
    limit: int | None = None,
    ollama_host: str | None = None,
    ollama_embed_model: str = DEFAULT_OLLAMA_EMBED_MODEL,
    cache_dir: Path | None = None,
) -> CalibratedPolicy:
    """Calibrate a policy for an embedder (a name as on the command line, or an Embedder).

    Save the result with ``policy.save(path)``; a server finds it when the file is
    ``semcache_server/policies/`` + `policy_file_name` (embedder model id).
    """
    owned = None
    if isinstance(embedder, str):
        owned = embedder = open_embedder(
            embedder, ollama_host=ollama_host, ollama_embed_model=ollama_embed_model
        )
    try:
        lookups: list[Lookup] = []
        for path in data:
            prepared = await prepare_file(
                path, embedder, split=split, limit=limit, cache_dir=cache_dir
            )
            lookups += nearest_lookups(prepared.asked, prepared.cached, prepared.embedded)
    finally:
        if owned is not None:
            await owned.aclose()
    policy, _ = choose_policy(
        lookups,
        embedder.model_id,
        target_precision=target_precision,
        gray_floor=gray_floor,
        l2=l2,
    )
    provenance: dict[str, Any] = {
        "data": [path.name for path in data],
        "split": split,
        "limit": limit,
        **policy.provenance,
    }
    return CalibratedPolicy(
        embedder=policy.embedder,
        gray_floor=policy.gray_floor,
        accept_above=policy.accept_above,
        cutoff=policy.cutoff,
        model=policy.model,
        provenance=provenance,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semcache_server.calibration",
        description="Fit the default hit policy of an embedder on labelled prompt pairs.",
    )
    parser.add_argument("--data", type=Path, action="append", required=True, help="JSONL pairs")
    parser.add_argument("--embedder", choices=("local", "ollama"), default="local")
    parser.add_argument("--ollama-host", default=None)
    parser.add_argument("--ollama-embed-model", default=DEFAULT_OLLAMA_EMBED_MODEL)
    parser.add_argument("--out", type=Path, help="where to write the policy JSON")
    parser.add_argument("--target-precision", type=float, default=DEFAULT_TARGET_PRECISION)
    parser.add_argument("--gray-floor", type=float, default=DEFAULT_GRAY_FLOOR)
    parser.add_argument("--l2", type=float, default=DEFAULT_L2)
    parser.add_argument("--split", choices=SPLITS, default="calibration")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs of each file")
    parser.add_argument("--embedding-cache", type=Path, default=None, help="directory for .npy")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    policy = asyncio.run(
        calibrate_async(
            args.data,
            args.embedder,
            target_precision=args.target_precision,
            gray_floor=args.gray_floor,
            l2=args.l2,
            split=args.split,
            limit=args.limit,
            ollama_host=args.ollama_host,
            ollama_embed_model=args.ollama_embed_model,
            cache_dir=args.embedding_cache,
        )
    )
    if args.out is not None:
        policy.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(json.dumps(policy.to_json(), indent=2))
    score = policy.provenance["score_on_calibration"]
    print(
        f"{policy.embedder}: gray zone [{policy.gray_floor:.3f}, {policy.accept_above:.4f}), "
        f"cutoff {policy.cutoff:.3f}; on the {args.split} split: "
        f"precision {score['precision']:.3f}, recall {score['recall']:.3f}, "
        f"false-hit rate {score['false_hit_rate']:.4f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
