"""The in-process embedder the server uses: MiniLM on onnxruntime behind an async method."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from semcache_server.adapters.embedders.minilm_onnx import MiniLMOnnxModel
from semcache_server.core.ports import Embeddings

MODEL_ID = "local/all-MiniLM-L6-v2"


EMBEDDER_NICENESS = 10
"""How much lower the embedding thread runs than the event loop's (Linux threads have their own)."""

MAX_BATCH = 32
"""Texts in one forward pass; past ~32 short prompts a bigger batch stops paying for itself."""


class LocalEmbedder:
    """Runs embedding on one dedicated worker thread so the event loop keeps serving, and
    batches concurrent requests into one forward pass.

    onnxruntime releases the GIL while it computes, so other requests progress during an
    embedding. A single worker serialises calls into the session: with one intra-op thread per
    process that is the fastest arrangement, and it keeps the CPU use of a process bounded.

    Batching waits for nothing: a request that finds the model idle runs at once, alone; the
    requests that arrive while a pass runs go together in the next one (up to MAX_BATCH texts).
    Under load a batch of short prompts costs far less than the same prompts one by one.
    """

    def __init__(self, model: MiniLMOnnxModel, max_batch: int = MAX_BATCH) -> None:
        self._model = model
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embedder", initializer=_yield_to_the_event_loop
        )
        self._waiting: list[tuple[list[str], asyncio.Future[Embeddings]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.passes = 0
        """Forward passes run, for tests and benchmarks (fewer than requests under load)."""

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

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embeds texts off the event loop: float32 (len(texts), dimensions), unit-length rows,
        with what the model could not read of each (past its window, unknown tokens)."""
        result: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(texts), result))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_batches())
        return await result

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch: list[tuple[list[str], asyncio.Future[Embeddings]]] = []
            size = 0
            while self._waiting and (
                not batch or size + len(self._waiting[0][0]) <= self._max_batch
            ):
                texts, result = self._waiting.pop(0)
                if not result.cancelled():  # its caller left; nobody wants its vectors
                    batch.append((texts, result))
                    size += len(texts)
            if not batch:
                continue
            texts = [text for request, _ in batch for text in request]
            try:
                vectors, unread = await loop.run_in_executor(
                    self._executor, self._model.read, texts
                )
            except Exception as error:
                for _, result in batch:
                    if not result.done():
                        result.set_exception(error)
                continue
            self.passes += 1
            row = 0
            for request, result in batch:
                if not result.done():
                    end = row + len(request)
                    result.set_result(Embeddings(vectors[row:end], unread[row:end]))
                row += len(request)

    async def aclose(self) -> None:
        """Stops the worker thread once any embedding in progress has finished."""
        if self._runner is not None and not self._runner.done():
            await asyncio.wait([self._runner], timeout=5)
        await asyncio.to_thread(self._executor.shutdown, wait=True)


def _yield_to_the_event_loop() -> None:
    """Run the embedding thread at a lower CPU priority than the event loop.

    When the cores are saturated, an exact hit (a Redis round trip handled on the loop) should not
    wait behind a forward pass that only a semantic lookup needs. Linux gives each thread its own
    niceness; where that is refused, nothing changes.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EMBEDDER_NICENESS)
