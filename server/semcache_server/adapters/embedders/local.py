"""The in-process embedder the server uses: MiniLM on onnxruntime behind an async method."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from semcache_server.adapters.embedders.minilm_onnx import MiniLMOnnxModel

MODEL_ID = "local/all-MiniLM-L6-v2"


class LocalEmbedder:
    """Runs embedding on one dedicated worker thread so the event loop keeps serving.

    onnxruntime releases the GIL while it computes, so other requests progress during an
    embedding. A single worker serialises calls into the session: with one intra-op thread per
    process that is the fastest arrangement, and it keeps the CPU use of a process bounded.
    """

    def __init__(self, model: MiniLMOnnxModel) -> None:
        self._model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    @classmethod
    def load(cls, model_dir: Path | None = None, threads: int = 1) -> LocalEmbedder:
        """Reads the weights and builds the session (blocking; call once at start-up)."""
        return cls(MiniLMOnnxModel.load(model_dir, threads=threads))

    @property
    def model_id(self) -> str:
        """Names the embedding space: entries from different models must never be compared."""
        return MODEL_ID

    @property
    def dimensions(self) -> int:
        return self._model.dimensions

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeds texts off the event loop; float32 (len(texts), dimensions), unit-length rows."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._model.encode, list(texts))

    async def aclose(self) -> None:
        """Stops the worker thread once any embedding in progress has finished."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
