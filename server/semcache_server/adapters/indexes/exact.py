"""An exact vector index: brute force over a float32 matrix a partition.

Partitions are searched separately, so an entry of another model, system prompt or tenant can
never be the nearest neighbour that hides a valid hit (the pre-filter the semantic layer relies on).
Exact and fast to some 20k entries a partition; an approximate index can take its place behind the
same `VectorIndex` protocol. A search over more than `OFF_LOOP_ROWS` rows runs in a worker thread,
so a large partition never stalls the event loop; a lock keeps it from seeing a half-done change.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from semcache_server.core.ports import Neighbour, Vector

OFF_LOOP_ROWS = 4096
"""Below this a search takes tens of microseconds, less than a hop to a worker thread costs."""
_RESCORED_EXTRA = 4
"""Candidates scored again beyond k, in case a row moved during the scan."""


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
        self._lock = threading.Lock()

    def add(self, partition: str, entry_id: str, vector: Vector) -> None:
        with self._lock:
            self._add(partition, entry_id, np.asarray(vector, dtype=np.float32).reshape(-1))

    def _add(self, partition: str, entry_id: str, vector: Vector) -> None:
        located = self._where.get(entry_id)
        if located is not None and located[0] == partition:
            self._partitions[partition].matrix[located[1]] = vector
            return
        if located is not None:
            self._remove(entry_id)
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
        with self._lock:
            self._remove(entry_id)

    def _remove(self, entry_id: str) -> None:
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

    async def nearest(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        rows = self._partitions.get(partition)
        if rows is not None and len(rows.ids) > OFF_LOOP_ROWS:
            return await asyncio.to_thread(self.nearest_now, partition, vector, k)
        return self.nearest_now(partition, vector, k)

    def nearest_now(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        """The search itself, on the calling thread.

        The scan runs without the lock, so the event loop can add and remove meanwhile: a removal
        moves the last row into the hole, so a row may be read torn or hold another entry by the
        time the scan ends. The candidates are therefore named by the ids their rows held when
        the scan began, and scored again under the lock wherever those entries are now.
        """
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._lock:
            rows = self._partitions.get(partition)
            if rows is None or not rows.ids or rows.matrix.shape[1] != query.shape[0]:
                return []
            matrix, ids = rows.matrix, list(rows.ids)
        scores = matrix[: len(ids)] @ query
        wanted = min(k + _RESCORED_EXTRA, len(ids))
        if wanted < len(ids):
            candidates = np.argpartition(-scores, wanted - 1)[:wanted]
        else:
            candidates = np.arange(len(ids))
        with self._lock:
            found = []
            for entry_id in {ids[int(i)] for i in candidates}:
                located = self._where.get(entry_id)
                if located is None or located[0] != partition:
                    continue  # removed, or moved to another partition, during the scan
                current = self._partitions[partition].matrix[located[1]]
                found.append(Neighbour(entry_id, float(current @ query)))
        found.sort(key=lambda n: (-n.similarity, n.entry_id))
        return found[:k]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._where

    # --- for the tiered index, which promotes large partitions and saves snapshots -----------

    def rows(self, partition: str) -> int:
        rows = self._partitions.get(partition)
        return len(rows.ids) if rows is not None else 0

    def partition_of(self, entry_id: str) -> str | None:
        located = self._where.get(entry_id)
        return located[0] if located is not None else None

    def ids(self, partition: str) -> list[str]:
        with self._lock:
            rows = self._partitions.get(partition)
            return list(rows.ids) if rows is not None else []

    def export(self, partition: str) -> tuple[list[str], Vector]:
        """A copy of one partition's ids and rows."""
        with self._lock:
            rows = self._partitions[partition]
            return list(rows.ids), rows.matrix[: len(rows.ids)].copy()

    def export_all(self) -> list[tuple[str, list[str], Vector]]:
        return [(name, *self.export(name)) for name in list(self._partitions)]

    def drop(self, partition: str) -> None:
        """Forget a whole partition (its entries moved to a graph)."""
        with self._lock:
            rows = self._partitions.pop(partition, None)
            for entry_id in rows.ids if rows is not None else ():
                self._where.pop(entry_id, None)

    def memory_bytes(self) -> int:
        return sum(rows.matrix.nbytes for rows in list(self._partitions.values()))
