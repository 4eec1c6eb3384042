"""Prometheus metrics of one semcache process, served over HTTP on a port of their own.

Each process has its own registry (no global state: services started side by side in one test
process count apart); several replicas are scraped separately. Counts of calls come from the
calls themselves (`edge/observing.py`); what the cache holds and the state of the Redis breaker
are read at each scrape from the figures the composition root hands in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from semcache_server.core.ports import LLMOutcome, Stage

log = logging.getLogger(__name__)

SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""From a hot entry in memory (~0.1 ms) to the longest LLM call allowed by default (300 s)."""
SIMILARITY_BUCKETS = (
    0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.875, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96,
    0.97, 0.98, 0.99, 0.995, 1.0,
)  # fmt: skip
"""Fine where thresholds live (MiniLM's gray zone is 0.91 to 0.9425), coarse below."""
SHED_RESOURCES = ("llm_calls", "embeddings")
"""What admission control sheds (see `core/admission.py`), as label values."""


def resource_label(what: str) -> str:
    """A resource as admission control names it ("LLM calls"), as a label value (llm_calls)."""
    return what.lower().replace(" ", "_")


@dataclass(frozen=True)
class CacheFigures:
    """What a scrape reads from the running cache; each is called once a scrape, off the event
    loop, so each must be a plain read."""

    index_entries: Callable[[], int]
    redis_breaker_open: Callable[[], bool]
    redis_breaker_trips: Callable[[], int]
    redis_skipped_calls: Callable[[], int]
    redis_failures: Callable[[], int]


class _FiguresCollector(Collector):
    def __init__(self, figures: CacheFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterable[Metric]:
        figures = self._figures
        yield GaugeMetricFamily(
            "semcache_index_entries",
            "Entries in this replica's vector index (every namespace).",
            value=figures.index_entries(),
        )
        yield GaugeMetricFamily(
            "semcache_redis_breaker_open",
            "1 while the Redis circuit breaker is open: the cache layers skip Redis and the "
            "LLM answers every call.",
            value=1 if figures.redis_breaker_open() else 0,
        )
        yield CounterMetricFamily(
            "semcache_redis_breaker_trips",
            "Times the Redis circuit breaker opened.",
            value=figures.redis_breaker_trips(),
        )
        yield CounterMetricFamily(
            "semcache_redis_skipped_calls",
            "Redis calls skipped because the breaker was open.",
            value=figures.redis_skipped_calls(),
        )
        yield CounterMetricFamily(
            "semcache_redis_failures",
            "Cache layer calls to Redis that failed or were skipped (each a miss).",
            value=figures.redis_failures(),
        )


class Metrics:
    """The metrics of one process, in a registry of its own."""

    def __init__(self, figures: CacheFigures | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "semcache_requests",
            "Calls of the semcache.v1 services, by RPC, the layer that answered (none: no "
            "answer) and gRPC status.",
            ["rpc", "source", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "semcache_request_duration_seconds",
            "Seconds from a call's arrival to its end, by RPC and answering layer.",
            ["rpc", "source"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "semcache_stage_duration_seconds",
            "Seconds a step of a request took: exact_lookup, embedding, search, verification, "
            "llm_first_token, llm_total.",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.nearest_similarity = Histogram(
            "semcache_nearest_similarity",
            "Cosine similarity of the nearest cached prompt the semantic search found, on "
            "semantic hits (outcome=hit) and on the rest (outcome=miss).",
            ["outcome"],
            buckets=SIMILARITY_BUCKETS,
            registry=registry,
        )
        self.llm_calls = Counter(
            "semcache_llm_calls",
            "LLM calls made (single-flight riders make none), by how they ended: completed, "
            "cancelled, or a failure (unavailable, stream_broken, model_not_found, rejected, "
            "failed).",
            ["outcome"],
            registry=registry,
        )
        self.llm_tokens = Counter(
            "semcache_llm_completion_tokens",
            "Tokens the LLM generated in completed calls.",
            registry=registry,
        )
        self.tokens_saved = Counter(
            "semcache_tokens_saved",
            "LLM tokens that hits made unnecessary: each hit's entry's completion tokens.",
            registry=registry,
        )
        self.shed = Counter(
            "semcache_shed",
            "Work refused by admission control (RESOURCE_EXHAUSTED, or an answer stored for "
            "exact hits only when its embedding was shed), by resource.",
            ["resource"],
            registry=registry,
        )
        self.entries_stored = Counter(
            "semcache_entries_stored",
            "Answers this process stored in the cache.",
            registry=registry,
        )
        for stage in Stage:
            self.stage_seconds.labels(stage.value)
        for outcome in ("hit", "miss"):
            self.nearest_similarity.labels(outcome)
        for llm_outcome in LLMOutcome:
            self.llm_calls.labels(llm_outcome.value)
        for resource in SHED_RESOURCES:
            self.shed.labels(resource)
        if figures is not None:
            registry.register(_FiguresCollector(figures))
        # The process's CPU, memory, open files, Python version and garbage collection.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def stage(self, stage: Stage, seconds: float) -> None:
        self.stage_seconds.labels(stage.value).observe(seconds)

    def llm_call(self, outcome: LLMOutcome, completion_tokens: int) -> None:
        self.llm_calls.labels(outcome.value).inc()
        if completion_tokens > 0:
            self.llm_tokens.inc(completion_tokens)

    def saved(self, tokens: int) -> None:
        if tokens > 0:
            self.tokens_saved.inc(tokens)

    def shed_work(self, what: str) -> None:
        self.shed.labels(resource_label(what)).inc()

    def call(
        self,
        rpc: str,
        source: str | None,
        status: str,
        seconds: float,
        nearest: float | None,
        stored: bool,
    ) -> None:
        """One call ended."""
        answered_by = source or "none"
        self.requests.labels(rpc, answered_by, status).inc()
        self.request_seconds.labels(rpc, answered_by).observe(seconds)
        if nearest is not None:
            outcome = "hit" if source == "semantic" else "miss"
            self.nearest_similarity.labels(outcome).observe(nearest)
        if stored:
            self.entries_stored.inc()


HEAD_LIMIT = 16 * 1024
"""Bytes a scrape's request line and headers may take."""
READ_SECONDS = 10.0
"""How long a connection may take to send its request, and then to take its answer."""
MAX_CONNECTIONS = 32
"""Connections the endpoint holds at once. A Prometheus server scrapes over one connection, and
a few scrape a process; unbounded, idle connections took the file descriptors the gRPC port
needs (1,100 of them stalled a new gRPC connection for 3 s)."""


class MetricsServer:
    """Serves the registry as Prometheus text on GET /metrics (or /), on the event loop: it
    starts and stops with the service, and a scrape's rendering runs in a worker thread.

    At most MAX_CONNECTIONS at once. When full, a new connection takes the place of the one that
    has waited longest for its request (a scrape sends its request as it connects, so a flood of
    idle connections cannot keep it out); when every connection is being answered, the new one is
    closed at once.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: asyncio.Server | None = None
        self.port = 0
        self._reading: dict[asyncio.StreamWriter, None] = {}
        """Connections still sending their request, oldest first."""
        self._answering = 0

    async def start(self, host: str, port: int) -> None:
        """Raises OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def _make_room(self) -> bool:
        """Whether a new connection may stay, closing the longest-waiting one if need be."""
        if len(self._reading) + self._answering < MAX_CONNECTIONS:
            return True
        if not self._reading:
            return False
        oldest = next(iter(self._reading))
        del self._reading[oldest]
        oldest.close()  # its read sees the end and its task finishes
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._make_room():
            writer.close()
            return
        self._reading[writer] = None
        answering = False
        try:
            async with asyncio.timeout(READ_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            if writer not in self._reading:
                return  # closed meanwhile to make room
            del self._reading[writer]
            self._answering += 1
            answering = True
            async with asyncio.timeout(READ_SECONDS):
                status, content_type, body = await self._respond(head.decode("latin-1"))
                answer_head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(answer_head.encode("latin-1") + body)
                await writer.drain()
                writer.close()
                await writer.wait_closed()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that went away, or was too slow, gets nothing more
        except Exception:
            log.exception("serving metrics failed")
        finally:
            self._reading.pop(writer, None)
            if answering:
                self._answering -= 1
            writer.transport.abort()  # at once: what was left to send is not waited for

    async def _respond(self, head: str) -> tuple[str, str, bytes]:
        request_line, *header_lines = head.split("\r\n")
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
        if path not in ("/metrics", "/"):
            return "404 Not Found", "text/plain", b"GET /metrics\n"
        accept = ""
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encode, content_type = choose_encoder(accept)
        body = await asyncio.to_thread(encode, self._registry)
        return "200 OK", content_type, body
