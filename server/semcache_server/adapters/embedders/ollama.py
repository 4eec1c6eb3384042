"""Embeddings from any Ollama embedding model, for deployments that already run one."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np
import ollama

from semcache_server.adapters.ollama_llm import DEFAULT_OLLAMA_HOST
from semcache_server.core.domain import EmbedderUnavailable
from semcache_server.core.ports import Vectors


class OllamaEmbedder:
    def __init__(self, host: str | None, model: str, timeout: float = 10.0) -> None:
        self.address = host or DEFAULT_OLLAMA_HOST
        self.model = model
        self._client = ollama.AsyncClient(host=self.address, timeout=httpx.Timeout(timeout))

    @property
    def model_id(self) -> str:
        return f"ollama/{self.model}"

    async def embed(self, texts: Sequence[str]) -> Vectors:
        try:
            response = await self._client.embed(model=self.model, input=list(texts))
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError) as error:
            raise EmbedderUnavailable(
                f"Ollama at {self.address} could not embed with {self.model!r}: {error}"
            ) from None
        vectors = np.asarray(response.embeddings, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: Vectors = vectors / np.maximum(norms, np.float32(1e-12))
        return unit

    async def aclose(self) -> None:
        await self._client._client.aclose()
