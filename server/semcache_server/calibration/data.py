"""Labelled prompt pairs, read and embedded the way the cache will see them.

Data files hold one ``{"query", "cached", "duplicate"}`` object a line (see the benchmark protocol
in ``shared/data/README.md``). Each pair falls in one half, *calibration* or *heldout*, by a hash
of its text (`split_of`), so calibration fits on one half and the accuracy bench reports on the
other. `nearest_lookups` replays what the cache chain does for each asked query: an exact match
by normalised key, else the nearest distinct cached prompt by cosine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from semcache_server.core.keys import normalise_prompt
from semcache_server.core.policy import policy_file_name
from semcache_server.core.ports import Embedder

SPLITS = ("all", "calibration", "heldout")

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LabelledPair:
    query: str
    cached: str
    duplicate: bool


def read_pairs(path: Path, limit: int | None = None) -> list[LabelledPair]:
    """The pairs of a data file, in file order (the first `limit` when given).

    The label is "duplicate" (the shared files) or "hit" (the trap and paraphrase sets in
    tests/data): whether the cached prompt's answer answers the query.
    """
    pairs: list[LabelledPair] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(pairs) >= limit:
                break
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                label = raw["duplicate"] if "duplicate" in raw else raw["hit"]
                pairs.append(LabelledPair(raw["query"], raw["cached"], bool(label)))
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
    progress = tqdm(total=len(unique), desc=label, unit="text")
    # Sorting by length keeps padding (the cost of a batch follows its longest text) small.
    order = sorted(range(len(unique)), key=lambda row: len(unique[row]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        embedded = (await embedder.embed([unique[row] for row in batch])).vectors
        if vectors is None:
            vectors = np.zeros((len(unique), embedded.shape[1]), dtype=np.float32)
        vectors[batch] = embedded
        progress.update(len(batch))
    progress.close()
    if vectors is None:
        vectors = np.zeros((0, 0), dtype=np.float32)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache_file, vectors)
    return Embedded(rows, vectors)


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
