"""The server's vector index: exact search for small partitions, usearch HNSW for large ones.

A partition starts exact (`ExactIndex`: a float32 matrix, exact and fastest to some ten thousand
rows). When it reaches `graph_rows` entries it is promoted to a usearch HNSW graph holding float16
vectors, built in a worker thread while the exact rows keep answering; changes made during the
build are replayed onto the graph before it takes over. A partition is one index of its own, so
partitioning stays a pre-filter. Searches over a graph, and over an exact partition past
`OFF_LOOP_ROWS`, run in a worker thread so the event loop never waits for them.

float16 keeps cosines within about 5e-5 of float32 and recall@1 where float32 has it (measured by
`bench/scale.py`); int8 lost recall@1 on real embeddings (0.94 at 69k entries), so it is not used.
usearch names vectors by 64-bit keys: a key is the first 64 bits of the entry id (itself a hash),
and each graph remembers which id a key stands for.

Import order matters: usearch 2.26's extension exports its statically linked libstdc++ symbols,
and onnxruntime imported after it crashes the process while it starts (a segfault in
std::codecvt). Importing onnxruntime first, here, keeps the embedder loadable whatever imports
this module; `tests/test_tiered_index.py` checks it in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (must load before usearch: see below)
from usearch.index import Index

from semcache_server.adapters.indexes.exact import ExactIndex
from semcache_server.core.ports import Neighbour, Vector, Vectors

log = logging.getLogger(__name__)

DEFAULT_GRAPH_ROWS = 10_000
"""Exact search over 10k rows takes ~0.2 ms; past that an HNSW graph is faster."""


_SERIAL_ROWS = 2_000
"""A graph's first rows are inserted by one thread (see `_Graph.add_many`)."""


@dataclass(frozen=True)
class GraphParameters:
    """HNSW's knobs; the defaults reach recall@1 >= 0.99 on real MiniLM embeddings at 1M."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 160
    build_threads: int = 2


def key_of(entry_id: str) -> int:
    """The usearch key of an entry: the first 64 bits of its id (ids are hex digests)."""
    return int(entry_id[:16], 16)


class _Graph:
    """One partition's HNSW graph and the entry id behind each key; every call holds the lock."""

    def __init__(self, dimensions: int, parameters: GraphParameters) -> None:
        self.index = Index(
            ndim=dimensions,
            metric="cos",
            dtype="f16",
            connectivity=parameters.connectivity,
            expansion_add=parameters.expansion_add,
            expansion_search=parameters.expansion_search,
        )
        self.ids: dict[int, str] = {}
        self.lock = threading.Lock()

    def add_many(self, entry_ids: list[str], vectors: Vectors, threads: int) -> None:
        """Add or replace; ids whose keys collide (two ids alike in their first 64 bits, about
        one pair in 10^8 at a million entries) keep the last one, with a warning."""
        rows: dict[int, int] = {}
        for row, entry_id in enumerate(entry_ids):
            key = key_of(entry_id)
            if key in rows and entry_ids[rows[key]] != entry_id:
                log.warning("ids %s and %s share an index key", entry_ids[rows[key]], entry_id)
            rows[key] = row
        if len(rows) != len(entry_ids):
            entry_ids = [entry_ids[row] for row in rows.values()]
            vectors = vectors[list(rows.values())]
        keys = np.fromiter(rows, np.uint64, len(rows))
        with self.lock:
            present = [int(key) for key in keys if int(key) in self.ids]
            if present:
                self.index.remove(np.asarray(present, dtype=np.uint64))
            # Threads racing to insert into a small graph leave some nodes unreachable (about 1%
            # of 180 entries; none single-threaded): a graph's first rows go in one at a time.
            serial = max(0, min(len(keys), _SERIAL_ROWS - len(self.ids)))
            if serial:
                self.index.add(keys[:serial], vectors[:serial], threads=1)
            if serial < len(keys):
                self.index.add(keys[serial:], vectors[serial:], threads=threads)
            for key, entry_id in zip(keys.tolist(), entry_ids, strict=True):
                previous = self.ids.get(key)
                if previous is not None and previous != entry_id:
                    log.warning("ids %s and %s share an index key", previous, entry_id)
                self.ids[key] = entry_id

    def remove(self, entry_id: str) -> None:
        key = key_of(entry_id)
        with self.lock:
            if self.ids.get(key) == entry_id:
                del self.ids[key]
                self.index.remove(key)

    def nearest(self, vector: Vector, k: int) -> list[Neighbour]:
        with self.lock:
            if not self.ids:
                return []
            matches = self.index.search(vector, min(k, len(self.ids)))
            return [
                Neighbour(self.ids[int(key)], 1.0 - float(distance))
                for key, distance in zip(matches.keys, matches.distances, strict=True)
                if int(key) in self.ids
            ]


class TieredIndex:
    """Implements `VectorIndex`; also saves itself to a directory and loads from one."""

    def __init__(
        self,
        graph_rows: int = DEFAULT_GRAPH_ROWS,
        parameters: GraphParameters | None = None,
    ) -> None:
        self.graph_rows = graph_rows
        self.parameters = parameters or GraphParameters()
        self._exact = ExactIndex()
        self._graphs: dict[str, _Graph] = {}
        self._where: dict[str, str] = {}
        """Entry id -> partition, for every entry in a graph (the exact index keeps its own)."""
        self._promoting: dict[str, list[tuple[str, Vector | None]]] = {}
        """Partitions whose graph is being built, with the changes made meanwhile."""
        self._lock = threading.Lock()
        self._builders: set[threading.Thread] = set()

    # --- VectorIndex ----------------------------------------------------------------------

    def add(self, partition: str, entry_id: str, vector: Vector) -> None:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        self.add_many(partition, [entry_id], vector.reshape(1, -1))

    def add_many(self, partition: str, entry_ids: list[str], vectors: Vectors) -> None:
        """Add or replace many entries of one partition at once (the feed and start-up do)."""
        if not entry_ids:
            return
        if len(set(entry_ids)) != len(entry_ids):  # the last vector of an id wins
            last = {entry_id: row for row, entry_id in enumerate(entry_ids)}
            entry_ids, vectors = list(last), vectors[list(last.values())]
        with self._lock:
            graph = self._graphs.get(partition)
            if graph is None and self._new_and_large(partition, len(entry_ids)):
                graph = self._graphs[partition] = _Graph(vectors.shape[1], self.parameters)
            if graph is None:
                for entry_id in entry_ids:
                    self._forget_elsewhere(entry_id, partition)
                for entry_id, vector in zip(entry_ids, vectors, strict=True):
                    self._exact.add(partition, entry_id, vector)
                pending = self._promoting.get(partition)
                if pending is not None:
                    pending.extend(zip(entry_ids, list(vectors), strict=True))
                elif self._exact.rows(partition) >= self.graph_rows:
                    self._start_promotion(partition)
                return
            for entry_id in entry_ids:
                self._forget_elsewhere(entry_id, partition)
                self._where[entry_id] = partition
            threads = self.parameters.build_threads if len(entry_ids) > 64 else 1
            graph.add_many(entry_ids, np.asarray(vectors, dtype=np.float32), threads=threads)

    def _new_and_large(self, partition: str, rows: int) -> bool:
        """A batch that fills a graph on its own (a rebuild) builds one straight away."""
        return (
            rows >= self.graph_rows
            and self._exact.rows(partition) == 0
            and partition not in self._promoting
        )

    def remove(self, entry_id: str) -> None:
        with self._lock:
            partition = self._where.pop(entry_id, None)
            if partition is None:
                located = self._exact.partition_of(entry_id)
                self._exact.remove(entry_id)
                pending = self._promoting.get(located) if located is not None else None
                if pending is not None:
                    pending.append((entry_id, None))
                return
            self._graphs[partition].remove(entry_id)

    async def nearest(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        graph = self._graphs.get(partition)
        if graph is not None:
            query = np.asarray(vector, dtype=np.float32).reshape(-1)
            return await asyncio.to_thread(graph.nearest, query, k)
        return await self._exact.nearest(partition, vector, k)

    def nearest_now(self, partition: str, vector: Vector, k: int = 1) -> list[Neighbour]:
        """The search on the calling thread (benchmarks, tests)."""
        graph = self._graphs.get(partition)
        if graph is not None:
            return graph.nearest(np.asarray(vector, dtype=np.float32).reshape(-1), k)
        return self._exact.nearest_now(partition, vector, k)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._where or entry_id in self._exact

    def __len__(self) -> int:
        return len(self._where) + len(self._exact)

    # --- management -----------------------------------------------------------------------

    def clear(self) -> None:
        self.adopt(TieredIndex(self.graph_rows, self.parameters))

    def adopt(self, other: TieredIndex) -> None:
        """Take over other's contents at once (a loaded snapshot, a rebuild); other is spent."""
        other.wait_for_promotions()
        with self._lock:
            self._exact = other._exact
            self._graphs = other._graphs
            self._where = other._where
            self._promoting.clear()

    def graph_partitions(self) -> list[str]:
        return list(self._graphs)

    def wait_for_promotions(self, timeout: float | None = None) -> None:
        """Block until graphs being built have taken over (tests and benchmarks)."""
        for builder in list(self._builders):
            builder.join(timeout)

    def memory_bytes(self) -> int:
        """What the vectors and graphs take (not the Python bookkeeping around them)."""
        graphs = sum(graph.index.memory_usage for graph in list(self._graphs.values()))
        return graphs + self._exact.memory_bytes()

    def _forget_elsewhere(self, entry_id: str, partition: str) -> None:
        """An entry lives in one partition: drop it from another one it moved from."""
        previous = self._where.get(entry_id)
        if previous is not None and previous != partition:
            del self._where[entry_id]
            self._graphs[previous].remove(entry_id)
        elif previous is None and partition in self._graphs and entry_id in self._exact:
            self._exact.remove(entry_id)

    def _start_promotion(self, partition: str) -> None:
        ids, matrix = self._exact.export(partition)
        self._promoting[partition] = []
        builder = threading.Thread(
            target=self._promote,
            args=(partition, ids, matrix),
            name=f"semcache-graph-{partition[:8]}",
            daemon=True,
        )
        self._builders.add(builder)
        builder.start()

    def _promote(self, partition: str, ids: list[str], matrix: Vectors) -> None:
        try:
            graph = _Graph(matrix.shape[1], self.parameters)
            graph.add_many(ids, matrix, threads=self.parameters.build_threads)
            with self._lock:
                pending = self._promoting.pop(partition, None)
                if pending is None:  # cleared meanwhile
                    return
                run: list[tuple[str, Vector]] = []
                for entry_id, vector in [*pending, ("", None)]:
                    if vector is not None:
                        run.append((entry_id, vector))
                        continue
                    if run:
                        graph.add_many(
                            [entry_id for entry_id, _ in run],
                            np.stack([vector for _, vector in run]),
                            threads=self.parameters.build_threads,
                        )
                        run = []
                    if entry_id:
                        graph.remove(entry_id)
                members = [entry_id for entry_id in self._exact.ids(partition)]
                stale = set(graph.ids.values()) - set(members)
                for entry_id in stale:
                    graph.remove(entry_id)
                for entry_id in members:
                    self._where[entry_id] = partition
                self._graphs[partition] = graph
                self._exact.drop(partition)
            log.info("partition %s… now searched by HNSW (%d entries)", partition[:8], len(members))
        except Exception:
            log.exception("building the HNSW graph of partition %s failed", partition[:8])
            with self._lock:
                self._promoting.pop(partition, None)
        finally:
            self._builders.discard(threading.current_thread())

    # --- snapshots ------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write every partition into directory (which must exist and be empty).

        Graphs are written with usearch's own format, each with its id list; exact partitions as
        float32 matrices. Each partition is written under its own lock, so a search waits at most
        for one partition's write.
        """
        layout: dict[str, dict[str, object]] = {}
        for number, (partition, ids, matrix) in enumerate(self._exact.export_all()):
            stem = f"exact-{number}"
            np.save(directory / f"{stem}.npy", matrix)
            (directory / f"{stem}.ids").write_text("\n".join(ids))
            layout[partition] = {"kind": "exact", "stem": stem}
        for number, (partition, graph) in enumerate(list(self._graphs.items())):
            stem = f"graph-{number}"
            with graph.lock:
                graph.index.save(str(directory / f"{stem}.usearch"))
                (directory / f"{stem}.ids").write_text("\n".join(graph.ids.values()))
            layout[partition] = {"kind": "graph", "stem": stem}
        (directory / "partitions.json").write_text(json.dumps(layout))

    @classmethod
    def load(
        cls,
        directory: Path,
        graph_rows: int = DEFAULT_GRAPH_ROWS,
        parameters: GraphParameters | None = None,
    ) -> TieredIndex:
        """An index as `save` wrote it into directory."""
        index = cls(graph_rows, parameters)
        layout = json.loads((directory / "partitions.json").read_text())
        for partition, where in layout.items():
            stem = str(where["stem"])
            ids = _read_ids(directory / f"{stem}.ids")
            if where["kind"] == "exact":
                matrix: Vectors = np.load(directory / f"{stem}.npy")
                for entry_id, vector in zip(ids, matrix, strict=True):
                    index._exact.add(partition, entry_id, vector)
                continue
            loaded = Index.restore(str(directory / f"{stem}.usearch"))
            if loaded is None:
                raise ValueError(f"{stem}.usearch is not a usearch index")
            graph = _Graph(loaded.ndim, index.parameters)
            graph.index = loaded
            # restore() brings back usearch's defaults, not the parameters the graph was built with
            loaded.expansion_search = index.parameters.expansion_search  # type: ignore[misc]
            loaded.expansion_add = index.parameters.expansion_add  # type: ignore[misc]
            graph.ids = {key_of(entry_id): entry_id for entry_id in ids}
            if len(graph.ids) != loaded.size:
                raise ValueError(f"{stem}: {len(graph.ids)} ids for {loaded.size} vectors")
            index._graphs[partition] = graph
            index._where.update(dict.fromkeys(ids, partition))
        return index

    def entries(self) -> Iterator[tuple[str, str]]:
        """(partition, entry id) of every entry, for comparing two indexes."""
        for partition, ids, _ in self._exact.export_all():
            for entry_id in ids:
                yield partition, entry_id
        for partition, graph in list(self._graphs.items()):
            for entry_id in list(graph.ids.values()):
                yield partition, entry_id


def _read_ids(path: Path) -> list[str]:
    text = path.read_text()
    return text.split("\n") if text else []
