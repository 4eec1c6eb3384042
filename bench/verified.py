"""The accuracy bench, vectorised: static thresholds, the lexical calibrated policy and the
verified policy side by side on the same split, in seconds once embeddings and verifier logits
are cached.

    .venv/bin/python -m bench.verified --data ../shared/data/qqp_dev.jsonl --split heldout \\
        --data ../shared/data/sick_contradictions_dev.jsonl --data tests/data/traps.jsonl ...

Every asked query is looked up once (`semcache_server.calibration.verified.look_up`): the exact
layer by normalised key, else the nearest cached prompts. Each policy's verdict is then computed
from those arrays, by the same rules the server runs (`decide`), so no query goes through gRPC
or Redis; `bench.accuracy` runs the real chain and checks the same figures on smaller files.
Cost is measured on the real models: one embedding, and one verifier call over the top
candidates, which only gray-zone lookups pay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from semcache_server.app import PairScoring, load_pair_scoring
from semcache_server.calibration.command import open_embedder
from semcache_server.calibration.data import SPLITS, LabelledPair, Score, prepare_file
from semcache_server.calibration.verified import (
    Looked,
    decide,
    looked_file,
    score,
    with_vetoes,
)
from semcache_server.core.policy import (
    CalibratedPolicy,
    default_policy,
    shipped_policy_json,
    verified_policy_file_name,
)
from semcache_server.core.verified_policy import VerifiedPolicy

from bench.harness import percentiles

STATIC_THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.95)
VERIFIER_ID = "local/minilm-pair-verifier"


def lexical(looked: Looked, policy: CalibratedPolicy) -> tuple[Any, Any]:
    """The lexical calibrated policy on the nearest candidate, query by query."""
    hit = looked.exact.copy()
    correct = looked.exact_correct.copy()
    for i, pair in enumerate(looked.pairs):
        if looked.exact[i] or not looked.prompts[i]:
            continue
        verdict = policy.decide(pair.query, looked.prompts[i][0], float(looked.cosine[i, 0]))
        if verdict.value == "hit":
            hit[i] = True
            correct[i] = bool(looked.correct[i, 0])
    return hit, correct


def verified(looked: Looked, policy: VerifiedPolicy) -> tuple[Any, Any]:
    """The verified policy, with its guards' vetoes applied per candidate."""
    return decide(with_vetoes(looked, policy.guards), policy.model, policy.floor, policy.cutoff)


def kinds_of(path: Path) -> dict[tuple[str, str], str]:
    """The kind each labelled pair of a file names ("paraphrase/frame", "sibling", ...), if any."""
    kinds = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                raw = json.loads(line)
                kind = raw.get("kind")
                if kind is not None:
                    style = raw.get("style")
                    kinds[raw["query"], raw["cached"]] = f"{kind}/{style}" if style else kind
    return kinds


def by_kind(
    looked: Looked, kinds: dict[tuple[str, str], str], verdicts: dict[str, tuple[Any, Any]]
) -> list[dict[str, Any]]:
    """Per kind of pair: how many each policy served (a paraphrase served on its own entry
    counts; a look-alike served anywhere is an error)."""
    table: dict[str, dict[str, Any]] = {}
    for i, pair in enumerate(looked.pairs):
        kind = kinds.get((pair.query, pair.cached))
        if kind is None:
            continue
        entry = table.setdefault(kind, {"kind": kind, "pairs": 0, "duplicate": pair.duplicate})
        entry["pairs"] += 1
        for name, (hit, correct) in verdicts.items():
            served = bool(correct[i]) if pair.duplicate else bool(hit[i])
            entry[name] = entry.get(name, 0) + int(served)
    return sorted(table.values(), key=lambda e: (not e["duplicate"], e["kind"]))


def row(name: str, looked: Looked, hit: Any, correct: Any, gray: float) -> dict[str, Any]:
    result: Score = score(looked, hit, correct)
    return {"policy": name, **result.as_dict(), "gray_zone_share": gray}


def load_verified() -> VerifiedPolicy | None:
    raw = shipped_policy_json(verified_policy_file_name("local/all-MiniLM-L6-v2", VERIFIER_ID))
    return VerifiedPolicy.from_json(raw) if raw is not None else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    embedder = open_embedder("local")
    scoring = load_pair_scoring(os.cpu_count() or 1, args.verifier_dir)
    policy = (
        load_verified()
        if args.policy is None
        else VerifiedPolicy.from_json(json.loads(args.policy.read_text(encoding="utf-8")))
    )
    lexical_policy = default_policy("local/all-MiniLM-L6-v2")
    report: dict[str, Any] = {"files": [], "cost_ms": {}}
    tag = scoring.weights_sha256[:16]
    try:
        for path in args.data:
            prepared = await prepare_file(
                path, embedder, split=args.split, limit=args.limit, cache_dir=args.embedding_cache
            )
            looked = looked_file(
                prepared, scoring.logits, verifier_tag=tag, cache_dir=args.embedding_cache
            )
            rows = []
            verdicts = {}
            for threshold in args.thresholds:
                hit, correct = decide(looked, None, threshold, threshold)
                rows.append(row(f"static {threshold:.2f}", looked, hit, correct, 0.0))
                verdicts[f"static {threshold:.2f}"] = (hit, correct)
            if isinstance(lexical_policy, CalibratedPolicy):
                hit, correct = lexical(looked, lexical_policy)
                rows.append(row("lexical calibrated (before)", looked, hit, correct, 0.0))
                verdicts["lexical"] = (hit, correct)
            if policy is not None:
                hit, correct = verified(looked, policy)
                gray = float(np.mean(~looked.exact & (looked.cosine[:, 0] >= policy.floor)))
                name = f"verified floor {policy.floor:.2f} cutoff {policy.cutoff:.2f}"
                rows.append(row(name, looked, hit, correct, gray))
                verdicts["verified"] = (hit, correct)
            report["files"].append(
                {
                    "data": path.name,
                    "split": args.split,
                    "cached": len(prepared.cached),
                    "rows": rows,
                    "by_kind": by_kind(looked, kinds_of(path), verdicts),
                }
            )
            if not args.json:
                print(format_file(report["files"][-1]), flush=True)
        report["cost_ms"] = await measure_cost(embedder, scoring, args.data[0])
    finally:
        await embedder.aclose()
    if not args.json:
        cost = report["cost_ms"]
        print(
            f"\ncost: one embedding p50 {cost['embedding']['p50_ms']:.2f} ms; one verifier call "
            f"over the top {3} candidates p50 {cost['verifier_top3']['p50_ms']:.2f} ms "
            f"(paid only in the gray zone)"
        )
    return report


async def measure_cost(embedder: Any, scoring: PairScoring, path: Path) -> dict[str, Any]:
    """The real time of an embedding and of a verifier call over three candidates, one at a
    time, on queries of the first data file."""
    from semcache_server.calibration.data import read_pairs

    pairs: list[LabelledPair] = read_pairs(path, 200)
    embedding, verifier = [], []
    for pair in pairs:
        started = time.perf_counter()
        await embedder.embed([pair.query])
        embedding.append(time.perf_counter() - started)
        started = time.perf_counter()
        scoring.logits([(pair.query, pair.cached)] * 3)
        verifier.append(time.perf_counter() - started)
    return {"embedding": percentiles(embedding), "verifier_top3": percentiles(verifier)}


def format_file(result: dict[str, Any]) -> str:
    first = result["rows"][0]
    lines = [
        f"== {result['data']} | split {result['split']}: {first['queries']} queries, "
        f"{first['duplicates']} duplicates, {result['cached']} cached prompts",
        f"{'policy':<40} {'hits':>6} {'correct':>7} {'false':>6} {'prec':>6} {'recall':>6} "
        f"{'FHR':>7} {'gray':>5}",
    ]
    for r in result["rows"]:
        precision = "   -  " if r["hits"] == 0 else f"{r['precision']:6.3f}"
        recall = "   -  " if r["duplicates"] == 0 else f"{r['recall']:6.3f}"
        lines.append(
            f"{r['policy']:<40} {r['hits']:6d} {r['correct']:7d} {r['false_hits']:6d} "
            f"{precision} {recall} {r['false_hit_rate']:7.4f} {r['gray_zone_share']:5.2f}"
        )
    if result["by_kind"]:
        names = [k for k in result["by_kind"][0] if k not in ("kind", "pairs", "duplicate")]
        lines.append("served, by kind of pair (paraphrases: served right; look-alikes: errors)")
        lines.append(f"{'kind':<24} {'pairs':>5} " + " ".join(f"{n:>12}" for n in names))
        for entry in result["by_kind"]:
            lines.append(
                f"{entry['kind']:<24} {entry['pairs']:5d} "
                + " ".join(f"{entry[n]:12d}" for n in names)
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.verified", description=__doc__)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", choices=SPLITS, default="heldout")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--thresholds", type=float, nargs="*", default=list(STATIC_THRESHOLDS))
    parser.add_argument("--policy", type=Path, default=None, help="a verified policy JSON")
    parser.add_argument(
        "--verifier-dir", type=Path, default=None, help="verifier weights (default: shipped)"
    )
    parser.add_argument("--embedding-cache", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
