"""The vector index: nearest cached prompts within one partition.

Partitions are searched separately, so an entry of another model, system prompt or tenant can
never be the nearest neighbour that hides a valid hit (the pre-filter the semantic layer relies on).
ExactIndex is brute force over a float32 matrix a partition, exact and fast to some 20k entries
a partition; an approximate index can take its place behind the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Neighbour:
    entry_id: str
    similarity: float


class VectorIndex(Protocol):
    def add(self, partition: str, entry_id: str, vector: Vector) -> None:
        """Add or replace the vector of an entry (vectors are unit length)."""
        ...

    def remove(self, entry_id: str) -> None: ...

    def nearest(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        """The k most similar entries of the partition, most similar first."""
        ...

    def __len__(self) -> int: ...


class _Partition:
    """A growable matrix of rows and the entry id of each row."""

    def __init__(self, dimensions: int) -> None:
        self.matrix: Vector = np.empty((16, dimensions), dtype=np.float32)
        self.ids: list[str] = []

    def append(self, entry_id: str, vector: Vector) -> int:
        row = len(self.ids)
        if row == self.matrix.shape[0]:
            grown = np.empty((row * 2, self.matrix.shape[1]), dtype=np.float32)
            grown[:row] = self.matrix[:row]
            self.matrix = grown
        self.matrix[row] = vector
        self.ids.append(entry_id)
        return row

    def remove_row(self, row: int) -> str | None:
        """Move the last row into the hole; returns the id of the entry that moved."""
        last = len(self.ids) - 1
        moved = None
        if row != last:
            self.matrix[row] = self.matrix[last]
            self.ids[row] = self.ids[last]
            moved = self.ids[row]
        self.ids.pop()
        return moved


class ExactIndex:
    def __init__(self) -> None:
        self._partitions: dict[str, _Partition] = {}
        self._where: dict[str, tuple[str, int]] = {}

    def add(self, partition: str, entry_id: str, vector: Vector) -> None:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        located = self._where.get(entry_id)
        if located is not None and located[0] == partition:
            self._partitions[partition].matrix[located[1]] = vector
            return
        if located is not None:
            self.remove(entry_id)
        rows = self._partitions.get(partition)
        if rows is None or rows.matrix.shape[1] != vector.shape[0]:
            if rows is not None and rows.ids:
                raise ValueError(
                    f"partition {partition} holds {rows.matrix.shape[1]}-d vectors, "
                    f"not {vector.shape[0]}-d"
                )
            rows = self._partitions[partition] = _Partition(vector.shape[0])
        self._where[entry_id] = (partition, rows.append(entry_id, vector))

    def remove(self, entry_id: str) -> None:
        located = self._where.pop(entry_id, None)
        if located is None:
            return
        partition, row = located
        rows = self._partitions[partition]
        moved = rows.remove_row(row)
        if moved is not None:
            self._where[moved] = (partition, row)
        if not rows.ids:
            del self._partitions[partition]

    def nearest(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        rows = self._partitions.get(partition)
        if rows is None or not rows.ids or rows.matrix.shape[1] != vector.shape[-1]:
            return []
        scores = rows.matrix[: len(rows.ids)] @ np.asarray(vector, dtype=np.float32).reshape(-1)
        k = min(k, scores.shape[0])
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Neighbour(rows.ids[i], float(scores[i])) for i in top]

    def __len__(self) -> int:
        return len(self._where)
