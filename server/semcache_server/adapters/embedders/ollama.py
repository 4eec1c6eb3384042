"""Embeddings from any Ollama embedding model, for deployments that already run one."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np
import ollama

from semcache_server.adapters.ollama_llm import DEFAULT_OLLAMA_HOST
from semcache_server.core.domain import EmbedderUnavailable
from semcache_server.core.ports import Embeddings, Vectors


class OllamaEmbedder:
    def __init__(self, host: str | None, model: str, timeout: float = 10.0) -> None:
        self.address = host or DEFAULT_OLLAMA_HOST
        self.model = model
        self._client = ollama.AsyncClient(host=self.address, timeout=httpx.Timeout(timeout))

    @property
    def model_id(self) -> str:
        return f"ollama/{self.model}"

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Asks Ollama not to truncate: by default it embeds only what fits its context and says
        nothing. A batch that does not fit is embedded truncated and reported unread whole, so
        such a prompt matches only itself (Ollama does not say where it cut)."""
        batch = list(texts)
        try:
            try:
                response = await self._client.embed(model=self.model, input=batch, truncate=False)
                unread = [""] * len(batch)
            except ollama.ResponseError as error:
                if not _exceeds_context(error):
                    raise
                response = await self._client.embed(model=self.model, input=batch, truncate=True)
                unread = batch
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError) as error:
            raise EmbedderUnavailable(
                f"Ollama at {self.address} could not embed with {self.model!r}: {error}"
            ) from None
        vectors = np.asarray(response.embeddings, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: Vectors = vectors / np.maximum(norms, np.float32(1e-12))
        return Embeddings(unit, unread)

    async def aclose(self) -> None:
        await self._client._client.aclose()


def _exceeds_context(error: ollama.ResponseError) -> bool:
    """Ollama's refusal of an input longer than the model's context (with truncate off)."""
    return "context length" in str(error.error).lower()
