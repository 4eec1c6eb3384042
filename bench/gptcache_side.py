"""GPTCache's side of bench.latency's comparison (issue #11): its in-process `get`, timed on the
data semcache was timed on, with the embedder semcache uses.

Runs in its own environment (`bench/gptcache_env.sh` makes `.venv-gptcache/`), never in `.venv`:
GPTCache pins and imports things of its own, and none of them belong in semcache's install.

    PYTHONPATH=server .venv-gptcache/bin/python -m bench.gptcache_side < INPUT.json
    PYTHONPATH=server .venv-gptcache/bin/python -m bench.gptcache_side --check

INPUT is `{"entries": [[prompt, answer], ...], "lookups": {kind: [[prompt, expected answer],
...]}, "round": 50, "warmup": 50}`. GPTCache is set up as its documentation shows:
`CacheBase("sqlite")` + `VectorBase("faiss", dimension=384)` in a temporary directory,
`SearchDistanceEvaluation`, `get_prompt`, the default `Config`, each entry stored with
`gptcache.adapter.api.put`; faiss runs one OpenMP thread (see `GptCacheSide`). The embedding
function is semcache's own `MiniLMOnnxModel` (the same weights, graph, tokenizer and onnxruntime
thread count as `semcache serve`). Each lookup is timed four ways, kinds and ways interleaved in
rounds as bench.latency times semcache:

- `get`: `gptcache.adapter.api.get(prompt)`, embedding included, as an application calls it;
- `get, report off`: the same on a second `Cache` over the same data manager whose `Config` has
  `disable_report=True`: by default every hit also commits a row to a report table in SQLite;
- `get, embedding precomputed`: the default `get` on a third `Cache` over the same data manager,
  whose embedding function returns the prompt's vector computed beforehand (where the rest goes);
- `embedding`: `MiniLMOnnxModel.encode([prompt])` alone, in this process.

Prints JSON on stdout: the latencies of each (kind, way) in seconds, in the order timed, how many
`get` calls returned the expected answer, and the versions of what ran. `--check` builds the same
setup on two entries and exits non-zero unless both are found (bench/gptcache_env.sh runs it).

GPTCache installs missing packages with pip when a module of it is first imported
(`gptcache.utils.import_*`); here that installer is replaced by a failure, so a missing package
stops the run instead of changing the environment mid-benchmark.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from semcache_server.adapters.embedders.minilm_onnx import MiniLMOnnxModel

GET = "get"
NO_REPORT = "get, report off"
PRECOMPUTED = "get, embedding precomputed"
EMBEDDING = "embedding"
WAYS = (GET, NO_REPORT, PRECOMPUTED, EMBEDDING)
GETS = (GET, NO_REPORT, PRECOMPUTED)
VERSIONS_OF = ("gptcache", "faiss-cpu", "SQLAlchemy", "onnxruntime", "tokenizers", "numpy")

FAISS_THREADS = 1

Vector = npt.NDArray[np.float32]


class MissingPackage(Exception):
    """GPTCache wanted to pip-install a package: the environment is not the one the script made."""


def refuse_install(package: str, warn: bool = False) -> None:
    """Stands in for gptcache.utils.prompt_install."""
    raise MissingPackage(
        f"GPTCache wanted to pip install {package!r}; run bench/gptcache_env.sh to set up "
        ".venv-gptcache"
    )


def forbid_installs() -> None:
    """Replaces the installer GPTCache's import_* helpers call, before anything calls them."""
    utils: Any = importlib.import_module("gptcache.utils")
    utils.prompt_install = refuse_install


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONS_OF:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


class GptCacheSide:
    """GPTCache's sqlite + faiss setup in a temporary directory, with our MiniLM as embedder."""

    def __init__(self, model: MiniLMOnnxModel, capacity: int) -> None:
        # Imported by name: GPTCache is not in .venv, where mypy reads this file.
        api = importlib.import_module("gptcache.adapter.api")
        manager = importlib.import_module("gptcache.manager")
        get_prompt = importlib.import_module("gptcache.processor.pre").get_prompt
        distance = importlib.import_module("gptcache.similarity_evaluation.distance")
        config = importlib.import_module("gptcache.config")

        self.model = model
        self._put: Callable[..., object] = api.put
        self._get: Callable[..., object] = api.get
        self.precomputed: dict[str, Vector] = {}
        # Removed at exit, after GPTCache's own exit hook (atexit runs last-registered first) has
        # written its faiss index into it.
        directory = tempfile.mkdtemp(prefix="gptcache-bench-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        data_manager = manager.get_data_manager(
            manager.CacheBase("sqlite", sql_url=f"sqlite:///{directory}/sqlite.db"),
            manager.VectorBase(
                "faiss", dimension=model.dimensions, index_path=f"{directory}/faiss.index"
            ),
            # GPTCache's LRU default is 1,000 entries: never evict while the benchmark runs.
            max_size=max(1000, capacity),
        )
        # One OpenMP thread, as semcache's embedder runs one onnxruntime thread. With faiss's
        # default (a thread a core), its idle workers spin after each search and, on 2 cores,
        # slow the embedding that follows: p90 of `get` 14 ms instead of 11 when measured.
        importlib.import_module("faiss").omp_set_num_threads(FAISS_THREADS)
        self.cache = api.Cache()
        self.cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=self.embed,
            data_manager=data_manager,
            similarity_evaluation=distance.SearchDistanceEvaluation(),
        )
        self.quiet_cache = api.Cache()
        self.quiet_cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=self.embed,
            data_manager=data_manager,
            similarity_evaluation=distance.SearchDistanceEvaluation(),
            config=config.Config(disable_report=True),
        )
        self.precomputed_cache = api.Cache()
        self.precomputed_cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=self.lookup_vector,
            data_manager=data_manager,
            similarity_evaluation=distance.SearchDistanceEvaluation(),
        )

    def embed(self, text: str, **_: Any) -> Vector:
        """GPTCache's embedding_func: one prompt in, one vector out."""
        vector: Vector = self.model.encode([text])[0]
        return vector

    def lookup_vector(self, text: str, **_: Any) -> Vector:
        return self.precomputed[text]

    def precompute(self, texts: Sequence[str]) -> None:
        for text in texts:
            self.precomputed[text] = self.embed(text)

    def put(self, prompt: str, answer: str) -> None:
        self._put(prompt, answer, cache_obj=self.cache)

    def get(self, prompt: str) -> object:
        """The cached answer, or None on a miss."""
        return self._get(prompt, cache_obj=self.cache)

    def get_quiet(self, prompt: str) -> object:
        """get without the row GPTCache's default Config writes to its report table on a hit."""
        return self._get(prompt, cache_obj=self.quiet_cache)

    def get_precomputed(self, prompt: str) -> object:
        return self._get(prompt, cache_obj=self.precomputed_cache)


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Puts the entries, then times every lookup each way, interleaved in rounds."""
    forbid_installs()
    entries: list[tuple[str, str]] = [(p, a) for p, a in request["entries"]]
    lookups: dict[str, list[tuple[str, str]]] = {
        kind: [(p, a) for p, a in pairs] for kind, pairs in request["lookups"].items()
    }
    round_size = int(request.get("round", 50))
    warmup = int(request.get("warmup", 50))
    model = MiniLMOnnxModel.load()
    side = GptCacheSide(model, len(entries))
    started = time.perf_counter()
    for prompt, stored in entries:
        side.put(prompt, stored)
    put_seconds = time.perf_counter() - started
    side.precompute(sorted({p for pairs in lookups.values() for p, _ in pairs}))

    ways: dict[str, Callable[[str], object]] = {
        GET: side.get,
        NO_REPORT: side.get_quiet,
        PRECOMPUTED: side.get_precomputed,
        EMBEDDING: side.embed,
    }
    for pairs in lookups.values():
        for prompt, _ in pairs[:warmup]:
            for call in ways.values():
                call(prompt)

    durations: dict[str, dict[str, list[float]]] = {
        kind: {way: [] for way in WAYS} for kind in lookups
    }
    right = {kind: dict.fromkeys(GETS, 0) for kind in lookups}
    found = {kind: dict.fromkeys(GETS, 0) for kind in lookups}
    longest = max((len(pairs) for pairs in lookups.values()), default=0)
    for start in range(0, longest, round_size):
        for kind, pairs in lookups.items():
            for way, call in ways.items():
                for prompt, expected in pairs[start : start + round_size]:
                    began = time.perf_counter()
                    answer = call(prompt)
                    durations[kind][way].append(time.perf_counter() - began)
                    if way != EMBEDDING:
                        found[kind][way] += answer is not None
                        right[kind][way] += answer == expected
    return {
        "versions": versions(),
        "entries": len(entries),
        "put_seconds": put_seconds,
        "similarity_threshold": side.cache.config.similarity_threshold,
        "faiss_threads": FAISS_THREADS,
        "durations_s": durations,
        "found": found,
        "right": right,
    }


def check() -> int:
    """A tiny run of the whole setup: 0 when both entries come back from `get`."""
    entries = [
        ("What is the capital of France?", "Paris."),
        ("How many legs does a spider have?", "Eight."),
    ]
    result = run(
        {
            "entries": entries,
            "lookups": {"exact": entries},
            "round": 2,
            "warmup": 0,
        }
    )
    print(json.dumps(result["versions"]))
    return 0 if result["right"]["exact"][GET] == len(entries) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="a two-entry run of the setup")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.check:
        sys.exit(check())
    json.dump(run(json.load(sys.stdin)), sys.stdout)
    print()


if __name__ == "__main__":
    main()
