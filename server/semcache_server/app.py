"""The composition root: the one place that knows both the core and the adapters.

`build_cache` wires a cache chain from `Settings`; the server (`start`), the benchmarks and the
test fixtures all call it, handing in a part only where they need their own (a shared embedder
loaded once, an LLM stand-in, a policy under test). Parts handed in stay the caller's; parts built
here are closed by `Cache.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import numpy.typing as npt

from semcache_server.adapters.embedded_redis import EmbeddedRedis, StateDirInUse
from semcache_server.adapters.hot_entries import HotEntries
from semcache_server.adapters.indexes.tiered import TieredIndex
from semcache_server.adapters.ollama_llm import OllamaBackend
from semcache_server.adapters.ollama_passthrough import OllamaPassThrough
from semcache_server.adapters.redis_breaker import RedisBreaker
from semcache_server.adapters.redis_catalog import RedisCatalog
from semcache_server.adapters.redis_claims import RedisClaims
from semcache_server.adapters.redis_connection import RedisConnection
from semcache_server.adapters.redis_feed import RedisFeed, RedisReplicaSource
from semcache_server.adapters.redis_store import RedisEntryStore
from semcache_server.adapters.redis_tally import RedisTally
from semcache_server.adapters.replication import IndexReplica, ReplicationSettings
from semcache_server.core.admin import CacheAdmin
from semcache_server.core.admission import Admission
from semcache_server.core.chain import CacheChain, ChainSettings
from semcache_server.core.flights import ClaimSettings, Flights
from semcache_server.core.layers import ExactLayer, SemanticLayer
from semcache_server.core.observing import ObservedLLM
from semcache_server.core.outages import OutageLog
from semcache_server.core.policy import (
    default_policy,
    shipped_policy_json,
    verified_policy_file_name,
)
from semcache_server.core.ports import (
    Embedder,
    HitPolicy,
    Judge,
    LLMBackend,
    VectorIndex,
    Verifier,
)
from semcache_server.core.validation import Limits
from semcache_server.edge.auth import (
    AdminAccess,
    Authenticator,
    KeysFileAuthenticator,
    KeysFileError,
    OpenAccess,
    TenantKeysOnly,
)
from semcache_server.edge.calls import Calls
from semcache_server.edge.grpc.admin import AdminServicer
from semcache_server.edge.grpc.server import (
    GrpcServer,
    PortInUse,
    TlsFiles,
    refuse_a_taken_port,
)
from semcache_server.edge.metrics import CacheFigures, Metrics, MetricsServer
from semcache_server.edge.request_log import RequestLog
from semcache_server.settings import Settings

if TYPE_CHECKING:
    from semcache_server.edge.http.server import HttpFront

log = logging.getLogger(__name__)

INDEX_LOAD_PATIENCE = 10.0
"""Seconds start-up waits for the index before serving without it (a snapshot loads in ~2 s at
a million entries; reading every entry takes minutes)."""

EMBEDDINGS_IN_FLIGHT = 64
"""Prompts handed to the embedder at once: two of its batches (one running, one gathering);
the rest wait here, up to --max-embedding-queue."""

Part = Embedder | LLMBackend | RedisConnection | Verifier | Judge | HotEntries | RedisTally
"""Something the cache is built from and must close."""


def build_embedder(settings: Settings, *, threads: int = 1) -> Embedder:
    """The embedder the settings name (blocking: the local one loads its model)."""
    if settings.embedder == "local":
        from semcache_server.adapters.embedders.local import LocalEmbedder

        return LocalEmbedder.load(threads=threads)
    if settings.embedder == "ollama":
        from semcache_server.adapters.embedders.ollama import OllamaEmbedder

        return OllamaEmbedder(settings.ollama_host, settings.ollama_embed_model)
    raise ValueError(f"unknown embedder {settings.embedder!r}: use 'local' or 'ollama'")


def build_verifier(settings: Settings) -> Verifier | None:
    """The pair verifier the settings ask for, when its weights ship (blocking: loads a model)."""
    if settings.verifier == "off":
        return None
    from semcache_server.adapters.verifiers import pair

    if not pair.shipped():
        log.warning(
            "no pair verifier weights in this install; semantic hits use the lexical policy"
        )
        return None
    return pair.PairVerifier.load()


@dataclass(frozen=True)
class PairScoring:
    """The pair verifier as offline tools use it: synchronous, batched, all cores."""

    model_id: str
    weights_sha256: str
    logits: Callable[[Sequence[tuple[str, str]]], npt.NDArray[np.float32]]


def load_pair_scoring(threads: int, verifier_dir: Path | None = None) -> PairScoring:
    """A pair verifier for calibration and benchmarks: the shipped one, or the weights in
    verifier_dir (`semcache train-verifier --out`). Blocking: loads the model."""
    import hashlib

    from semcache_server.adapters.verifiers import pair

    directory = pair.default_verifier_dir() if verifier_dir is None else verifier_dir
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no verifier weights in {directory}: pass --verifier-dir")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = pair.PairModel.load(directory, threads=threads)
    return PairScoring(pair.MODEL_ID, digest, model.logits)


def build_judge(settings: Settings) -> Judge | None:
    if settings.judge_model is None:
        return None
    from semcache_server.adapters.ollama_llm import DEFAULT_OLLAMA_HOST
    from semcache_server.adapters.verifiers.ollama_judge import OllamaJudge

    host = settings.ollama_host or DEFAULT_OLLAMA_HOST
    return OllamaJudge(host, settings.judge_model, settings.judge_timeout)


def build_llm(settings: Settings) -> LLMBackend:
    return OllamaBackend(settings.ollama_host, connect_timeout=settings.ollama_connect_timeout)


@dataclass
class Cache:
    """A wired cache chain, with the parts it was built from."""

    chain: CacheChain
    semantic: SemanticLayer
    redis: RedisConnection
    """The one Redis connection every storage role shares (entries, catalogue, claims, tally,
    replica source); each consumer is handed the role it needs, built over it."""
    index: VectorIndex
    policy: HitPolicy
    embedder: Embedder
    store_outages: OutageLog
    hot: HotEntries
    """The store the layers use: hot entries kept in memory in front of the Redis entries."""
    flights: Flights
    """The LLM calls under way on this replica, and the claims across replicas."""
    owned: list[Part] = field(default_factory=list)

    async def aclose(self) -> None:
        """Closes the parts built here, not those handed in."""
        await self.close_parts(self.owned)

    @staticmethod
    async def close_parts(
        parts: list[Part],
    ) -> None:
        """Close in reverse order of building; one failing part does not keep the rest open."""
        while parts:
            part = parts.pop()
            try:
                await part.aclose()
            except Exception:
                log.exception("closing %s failed", type(part).__name__)


async def build_cache(
    settings: Settings,
    redis_url: str,
    *,
    embedder: Embedder | None = None,
    llm: LLMBackend | None = None,
    policy: HitPolicy | None = None,
    index: VectorIndex | None = None,
    verifier: Verifier | None = None,
) -> Cache:
    """Wire the chain: exact layer and semantic layer over one store, then the LLM; each part
    that needs Redis gets the role it plays, over one connection.

    If wiring fails halfway, what was already built here is closed before the error goes on.
    """
    owned: list[Part] = []
    try:
        redis = RedisConnection.from_url(
            redis_url, timeout=settings.redis_timeout, feed_max_len=settings.feed_max_len
        )
        owned.append(redis)
        if embedder is None:
            # Loading a model takes a second of CPU: not on the event loop.
            embedder = await asyncio.to_thread(build_embedder, settings)
            owned.append(embedder)
        if llm is None:
            llm = build_llm(settings)
            owned.append(llm)
        if policy is None:
            policy = await _default_policy(settings, embedder.model_id, verifier, owned)
    except BaseException:
        await Cache.close_parts(owned)
        raise
    store_outages = OutageLog("Redis")
    hot = HotEntries(RedisEntryStore(redis), settings.hot_entries)
    tally = RedisTally(redis)
    # Closed before the connection: both flush what they counted.
    owned[owned.index(redis) + 1 : owned.index(redis) + 1] = [hot, tally]
    if index is None:
        index = TieredIndex(settings.index_graph_rows)
    semantic = SemanticLayer(
        embedder,
        index,
        hot,
        policy,
        store_outages,
        max_temperature=settings.max_semantic_temperature,
        embeddings=Admission(
            "embeddings",
            EMBEDDINGS_IN_FLIGHT,
            settings.max_embedding_queue,
            "--max-embedding-queue",
        ),
    )
    exact = ExactLayer(hot, store_outages)
    flights = Flights(
        RedisClaims(redis),
        exact.lookup,  # a replica waiting on another's claim looks for the stored answer
        store_outages,
        ClaimSettings(max_generation_seconds=settings.max_generation_seconds),
    )
    chain = CacheChain(
        exact,
        semantic,
        ObservedLLM(llm),  # tells each request's observer about its LLM call
        ChainSettings(
            ttl_seconds=settings.ttl_seconds or None,
            replay_chunk_chars=settings.replay_chunk_chars,
            speculative_llm=settings.speculative_llm,
            limits=Limits(max_prompt_chars=settings.max_prompt_chars),
            max_generation_seconds=settings.max_generation_seconds,
        ),
        Admission(
            "LLM calls",
            settings.max_llm_calls,
            settings.max_llm_queue,
            "--max-llm-calls, --max-llm-queue",
        ),
        flights,
        tally,
    )
    return Cache(
        chain, semantic, redis, index, policy, embedder, store_outages, hot, flights, owned
    )


async def _default_policy(
    settings: Settings,
    embedder_model_id: str,
    verifier: Verifier | None,
    owned: list[Part],
) -> HitPolicy:
    """The server's policy; loads the verifier and the judge only when they will be used."""
    verified = settings.similarity_threshold is None and settings.verifier != "off"
    if verified and verifier is None:
        from semcache_server.adapters.verifiers import pair

        missing = None
        if not pair.shipped():
            missing = "no pair verifier weights ship in this install"
        elif not shipped_policy_json(verified_policy_file_name(embedder_model_id, pair.MODEL_ID)):
            missing = f"no verified policy ships for the embedder {embedder_model_id}"
        if missing is not None:
            log.warning(
                "--verifier %s: %s, so the lexical policy decides semantic hits "
                "(--verifier off chooses it and silences this line)",
                settings.verifier,
                missing,
            )
        else:
            verifier = await asyncio.to_thread(build_verifier, settings)
            if verifier is not None:
                owned.append(verifier)
    if not verified:
        verifier = None
    judge = build_judge(settings) if verifier is not None else None
    if judge is not None:
        owned.append(judge)
    elif settings.judge_model is not None:
        log.warning(
            "--judge-model %s is unused: the judge needs the verifier", settings.judge_model
        )
    return default_policy(embedder_model_id, settings.similarity_threshold, verifier, judge)


@dataclass
class Service:
    """A running semcache: its server, its cache, and what must be closed when it stops."""

    grpc: GrpcServer
    cache: Cache
    replica: IndexReplica
    embedded_redis: EmbeddedRedis | None = None
    metrics: MetricsServer | None = None
    http: HttpFront | None = None
    """The Ollama and OpenAI HTTP front, when --http-port asks for it."""
    upstream: OllamaPassThrough | None = None
    supervision: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def http_port(self) -> int:
        """The port of the HTTP front; 0 when there is none."""
        return self.http.port if self.http is not None else 0

    @property
    def metrics_port(self) -> int:
        """The port of the metrics endpoint; 0 when there is none."""
        return self.metrics.port if self.metrics is not None else 0

    async def supervise(self) -> None:
        """Keep the storage health name in step with the Redis breaker, and restart the embedded
        Redis when it dies."""
        breaker = self.cache.redis.breaker
        await self.grpc.set_storage_health(breaker.closed)
        self.supervision.append(
            asyncio.create_task(
                _mirror_storage_health(breaker, self.grpc), name="semcache-storage-health"
            )
        )
        if self.embedded_redis is not None:
            self.supervision.append(
                asyncio.create_task(self.embedded_redis.supervise(), name="semcache-redis-owner")
            )

    async def stop_supervising(self) -> None:
        tasks, self.supervision = self.supervision, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self, grace: float | None) -> None:
        try:
            # Both fronts stop taking calls at once, and give theirs the same grace.
            fronts = [self.grpc.stop(grace)]
            if self.http is not None:
                fronts.append(self.http.stop())
            await asyncio.gather(*fronts)
        finally:
            try:
                if self.upstream is not None:
                    await self.upstream.aclose()
                if self.metrics is not None:
                    await self.metrics.stop()
                await self.stop_supervising()  # before the embedded Redis stops: no restart
                await self.replica.stop()
                await self.cache.aclose()
            finally:
                if self.embedded_redis is not None:
                    await asyncio.to_thread(self.embedded_redis.stop)


async def _mirror_storage_health(breaker: RedisBreaker, server: GrpcServer) -> None:
    """Until cancelled: the storage health name says NOT_SERVING while the breaker skips Redis."""
    while True:
        changed = breaker.next_change()  # taken first: a change while reporting is not lost
        await server.set_storage_health(breaker.closed)
        await changed.wait()


def build_replica(settings: Settings, redis_url: str, cache: Cache) -> IndexReplica:
    """What keeps the cache's index in step with Redis: a snapshot, then the change feed."""
    if not isinstance(cache.index, TieredIndex):
        raise TypeError("replication needs the TieredIndex")
    replication = ReplicationSettings(
        snapshot_dir=settings.state_dir / "index",
        snapshot_interval=settings.snapshot_interval,
    )
    feed = RedisFeed.from_url(
        redis_url,
        settings.redis_timeout,
        replication.block_seconds,
        cache.redis.layout,
        cache.redis.breaker,  # an outage the feed notices spares requests the wait, and back
    )
    return IndexReplica(
        cache.index,
        RedisReplicaSource(cache.redis),
        feed,
        cache.embedder.model_id,
        replication,
        listener=cache.hot,
    )


class StartupRefused(Exception):
    """A file the settings name cannot be used; the message says which and why."""


def build_authenticator(settings: Settings) -> Authenticator:
    """API keys from the keys file; without one, every caller is one tenant (loopback only,
    unless --insecure-listen: `Settings` refuses the rest)."""
    if settings.api_keys_file is None:
        log.warning(
            "no --api-keys-file: calls are not authenticated and every caller shares one tenant"
        )
        return OpenAccess()
    authenticator = _read_keys(
        "--api-keys-file", settings.api_keys_file, settings.shared_tenant_names
    )
    log.info(
        "API keys of %d tenants read from %s",
        len(authenticator.tenants),
        settings.api_keys_file,
    )
    return authenticator


def build_operators(settings: Settings) -> KeysFileAuthenticator | None:
    """The operators' keys of CacheAdminService (every tenant's entries); None without a file."""
    if settings.admin_keys_file is None:
        return None
    return _read_keys("--admin-keys-file", settings.admin_keys_file)


def _read_keys(
    flag: str, path: Path, shared_tenants: frozenset[str] = frozenset()
) -> KeysFileAuthenticator:
    """A keys file, or StartupRefused saying which file and why it cannot be used."""
    try:
        return KeysFileAuthenticator(path, shared_tenants)
    except OSError as error:
        raise StartupRefused(f"{flag} {error.filename}: {error.strerror}") from None
    except KeysFileError as error:
        raise StartupRefused(f"{flag} {error}") from None


def cache_figures(cache: Cache) -> CacheFigures:
    """What the metrics read from the cache at each scrape."""
    breaker = cache.redis.breaker
    return CacheFigures(
        index_entries=lambda: cache.semantic.indexed,
        redis_breaker_open=lambda: not breaker.closed,
        redis_breaker_trips=lambda: breaker.trips,
        redis_skipped_calls=lambda: breaker.skipped,
        redis_failures=lambda: cache.store_outages.failures,
    )


async def start_metrics(settings: Settings, metrics: Metrics) -> MetricsServer:
    """The metrics endpoint, on --metrics-host (or --host) and --metrics-port."""
    host = settings.metrics_host or settings.host
    server = MetricsServer(metrics.registry)
    try:
        await server.start(host, settings.metrics_port)
    except OSError as error:
        raise StartupRefused(
            f"--metrics-port {settings.metrics_port}: cannot listen on {host}: "
            f"{error.strerror or error}"
        ) from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, server.port)
    return server


def check_port(settings: Settings) -> None:
    """StartupRefused when something listens on --port already; --share-port (a worker of
    --workers, whose launcher checked the port) listens beside its siblings instead."""
    if settings.share_port:
        return
    for flag, port in (("--port", settings.port), ("--http-port", settings.http_port)):
        try:
            refuse_a_taken_port(settings.host, port)
        except PortInUse as error:
            raise StartupRefused(f"{flag} {port}: {error}") from None


def build_passthrough(settings: Settings) -> OllamaPassThrough:
    return OllamaPassThrough(settings.ollama_host, connect_timeout=settings.ollama_connect_timeout)


def build_http_tls(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP front's TLS: the gRPC port's certificate, key and client CAs."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file is not None:
            context.load_verify_locations(settings.tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except OSError as error:
        raise StartupRefused(f"TLS file {error.filename}: {error.strerror}") from None
    return context


async def start_http(
    settings: Settings, calls: Calls, authenticator: Authenticator, upstream: OllamaPassThrough
) -> HttpFront:
    """The Ollama and OpenAI HTTP front on --host and --http-port (aiohttp, imported only
    when asked for)."""
    try:
        from semcache_server.edge.http.server import HttpFront
    except ImportError as error:  # aiohttp: the testing extra's until it is a dependency
        raise StartupRefused(f"--http-port needs aiohttp: pip install aiohttp ({error})") from None

    front = HttpFront(calls, authenticator, upstream, max_calls=settings.max_calls)
    try:
        await front.start(
            settings.host,
            settings.http_port,
            tls=build_http_tls(settings),
            share_port=settings.share_port,
            grace=settings.grace_seconds,
        )
    except OSError as error:
        raise StartupRefused(
            f"--http-port {settings.http_port}: cannot listen on {settings.host}: "
            f"{error.strerror or error}"
        ) from None
    log.info(
        "Ollama and OpenAI HTTP APIs on %s://%s:%d",
        "http" if settings.tls_cert_file is None else "https",
        settings.host,
        front.port,
    )
    return front


def transport(settings: Settings) -> str:
    """What the port speaks, for the start-up line: plaintext, TLS or mutual TLS."""
    if settings.tls_cert_file is None:
        return "plaintext"
    return "TLS" if settings.tls_client_ca_file is None else "mutual TLS"


def build_tls(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    files = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    try:
        return files.credentials()
    except OSError as error:
        raise StartupRefused(f"TLS file {error.filename}: {error.strerror}") from None


async def start(
    settings: Settings,
    embedder: Embedder | None = None,
    llm: LLMBackend | None = None,
    verifier: Verifier | None = None,
) -> Service:
    """Start a service; tests hand in a shared embedder and verifier to load the models once."""
    check_port(settings)  # before the models load; the bind below catches a port taken since
    authenticator = build_authenticator(settings)  # before anything starts: a bad file stops it
    operators = build_operators(settings)
    tls = build_tls(settings)
    async with contextlib.AsyncExitStack() as undo:  # unwinds only if start-up fails
        embedded = None
        redis_url = settings.redis_url
        if redis_url is None:
            embedded = EmbeddedRedis(settings.state_dir)
            try:
                redis_url = await asyncio.to_thread(embedded.start)
            except StateDirInUse as error:
                raise StartupRefused(str(error)) from None
            undo.push_async_callback(asyncio.to_thread, embedded.stop)
        cache = await build_cache(
            settings, redis_url, embedder=embedder, llm=llm, verifier=verifier
        )
        undo.push_async_callback(cache.aclose)
        if settings.redis_url is not None:  # the embedded one keeps an append-only file
            await cache.redis.check_persistence()
            await cache.redis.check_memory_policy()
        replica = build_replica(settings, redis_url, cache)
        undo.push_async_callback(replica.stop)
        # With Redis down this returns at once: serve from the LLM, and the follower loads the
        # index when Redis returns. A long load (no snapshot, a large cache) goes on meanwhile.
        await replica.start(patience=INDEX_LOAD_PATIENCE)
        metrics = Metrics(cache_figures(cache)) if settings.metrics_port else None
        calls = Calls(cache.chain, metrics, RequestLog(settings.log_prompts))
        admin = AdminServicer(
            CacheAdmin(RedisCatalog(cache.redis), lambda: cache.semantic.indexed),
            # Named for the request log, like the semcache service's calls.
            AdminAccess(
                calls.naming(authenticator),
                operators,
                settings.shared_tenant_names,
                open_access=isinstance(authenticator, OpenAccess),
            ),
        )
        # An operator's key on Ask (or the HTTP front) is told it is one (not "unknown").
        askers = (
            TenantKeysOnly(authenticator, operators)
            if operators is not None and not isinstance(authenticator, OpenAccess)
            else authenticator
        )
        try:
            server = GrpcServer(
                calls,
                settings.host,
                settings.port,
                settings.max_calls,
                askers,
                tls,
                admin,
                share_port=settings.share_port,
            )
        except OSError as error:
            raise StartupRefused(f"--port {settings.port}: {error}") from None
        metrics_server = None if metrics is None else await start_metrics(settings, metrics)
        if metrics_server is not None:
            undo.push_async_callback(metrics_server.stop)
        http, upstream = None, None
        if settings.http_port:
            upstream = build_passthrough(settings)
            undo.push_async_callback(upstream.aclose)
            http = await start_http(settings, calls, askers, upstream)
            undo.push_async_callback(http.stop)
        service = Service(server, cache, replica, embedded, metrics_server, http, upstream)
        await service.supervise()
        undo.push_async_callback(service.stop_supervising)
        await server.start()
        undo.pop_all()
    gc.collect()  # start-up garbage (model building, index loading) would linger until a full GC
    log.info(
        "semcache serving on %s:%d over %s (embedder %s, %s from cosine %.4f, %d entries indexed)",
        settings.host,
        server.port,
        transport(settings),
        cache.embedder.model_id,
        type(cache.policy).__name__,
        cache.policy.floor,
        cache.semantic.indexed,
    )
    return service
