"""Keeping this replica's vector index in step with Redis, which every replica shares.

Start-up loads the newest index snapshot (when it belongs to this Redis and this embedder) and
replays the change feed from the position the snapshot covers; without one, it reads every entry
once. Then it follows the feed: a put anywhere is in this index within one blocking read (half a
second at most, milliseconds in practice), and so is a deletion or an expiry. A lost connection
resumes from the last change applied; a gap (a trimmed feed, a flushed Redis) rebuilds, and so
does a flushed or restored Redis found by `RedisFeed.verify` whenever a read returns no change
(every `block_seconds` while nothing is written), without waiting for a write. Snapshots
are written periodically and at shutdown, by the task that applies the feed, so a snapshot and its
position always agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from semcache_server.adapters.indexes.tiered import TieredIndex
from semcache_server.adapters.redis_feed import (
    Change,
    FeedGap,
    FeedPosition,
    RedisFeed,
    StoredEmbedding,
)
from semcache_server.core.domain import StoreUnavailable
from semcache_server.core.outages import OutageLog
from semcache_server.core.ports import ReplicaSource, Vector

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_REBUILD_CHUNK = 50_000
"""Rows a partition gathers before a rebuild adds them (a graph builds fastest in bulk)."""


@dataclass(frozen=True)
class ReplicationSettings:
    snapshot_dir: Path | None
    """Where snapshots live; None: never written, never read."""
    snapshot_interval: float = 300.0
    """Seconds between periodic snapshots (only when something changed); 0: only at shutdown."""
    block_seconds: float = 0.5
    batch: int = 1000
    sweep_interval: float = 0.5
    retry_seconds: float = 1.0


@dataclass(frozen=True)
class SnapshotManifest:
    format: int
    epoch: str
    embedding_model: str
    stream_id: str
    seq: int
    entries: int
    written_at: float


class ChangeListener(Protocol):
    """Something else that must hear of every change the feed reports (hot entries)."""

    def forget(self, entry_id: str) -> None:
        """The entry changed: put, deleted or expired."""

    def clear(self) -> None:
        """Changes may have been missed (the index was loaded or rebuilt): forget everything."""

    def confirm(self) -> None:
        """The feed was just read: every change until now has been reported."""


class IndexReplica:
    """Owns the index's contents: loads them, follows the feed, and snapshots them."""

    def __init__(
        self,
        index: TieredIndex,
        source: ReplicaSource,
        feed: RedisFeed,
        embedding_model: str,
        settings: ReplicationSettings,
        listener: ChangeListener | None = None,
    ) -> None:
        self.index = index
        self._listener = listener
        self._source = source
        self._feed = feed
        self._embedding_model = embedding_model
        self._settings = settings
        self.position = FeedPosition()
        self.loaded = False
        self._epoch = ""
        self._rebuild_needed = False
        self._changed_since_snapshot = False
        self._last_snapshot = time.monotonic()
        self._outages = OutageLog("Redis change feed")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._first_attempt = asyncio.Event()
        """Set once the first load has succeeded or failed."""

    # --- life -----------------------------------------------------------------------------

    async def load(self) -> bool:
        """Fill the index from a snapshot and the feed, or from every entry; False if Redis is
        down (then `start_following` keeps trying)."""
        try:
            await self._load()
        except StoreUnavailable as error:
            log.warning("cannot load the index yet (%s); retrying in the background", error)
            return False
        return True

    async def start(self, patience: float) -> bool:
        """Load and follow the feed in the background; wait up to patience seconds for the load.

        Returns True when the index is loaded. A large index without a snapshot (minutes at a
        million entries) goes on loading while the server answers: exact hits at once, semantic
        hits once it is in. With Redis down this returns at the first failed attempt.
        """
        self.start_following()
        attempted = asyncio.ensure_future(self._first_attempt.wait())
        try:
            await asyncio.wait_for(attempted, patience)
        except TimeoutError:
            log.info("the index is still loading; serving meanwhile (exact hits work)")
        return self.loaded

    def start_following(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(), name="semcache-feed"),
            asyncio.create_task(self._sweep(), name="semcache-expiry"),
        ]

    async def stop(self) -> None:
        """Stop following; write a snapshot when anything changed since the last one."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.block_seconds + 1)
        self._tasks = []
        if self.loaded and self._changed_since_snapshot:
            await self.snapshot()
        await self._feed.aclose()

    # --- loading --------------------------------------------------------------------------

    async def _load(self) -> None:
        try:
            self._epoch = await self._feed.epoch()
            if not self._rebuild_needed and await self._load_snapshot():
                self.loaded = True
                return
            await self._rebuild()
            self._rebuild_needed = False
            self.loaded = True
        finally:
            if self._listener is not None:
                self._listener.clear()  # the feed's position moved past changes it never read
            self._first_attempt.set()

    async def _load_snapshot(self) -> bool:
        directory = self._snapshot_root()
        if directory is None or not (directory / "current" / "manifest.json").is_file():
            return False
        current = directory / "current"
        try:
            manifest = SnapshotManifest(**json.loads((current / "manifest.json").read_text()))
        except (OSError, ValueError, TypeError) as error:
            log.warning("ignoring the index snapshot in %s: %s", current, error)
            return False
        head = await self._feed.head()
        why_not = (
            "another format"
            if manifest.format != SNAPSHOT_FORMAT
            else "another Redis (or a flushed one)"
            if manifest.epoch != self._epoch
            else "another embedder"
            if manifest.embedding_model != self._embedding_model
            else "newer than this Redis's feed"
            if manifest.seq > head.seq
            else None
        )
        if why_not is not None:
            log.info("not loading the index snapshot: it was written for %s", why_not)
            return False
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(
                TieredIndex.load, current, self.index.graph_rows, self.index.parameters
            )
        except (OSError, ValueError) as error:
            log.warning("ignoring the index snapshot in %s: %s", current, error)
            return False
        self.index.adopt(loaded)
        self.position = FeedPosition(manifest.stream_id, manifest.seq)
        self._changed_since_snapshot = False
        log.info(
            "index snapshot loaded: %d entries in %.1f s, replaying the feed after change %d",
            len(self.index),
            time.perf_counter() - started,
            manifest.seq,
        )
        return True

    async def _rebuild(self) -> None:
        """Read every entry of this embedder into a fresh index, then swap it in."""
        started = time.perf_counter()
        head = await self._feed.head()
        fresh = TieredIndex(self.index.graph_rows, self.index.parameters)
        waiting: dict[str, tuple[list[str], list[Vector]]] = defaultdict(lambda: ([], []))
        count = 0
        async for stored in self._source.vectors(self._embedding_model):
            ids, vectors = waiting[stored.partition]
            ids.append(stored.entry_id)
            vectors.append(stored.vector)
            count += 1
            if len(ids) >= _REBUILD_CHUNK:
                await asyncio.to_thread(fresh.add_many, stored.partition, ids, np.stack(vectors))
                del waiting[stored.partition]
        for partition, (ids, vectors) in waiting.items():
            await asyncio.to_thread(fresh.add_many, partition, ids, np.stack(vectors))
        await asyncio.to_thread(fresh.wait_for_promotions)
        self.index.adopt(fresh)
        self.position = head
        self._changed_since_snapshot = True
        log.info("index loaded: %d entries in %.1f s", count, time.perf_counter() - started)

    # --- following ------------------------------------------------------------------------

    async def _follow(self) -> None:
        settings = self._settings
        while not self._stopping:
            try:
                if not self.loaded or self._rebuild_needed:
                    await self._load()
                changes = await self._feed.read(
                    self.position, settings.block_seconds, settings.batch
                )
                if not changes:  # nothing written: was Redis flushed or restored meanwhile?
                    await self._feed.verify(self._epoch, self.position)
                if self._listener is not None:
                    for change in changes:
                        self._listener.forget(change.entry_id)
                    if len(changes) < settings.batch:  # a full batch may leave more unread
                        self._listener.confirm()
                if changes:
                    await self._apply(changes)
                self._outages.succeeded()
                if self._snapshot_due():
                    await self.snapshot()
            except FeedGap as gap:
                log.warning("the change feed has a gap (%s): rebuilding the index", gap)
                self._rebuild_needed = True
                if self._listener is not None:
                    self._listener.clear()  # at once: the rebuild may take minutes
            except StoreUnavailable as error:
                # redis-py's read timeout can swallow a cancellation that races with it
                # (Python 3.11's asyncio.timeout), so a stop is checked here too.
                if self._stopping:
                    return
                self._outages.failed(error)
                await self._pause(settings.retry_seconds)

    async def _pause(self, seconds: float) -> None:
        """After a failure: until Redis answers again (its breaker closes), so the feed resumes
        as soon as Redis does, and at most seconds; a failure that left the breaker closed (an
        error Redis answered with) waits the whole time."""
        breaker = self._feed.breaker
        if breaker.closed:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await breaker.wait_closed()

    async def _apply(self, changes: list[Change]) -> None:
        wanted = [
            change.entry_id
            for change in changes
            if change.op == "put"
            and change.embedding_model == self._embedding_model
            and change.entry_id not in self.index  # this replica's own write, or a rewrite
        ]
        embeddings = await self._feed.embeddings(wanted)
        await asyncio.to_thread(self._apply_now, changes, embeddings)
        self.position = changes[-1].position
        self._changed_since_snapshot = True

    def _apply_now(self, changes: list[Change], embeddings: dict[str, StoredEmbedding]) -> None:
        """In order: consecutive puts of a partition go in together; a removal ends a run."""
        run_partition = ""
        run_ids: list[str] = []
        run_vectors: list[Vector] = []

        def flush() -> None:
            if run_ids:
                self.index.add_many(run_partition, list(run_ids), np.stack(run_vectors))
                run_ids.clear()
                run_vectors.clear()

        for change in changes:
            if change.op == "put":
                stored = embeddings.get(change.entry_id)
                if stored is None:  # ours already, another embedder's, or gone since
                    continue
                partition = stored.partition
                if partition != run_partition:
                    flush()
                    run_partition = partition
                run_ids.append(change.entry_id)
                run_vectors.append(stored.vector)
            else:
                flush()
                self.index.remove(change.entry_id)
        flush()

    async def _sweep(self) -> None:
        """Report expired entries to the feed; every replica does it, each expiry once."""
        while not self._stopping:
            await asyncio.sleep(self._settings.sweep_interval)
            with contextlib.suppress(StoreUnavailable):  # the follower reports outages
                await self._source.sweep_expired()

    # --- snapshots ------------------------------------------------------------------------

    def _snapshot_root(self) -> Path | None:
        root = self._settings.snapshot_dir
        if root is None:
            return None
        safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in self._embedding_model)
        return root / safe_model

    def _snapshot_due(self) -> bool:
        interval = self._settings.snapshot_interval
        return (
            interval > 0
            and self._changed_since_snapshot
            and time.monotonic() - self._last_snapshot >= interval
        )

    async def snapshot(self) -> Path | None:
        """Write the index and the position it covers; returns the snapshot's directory."""
        root = self._snapshot_root()
        if root is None or not self.loaded:
            return None
        manifest = SnapshotManifest(
            format=SNAPSHOT_FORMAT,
            epoch=self._epoch,
            embedding_model=self._embedding_model,
            stream_id=self.position.stream_id,
            seq=self.position.seq,
            entries=len(self.index),
            written_at=time.time(),
        )
        started = time.perf_counter()
        try:
            written = await asyncio.to_thread(_write_snapshot, self.index, manifest, root)
        except OSError as error:
            log.warning("writing the index snapshot into %s failed: %s", root, error)
            return None
        self._changed_since_snapshot = False
        self._last_snapshot = time.monotonic()
        log.info(
            "index snapshot written: %d entries at change %d in %.1f s",
            manifest.entries,
            manifest.seq,
            time.perf_counter() - started,
        )
        return written


def _write_snapshot(index: TieredIndex, manifest: SnapshotManifest, root: Path) -> Path:
    """Write into a new directory, then swap it for the current one."""
    root.mkdir(parents=True, exist_ok=True)
    fresh = root / f".new-{uuid.uuid4().hex[:8]}"
    fresh.mkdir()
    try:
        index.save(fresh)
        (fresh / "manifest.json").write_text(json.dumps(asdict(manifest)))
        current = root / "current"
        retired = root / f".old-{uuid.uuid4().hex[:8]}"
        if current.exists():
            current.rename(retired)
        fresh.rename(current)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if retired.exists():
        shutil.rmtree(retired, ignore_errors=True)
    return current
