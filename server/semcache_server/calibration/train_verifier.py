"""`semcache train-verifier`: fine-tune the pair verifier from the shipped MiniLM weights.

The verifier is a cross-encoder: it reads "[CLS] query [SEP] cached [SEP]" in one pass and scores
whether the cached prompt's answer answers the query. It starts from all-MiniLM-L6-v2 (the
embedder's own weights), keeps the word-embedding table frozen so that the runtime can reuse the
embedder's table, and learns everything else plus a linear head over mean-pooled tokens.

Needs the `train` extra (torch 2.13 CPU): ``pip install ".[train]"``. Nothing in the service
imports this module. The result is written as float16 safetensors without the word table
(about 21 MB) with a config.json, where the runtime verifier finds it.

Data (``--data-dir``, the shared files): every pair of ``qqp_train.jsonl``; the calibration half
of ``gptcache_mock_dev.jsonl`` and ``sick_contradictions_dev.jsonl`` (their held-out halves and
all of ``qqp_dev.jsonl`` are never seen); hard negatives mined as each question's nearest
neighbour from another group of ``qqp_train``; look-alikes generated from real questions (a
changed number, a negation, an opposite word, swapped roles, another name); and surface
rewrites as positives. See `verifier_data`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semcache_server.calibration.command import open_embedder
from semcache_server.calibration.data import LabelledPair, embed_texts, read_pairs, split_of
from semcache_server.calibration.frames import frame_pairs
from semcache_server.calibration.minimal_pairs import MinimalPairs, vocabulary
from semcache_server.calibration.verifier_data import LookAlikes, TrainingPair, labelled

EMBEDDER_DIR = Path(__file__).resolve().parent.parent / "adapters" / "embedders" / "minilm"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "adapters" / "verifiers" / "minilm_pair"
WORD_TABLE = "embeddings.word_embeddings.weight"
MAX_LENGTH = 128
NOISY_NEGATIVE = 0.95
"""Quora non-duplicates at or above this cosine are left out of training (mostly label noise)."""


def build_pairs(
    data_dir: Path, cache_dir: Path | None, seed: int, taught: Sequence[TrainingPair] = ()
) -> list[TrainingPair]:
    """Every training pair, shuffled; prints where they come from.

    The verifier's question is "did the meaning change?", so most pairs are minimal pairs whose
    label is known by construction (issue #19): the same question with one slot changed to a
    sibling, an antonym, another number or name (negatives), or with its frame reworded, a
    synonym or an alias swapped in (positives). Quora's labelled pairs add real wording, its
    duplicates in both orders (a cache meets either). Unlabelled neighbours are never negatives:
    Quora links only the questions someone merged, so many of them are paraphrases. Quora
    non-duplicates that embed almost identically are left out for the same reason (audits found
    most of them to be one question asked twice).
    """
    train = read_pairs(data_dir / "qqp_train.jsonl")
    texts = sorted({t for p in train for t in (p.query, p.cached)})
    embedder = open_embedder("local")
    try:
        embedded = asyncio.run(embed_texts(embedder, texts, cache_dir=cache_dir, label="qqp_train"))
    finally:
        asyncio.run(embedder.aclose())

    queries, cached = embedded.of([p.query for p in train]), embedded.of([p.cached for p in train])
    cosine = np.einsum("ij,ij->i", queries, cached)
    kept = [p for p, c in zip(train, cosine, strict=True) if p.duplicate or c < NOISY_NEGATIVE]
    pairs = labelled(kept, "qqp_train")
    pairs += labelled(
        (LabelledPair(p.cached, p.query, True) for p in train if p.duplicate), "qqp_train:swapped"
    )
    for name, origin, copies in (
        ("gptcache_mock_dev.jsonl", "gptcache_mock:calibration", 4),
        ("sick_contradictions_dev.jsonl", "sick:calibration", 1),
    ):
        path = data_dir / name
        if path.exists():
            half = [p for p in read_pairs(path) if split_of(p) == "calibration"]
            pairs += labelled(half, origin) * copies
    pairs += LookAlikes(seed).make(texts, per_kind=2_000)
    pairs += capped(frame_pairs(texts, seed, per_question=1), per_origin=FRAME_PAIRS_PER_ORIGIN)
    try:
        minimal = MinimalPairs.open(vocabulary=vocabulary(texts), seed=seed)
    except FileNotFoundError as error:
        print(f"  no WordNet pairs: {error}", file=sys.stderr)
    else:
        sample = random.Random(seed).sample(texts, min(len(texts), WORDNET_QUESTIONS))
        pairs += capped(minimal.make(sample), per_origin=WORDNET_PAIRS_PER_ORIGIN)
    pairs += taught
    random.Random(seed).shuffle(pairs)
    counts = Counter(p.origin for p in pairs)
    positives = Counter(p.origin for p in pairs if p.label)
    print(
        f"  left out {len(train) - len(kept)} Quora non-duplicates at cosine >= {NOISY_NEGATIVE}",
        file=sys.stderr,
    )
    for origin, count in sorted(counts.items()):
        print(f"  {origin:<32} {count:6d} pairs, {positives[origin]:6d} positive", file=sys.stderr)
    return pairs


WORDNET_QUESTIONS = 20_000
WORDNET_PAIRS_PER_ORIGIN = 8_000
"""WordNet makes about two sibling negatives a question, many from a word's wrong sense: a
sample of the questions, and a cap, keep them from outweighing everything else."""

FRAME_PAIRS_PER_ORIGIN = 4_000
"""How-to rewrites alone are half of what the frames make from Quora: capped, so the rarer
everyday frames (who wrote, how tall, what causes) weigh as much as they can."""


def capped(pairs: Sequence[TrainingPair], per_origin: int) -> list[TrainingPair]:
    """The first per_origin pairs of each origin, in order."""
    taken: Counter[str] = Counter()
    kept = []
    for pair in pairs:
        if taken[pair.origin] < per_origin:
            taken[pair.origin] += 1
            kept.append(pair)
    return kept


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    taught: list[TrainingPair] = []
    if args.teacher_labels:
        from semcache_server.calibration import teacher

        if args.teacher_reading is None:
            raise SystemExit("--teacher-labels needs --teacher-reading: the scored own pairs")
        reading = teacher.reading_from(args.teacher_reading)
        print(f"  teacher reading: {reading}", file=sys.stderr)
        taught = teacher.training_pairs(args.teacher_labels, reading, args.teacher_copies)
    pairs = build_pairs(args.data_dir, args.embedding_cache, args.seed, taught)

    config = BertConfig.from_json_file(str(EMBEDDER_DIR / "config.json"))
    encoder = BertModel(config, add_pooling_layer=False)
    weights = {
        name: torch.from_numpy(array.astype(np.float32) if array.dtype.kind == "f" else array)
        for name, array in load_file(str(EMBEDDER_DIR / "model.safetensors")).items()
        if not name.startswith("pooler.")
    }
    encoder.load_state_dict(weights, strict=False)
    encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    for layer in encoder.encoder.layer[: args.freeze_layers]:
        layer.requires_grad_(False)
    head = torch.nn.Linear(config.hidden_size, 1)

    tokenizer = Tokenizer.from_file(str(EMBEDDER_DIR / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=args.max_length)

    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": trainable, "lr": args.lr}, {"params": head.parameters(), "lr": args.lr * 20}],
        weight_decay=0.01,
    )
    # Batches of similar length: the cost of a batch follows its longest pair.
    encodings = tokenizer.encode_batch([(p.query, p.cached) for p in pairs])
    order = sorted(range(len(pairs)), key=lambda i: len(encodings[i].ids))
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    rng = random.Random(args.seed)
    # Positives and negatives weigh alike in the loss, whatever their counts.
    positives = sum(p.label for p in pairs)
    positive_weight = torch.tensor((len(pairs) - positives) / max(1.0, positives))
    planned_steps: int = args.epochs * len(batches)
    warmup = max(1, planned_steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.05, 1 - (step - warmup) / max(1, planned_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    started = time.monotonic()
    step = 0
    losses: list[float] = []
    stopped_by_time = False
    encoder.train()
    for epoch in range(args.epochs):
        rng.shuffle(batches)
        for batch in batches:
            if time.monotonic() - started > args.minutes * 60:
                stopped_by_time = True
                break
            width = max(len(encodings[i].ids) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                e = encodings[i]
                ids[row, : len(e.ids)] = torch.tensor(e.ids)
                types[row, : len(e.ids)] = torch.tensor(e.type_ids)
                mask[row, : len(e.ids)] = 1
            labels = torch.tensor([pairs[i].label for i in batch])
            hidden = encoder(input_ids=ids, attention_mask=mask, token_type_ids=types)
            pooled = (hidden.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                head(pooled).squeeze(-1), labels, pos_weight=positive_weight
            )
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            step += 1
            if step % 100 == 0:
                elapsed = time.monotonic() - started
                print(
                    f"epoch {epoch} step {step}/{planned_steps} loss {np.mean(losses[-100:]):.4f}"
                    f" {elapsed / 60:.1f} min",
                    file=sys.stderr,
                    flush=True,
                )
        if stopped_by_time:
            break

    args.out.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in encoder.state_dict().items()
        if name != WORD_TABLE and tensor.dtype == torch.float32
    }
    state["head.weight"] = head.weight.detach().to(torch.float16).contiguous()
    state["head.bias"] = head.bias.detach().to(torch.float16).contiguous()
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    report = {
        "base": "sentence-transformers/all-MiniLM-L6-v2 (the embedder's weights)",
        "word_table": "the embedder's, frozen during training",
        "pooling": "mean",
        "max_length": args.max_length,
        "training": {
            "pairs": len(pairs),
            "origins": dict(Counter(p.origin for p in pairs)),
            "steps": step,
            "planned_steps": planned_steps,
            "stopped_by_time": stopped_by_time,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "epochs": args.epochs,
            "freeze_layers": args.freeze_layers,
            "seed": args.seed,
            "final_loss": float(np.mean(losses[-200:])) if losses else math.nan,
            "positive_weight": float(positive_weight),
            "noisy_negative_cosine": NOISY_NEGATIVE,
        },
    }
    (args.out / "config.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcache train-verifier",
        description="Fine-tune the pair verifier from the shipped MiniLM weights and write it "
        "where the server finds it (needs the train extra).",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="The shared data files (qqp_train.jsonl and others). [default: %(default)s]",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="Where to write the weights. [default: the package's verifier folder]",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=50.0,
        help="Minutes after which training stops. [default: %(default)s]",
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="Passes over the pairs. [default: %(default)s]"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="Pairs a step. [default: %(default)s]"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=4e-5,
        help="Peak learning rate of the encoder (the head's: 20 times it). [default: %(default)s]",
    )
    parser.add_argument(
        "--freeze-layers",
        type=int,
        default=0,
        help="Lowest layers kept frozen. [default: %(default)s]",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=MAX_LENGTH,
        help="Tokens of a pair; longer pairs are cut. [default: %(default)s]",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads torch uses. [default: every core]",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=13,
        help="Seed of torch and of the shuffles. [default: %(default)s]",
    )
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        default=None,
        help="A directory where embeddings are kept as .npy between runs.",
    )
    parser.add_argument(
        "--teacher-labels",
        type=Path,
        action="append",
        default=[],
        help="Pairs scored by the teacher (calibration.teacher label), trained on with its "
        "probability as their label; repeatable.",
    )
    parser.add_argument(
        "--teacher-reading",
        type=Path,
        default=None,
        help="Our own labelled pairs scored by the teacher: its reading is fitted on their "
        "calibration half.",
    )
    parser.add_argument(
        "--teacher-copies",
        type=int,
        default=2,
        help="Weight of taught pairs: copies of each. [default: %(default)s]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    if not (args.data_dir / "qqp_train.jsonl").exists():
        print(f"no qqp_train.jsonl in {args.data_dir}: pass --data-dir", file=sys.stderr)
        return 2
    report = train(args)
    print(json.dumps(report["training"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
