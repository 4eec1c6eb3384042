"""The pair verifier: a MiniLM cross-encoder on onnxruntime that reads (query, cached prompt)
together and scores whether the cached prompt's answer answers the query.

Its fine-tuned layers ship as float16 safetensors in ``minilm_pair/`` (made by
`semcache train-verifier`); the word-embedding table, frozen during training, is the embedder's
own and is read from the embedder's weights, so it ships once. The graph is the embedder's BERT
graph (`minilm_onnx.build_bert_graph`) with token types and a linear head on mean-pooled tokens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from semcache_server.adapters.embedders.minilm_onnx import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGIT,
    TOKEN_TYPE_IDS,
    BertConfig,
    build_bert_graph,
    default_model_dir,
    load_tokenizer,
    load_weights,
    make_session,
)
from semcache_server.core.domain import VerifierUnavailable

MODEL_ID = "local/minilm-pair-verifier"
WORD_TABLE = "embeddings.word_embeddings.weight"


def default_verifier_dir() -> Path:
    return Path(__file__).resolve().parent / "minilm_pair"


def shipped() -> bool:
    """Whether the package carries trained verifier weights."""
    return (default_verifier_dir() / "model.safetensors").is_file()


class PairModel:
    """Tokenizer + onnxruntime session: (query, candidate) pairs in, logits out (synchronous)."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer) -> None:
        self._session = session
        self._tokenizer = tokenizer

    @classmethod
    def load(
        cls, verifier_dir: Path | None = None, embedder_dir: Path | None = None, threads: int = 1
    ) -> PairModel:
        verifier_dir = default_verifier_dir() if verifier_dir is None else verifier_dir
        embedder_dir = default_model_dir() if embedder_dir is None else embedder_dir
        config = BertConfig.read(embedder_dir)
        weights = load_weights(verifier_dir)
        weights[WORD_TABLE] = load_weights(embedder_dir)[WORD_TABLE]
        settings: dict[str, Any] = json.loads((verifier_dir / "config.json").read_text("utf-8"))
        session = make_session(*build_bert_graph(config, weights, pair_head=True), threads=threads)
        tokenizer = load_tokenizer(embedder_dir, int(settings.get("max_length", 128)))
        return cls(session, tokenizer)

    def logits(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """One logit per (query, candidate): above 0, more likely the answer carries over."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(pairs))
        feeds = {
            INPUT_IDS: np.array([e.ids for e in encodings], dtype=np.int64),
            ATTENTION_MASK: np.array([e.attention_mask for e in encodings], dtype=np.int64),
            TOKEN_TYPE_IDS: np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (logits,) = self._session.run([LOGIT], feeds)
        return np.asarray(logits, dtype=np.float32).reshape(-1)


class PairVerifier:
    """The async face of PairModel: scoring runs on one worker thread, off the event loop."""

    def __init__(self, model: PairModel) -> None:
        self._model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier")

    @classmethod
    def load(cls, threads: int = 1) -> PairVerifier:
        """Reads the weights and builds the session (blocking; call once at start-up)."""
        return cls(PairModel.load(threads=threads))

    @property
    def model_id(self) -> str:
        return MODEL_ID

    async def scores(self, query: str, candidates: Sequence[str]) -> Sequence[float]:
        loop = asyncio.get_running_loop()
        try:
            logits = await loop.run_in_executor(
                self._executor, self._model.logits, [(query, c) for c in candidates]
            )
        except (RuntimeError, ValueError, ort.capi.onnxruntime_pybind11_state.Fail) as error:
            raise VerifierUnavailable(f"pair verifier: {error}") from None
        return [float(x) for x in logits]

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
