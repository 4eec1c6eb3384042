"""The pairs the teacher labels: what the cache meets, and what construction might mislabel.

Two kinds, interleaved so that any prefix of the file is a fair sample of both (labelling runs
at a few thousand pairs an hour and is stopped when time runs out):

- **mined neighbours**: a Quora question and its nearest question from another group of
  ``qqp_train`` (cosine in the gray zone). Nobody labelled these; many are paraphrases nobody
  merged, some are look-alikes. Only the teacher can label them.
- **constructed pairs**: a sample of the frame rewrites, alias swaps, WordNet substitutions and
  generated look-alikes, with their label by construction kept beside the teacher's score, so
  that the two can be compared and a wrong-sense substitution caught.

    .venv/bin/python -m semcache_server.calibration.teacher_pairs --out /tmp/candidates.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from semcache_server.calibration.command import open_embedder
from semcache_server.calibration.data import LabelledPair, embed_texts, read_pairs
from semcache_server.calibration.frames import frame_pairs
from semcache_server.calibration.minimal_pairs import MinimalPairs, vocabulary
from semcache_server.calibration.verifier_data import LookAlikes, TrainingPair

MINED_BAND = (0.72, 0.98)
"""Cosines of the neighbours worth labelling: the gray zone, short of a near-identical copy."""


def groups_of(pairs: Sequence[LabelledPair]) -> dict[str, int]:
    """Each text's group: the texts Quora's labelled pairs connect, duplicate or not."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for pair in pairs:
        parent[root(pair.query)] = root(pair.cached)
    roots: dict[str, int] = {}
    return {text: roots.setdefault(root(text), len(roots)) for text in list(parent)}


def mined_neighbours(
    texts: Sequence[str], vectors: np.ndarray, group: dict[str, int], count: int, seed: int
) -> list[TrainingPair]:
    """Up to count pairs (question, its nearest question of another group), in the band."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    groups = np.array([group[t] for t in texts])
    found: list[TrainingPair] = []
    seen: set[frozenset[str]] = set()
    for start in range(0, len(order), 1024):
        rows = order[start : start + 1024]
        similarity = vectors[rows] @ vectors.T
        similarity[groups[rows][:, None] == groups[None, :]] = -1.0
        nearest = similarity.argmax(axis=1)
        for position, (row, other) in enumerate(zip(rows, nearest, strict=True)):
            cosine = float(similarity[position, other])
            key = frozenset((texts[row], texts[other]))
            if MINED_BAND[0] <= cosine < MINED_BAND[1] and key not in seen:
                seen.add(key)
                found.append(TrainingPair(texts[row], texts[other], -1.0, "mined"))
        if len(found) >= count:
            break
    return found[:count]


def interleaved(
    streams: dict[str, list[TrainingPair]], shares: dict[str, float]
) -> Iterator[TrainingPair]:
    """Round-robin by share, so that every prefix keeps the mix."""
    taken: dict[str, float] = defaultdict(float)
    positions = dict.fromkeys(streams, 0)
    while any(positions[k] < len(v) for k, v in streams.items()):
        open_kinds = [k for k in streams if positions[k] < len(streams[k])]
        kind = min(open_kinds, key=lambda k: taken[k] / shares.get(k, 1.0))
        yield streams[kind][positions[kind]]
        positions[kind] += 1
        taken[kind] += 1


SHARES = {"mined": 0.45, "frames": 0.2, "wordnet": 0.2, "look_alikes": 0.1, "quora": 0.05}


def candidates(data_dir: Path, cache_dir: Path | None, seed: int, total: int) -> list[TrainingPair]:
    train = read_pairs(data_dir / "qqp_train.jsonl")
    texts = sorted({t for p in train for t in (p.query, p.cached)})
    embedder = open_embedder("local")
    try:
        embedded = asyncio.run(embed_texts(embedder, texts, cache_dir=cache_dir, label="qqp_train"))
    finally:
        asyncio.run(embedder.aclose())
    vectors = embedded.of(texts)
    rng = random.Random(seed)
    streams: dict[str, list[TrainingPair]] = {
        "mined": mined_neighbours(texts, vectors, groups_of(train), total, seed),
    }
    sample = rng.sample(texts, min(len(texts), 4_000))
    frames = frame_pairs(sample, seed, per_question=1)
    rng.shuffle(frames)
    streams["frames"] = frames
    try:
        minimal = MinimalPairs.open(vocabulary=vocabulary(texts), seed=seed)
    except FileNotFoundError as error:
        print(f"  no WordNet pairs: {error}", file=sys.stderr)
    else:
        made = minimal.make(sample)
        rng.shuffle(made)
        streams["wordnet"] = made
    looks = LookAlikes(seed).make(sample, per_kind=300)
    rng.shuffle(looks)
    streams["look_alikes"] = looks
    quora = [TrainingPair(p.query, p.cached, float(p.duplicate), "qqp_train") for p in train]
    rng.shuffle(quora)
    streams["quora"] = quora
    return list(interleaved(streams, SHARES))[:total]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semcache_server.calibration.teacher_pairs",
        description="Write the pairs the teacher labels, mined and constructed, interleaved.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one pair a line")
    parser.add_argument("--total", type=int, default=20_000, help="at most this many pairs")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--embedding-cache", type=Path, default=None, help="directory for .npy")
    args = parser.parse_args(argv)
    pairs = candidates(args.data_dir, args.embedding_cache, args.seed, args.total)
    with args.out.open("w", encoding="utf-8") as out:
        for pair in pairs:
            row: dict[str, object] = {
                "query": pair.query,
                "cached": pair.cached,
                "origin": pair.origin,
            }
            if pair.label >= 0:
                row["constructed"] = pair.label
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(pairs)} pairs into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
