"""Calibrate the default hit policy of an embedding model from labelled prompt pairs.

Cosine thresholds do not transfer between embedding models, so every embedder gets its own
`CalibratedPolicy`, fitted here and shipped as JSON in ``semcache_server/core/policies/``:

    semcache calibrate --data ../shared/data/qqp_dev.jsonl \\
        --embedder local --out server/semcache_server/core/policies/local--all-MiniLM-L6-v2.json

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
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semcache_server.calibration.data import SPLITS, Lookup, nearest_lookups, prepare_file
from semcache_server.calibration.fitting import (
    DEFAULT_GRAY_FLOOR,
    DEFAULT_L2,
    DEFAULT_TARGET_PRECISION,
    choose_policy,
)
from semcache_server.core.policy import CalibratedPolicy
from semcache_server.core.ports import Embedder
from semcache_server.core.verified_policy import VerifiedPolicy
from semcache_server.settings import Settings


def open_embedder(
    name: str, *, ollama_host: str | None = None, ollama_embed_model: str | None = None
) -> Embedder:
    """An embedder by its command-line name, built by the composition root; the local one gets
    every core, since an offline tool has the machine to itself."""
    from semcache_server.app import build_embedder

    defaults = Settings()
    settings = Settings(
        embedder=name,
        ollama_host=ollama_host,
        ollama_embed_model=ollama_embed_model or defaults.ollama_embed_model,
    )
    return build_embedder(settings, threads=os.cpu_count() or 1)


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
    ollama_embed_model: str | None = None,
    cache_dir: Path | None = None,
) -> CalibratedPolicy:
    """Calibrate a policy for an embedder (a name as on the command line, or an Embedder).

    Save the result with ``policy.save(path)``; a server finds it when the file is
    ``semcache_server/core/policies/`` + `policy_file_name` (embedder model id).
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


async def calibrate_verified_async(
    data: Sequence[Path],
    *,
    target_precision: float,
    split: str = "calibration",
    limit: int | None = None,
    cache_dir: Path | None = None,
    guards: Sequence[str] = (),
    verifier_dir: Path | None = None,
    strict: Sequence[Path] = (),
) -> VerifiedPolicy:
    """Fit the verified policy of the local embedder and the shipped pair verifier.

    Save it as ``semcache_server/core/policies/`` + `verified_policy_file_name`.
    """
    from semcache_server.app import load_pair_scoring
    from semcache_server.calibration.verified import choose_verified, concat, looked_file

    embedder = open_embedder("local")
    scoring = load_pair_scoring(os.cpu_count() or 1, verifier_dir)
    tag = scoring.weights_sha256
    try:
        parts = []
        for path in [*data, *strict]:
            prepared = await prepare_file(
                path, embedder, split=split, limit=limit, cache_dir=cache_dir
            )
            parts.append(
                looked_file(prepared, scoring.logits, verifier_tag=tag[:16], cache_dir=cache_dir)
            )
    finally:
        await embedder.aclose()
    policy, _ = choose_verified(
        concat(parts),
        embedder.model_id,
        scoring.model_id,
        target_precision=target_precision,
        guards=guards,
        strict=concat(parts[len(data) :]) if strict else None,
        parts=[len(part.pairs) for part in parts],
    )
    provenance = {
        "data": [path.name for path in data],
        "strict": [path.name for path in strict],
        "split": split,
        "limit": limit,
        "verifier_weights_sha256": tag,
        **policy.provenance,
    }
    return VerifiedPolicy.from_json({**policy.to_json(), "provenance": provenance})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcache calibrate",
        description="Fit the default semantic policy of an embedder on labelled prompt pairs and "
        "write it as JSON.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="A JSONL file of labelled pairs ({query, cached, duplicate} a line); repeatable.",
    )
    parser.add_argument(
        "--embedder",
        choices=("local", "ollama"),
        default="local",
        help="The embedder to calibrate, as semcache serve names it. [default: %(default)s]",
    )
    parser.add_argument(
        "--ollama-host", default=None, help="Ollama's address. Unset: as semcache serve."
    )
    parser.add_argument(
        "--ollama-embed-model",
        default=None,
        help="The model of the ollama embedder. Unset: as semcache serve.",
    )
    parser.add_argument(
        "--out", type=Path, help="Where to write the policy JSON. Unset: standard output."
    )
    parser.add_argument(
        "--target-precision",
        type=float,
        default=DEFAULT_TARGET_PRECISION,
        help="The precision of all hits the fit keeps. [default: %(default)s]",
    )
    parser.add_argument(
        "--gray-floor",
        type=float,
        default=DEFAULT_GRAY_FLOOR,
        help="The lowest cosine at which a nearest entry is a candidate. [default: %(default)s]",
    )
    parser.add_argument(
        "--l2",
        type=float,
        default=DEFAULT_L2,
        help="L2 penalty of the logistic model of the gray zone. [default: %(default)s]",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="calibration",
        help="Which pairs to fit on: a half (calibration, heldout) or all. [default: %(default)s]",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="Only the first N pairs of each file."
    )
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        default=None,
        help="A directory where embeddings are kept as .npy between runs.",
    )
    parser.add_argument(
        "--verifier",
        action="store_true",
        help="Fit the verified policy instead (the local embedder and the shipped pair verifier).",
    )
    parser.add_argument(
        "--guard",
        action="append",
        default=[],
        help="With --verifier: a guard kind that vetoes; repeatable.",
    )
    parser.add_argument(
        "--verifier-dir",
        type=Path,
        default=None,
        help="With --verifier: the verifier weights to use. Unset: the shipped ones.",
    )
    parser.add_argument(
        "--strict",
        type=Path,
        action="append",
        default=[],
        help="With --verifier: labelled pairs calibrated on like --data, where the policy may "
        "make no false hit at all (the everyday look-alikes); repeatable.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    if args.verifier:
        verified = asyncio.run(
            calibrate_verified_async(
                args.data,
                target_precision=args.target_precision,
                split=args.split,
                limit=args.limit,
                cache_dir=args.embedding_cache,
                guards=args.guard,
                verifier_dir=args.verifier_dir,
                strict=args.strict,
            )
        )
        text = json.dumps(verified.to_json(), indent=2) + "\n"
        if args.out is not None:
            args.out.write_text(text, encoding="utf-8")
        else:
            print(text)
        print(
            f"verified: floor {verified.floor}, cutoff {verified.cutoff}, on the {args.split} "
            f"split: {verified.provenance['score_on_calibration']}",
            file=sys.stderr,
        )
        return 0
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
