"""The composition root: builds every part once, wires them, and runs the gRPC server."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from semcache.v1 import semcache_pb2, semcache_pb2_grpc

from semcache_server.chain import CacheChain, ChainSettings
from semcache_server.domain import StoreUnavailable
from semcache_server.embedded_redis import EmbeddedRedis
from semcache_server.embedders import Embedder
from semcache_server.index import ExactIndex
from semcache_server.layers import ExactLayer, OutageLog, SemanticLayer
from semcache_server.llm import LLMBackend, OllamaBackend
from semcache_server.policy import default_policy
from semcache_server.service import SemcacheServicer
from semcache_server.settings import Settings
from semcache_server.store import EntryStore, RedisEntryStore
from semcache_server.validation import Limits

log = logging.getLogger(__name__)

SERVICE_NAME = semcache_pb2.DESCRIPTOR.services_by_name["SemcacheService"].full_name
INDEX_RETRY_SECONDS = 5.0


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedder == "local":
        from semcache_server.embedders.local import LocalEmbedder

        return LocalEmbedder.load()
    if settings.embedder == "ollama":
        from semcache_server.embedders.ollama import OllamaEmbedder

        return OllamaEmbedder(settings.ollama_host, settings.ollama_embed_model)
    raise ValueError(f"unknown embedder {settings.embedder!r}: use 'local' or 'ollama'")


@dataclass
class Service:
    """A running semcache: its server, its parts, and what must be closed when it stops."""

    server: grpc.aio.Server
    port: int
    semantic: SemanticLayer
    store: EntryStore
    llm: LLMBackend
    health: health.aio.HealthServicer
    embedded_redis: EmbeddedRedis | None = None
    owned_embedder: Embedder | None = None
    background: set[asyncio.Task[bool]] = field(default_factory=set)

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in self.background:
            task.cancel()
        await self.llm.aclose()
        if self.owned_embedder is not None:
            await self.owned_embedder.aclose()
        await self.store.aclose()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


async def _load_index(semantic: SemanticLayer, retry_seconds: float) -> bool:
    """Rebuild the index from Redis; with retry_seconds, keep trying until Redis answers."""
    while True:
        try:
            loaded = await semantic.rebuild()
        except StoreUnavailable as error:
            if not retry_seconds:
                log.warning("cannot load the index yet (%s); retrying in the background", error)
                return False
            await asyncio.sleep(retry_seconds)
            continue
        log.info("index loaded: %d entries", loaded)
        return True


async def start(
    settings: Settings, embedder: Embedder | None = None, llm: LLMBackend | None = None
) -> Service:
    """Start a service; tests hand in a shared embedder to load the model once."""
    embedded = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(settings.state_dir)
        redis_url = embedded.start()
    store = RedisEntryStore.from_url(redis_url, timeout=settings.redis_timeout)
    owned_embedder = build_embedder(settings) if embedder is None else None
    embedder = embedder or owned_embedder
    assert embedder is not None
    llm = (
        llm
        if llm is not None
        else OllamaBackend(settings.ollama_host, connect_timeout=settings.ollama_connect_timeout)
    )
    policy = default_policy(embedder.model_id, settings.similarity_threshold)
    store_outages = OutageLog("Redis")
    semantic = SemanticLayer(embedder, ExactIndex(), store, policy, store_outages)
    chain = CacheChain(
        ExactLayer(store, store_outages),
        semantic,
        llm,
        store,
        store_outages,
        ChainSettings(
            ttl_seconds=settings.ttl_seconds or None,
            replay_chunk_chars=settings.replay_chunk_chars,
            max_semantic_temperature=settings.max_semantic_temperature,
            speculative_llm=settings.speculative_llm,
            limits=Limits(max_prompt_chars=settings.max_prompt_chars),
        ),
    )

    server = grpc.aio.server()
    semcache_pb2_grpc.add_SemcacheServiceServicer_to_server(  # type: ignore[no-untyped-call]
        SemcacheServicer(chain), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")

    service = Service(server, port, semantic, store, llm, health_servicer, embedded, owned_embedder)
    if not await _load_index(semantic, retry_seconds=0):
        # Redis is down: serve at once from the LLM, and warm the semantic layer when it returns.
        retry = asyncio.create_task(_load_index(semantic, INDEX_RETRY_SECONDS))
        service.background.add(retry)
        retry.add_done_callback(service.background.discard)
    await server.start()
    gc.collect()  # start-up garbage (model building, index loading) would linger until a full GC
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "semcache serving on %s:%d (embedder %s, %s from cosine %.4f, %d entries indexed)",
        settings.host,
        port,
        embedder.model_id,
        type(policy).__name__,
        policy.floor,
        len(semantic.index),
    )
    return service
