"""Embedders turn prompts into unit vectors; the semantic layer compares them by cosine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
"""Rows of L2-normalised float32 embeddings, one a text."""


class Embedder(Protocol):
    @property
    def model_id(self) -> str:
        """Names the embedding model; entries embedded by another model are never compared."""
        ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def aclose(self) -> None: ...
