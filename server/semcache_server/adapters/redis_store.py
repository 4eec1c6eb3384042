"""The Redis entry store: cached answers with their embeddings and metadata, in Redis.

One hash a entry, keyed by its deterministic id. The exact layer is one round trip (a script that
counts the hit and returns the entry); the index is rebuilt from the stored embeddings at start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from semcache_server.core.domain import CachedEntry, Role, StoreUnavailable, Turn
from semcache_server.core.ports import StoredVector

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "semcache:v1:"


_FIELDS = (
    "prompt",
    "text",
    "model",
    "system",
    "options",
    "history",
    "namespace",
    "partition",
    "embedding_model",
    "created_at",
    "hits",
)

# Counting the hit and reading the entry in one atomic round trip; HINCRBY alone would
# resurrect an expired entry as a hash holding nothing but a count.
_FETCH_HIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HINCRBY', KEYS[1], 'hits', 1)
return redis.call('HMGET', KEYS[1], unpack(ARGV))
"""

_RECORD_HIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'hits', 1)
"""

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable_on_redis_error(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis failures leave the store as StoreUnavailable, the one error the chain fails open on."""

    @wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis: {error or type(error).__name__}") from None

    return wrapper


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8") if raw is not None else ""


class RedisEntryStore:
    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._fetch_hit = client.register_script(_FETCH_HIT)
        self._record_hit = client.register_script(_RECORD_HIT)

    @classmethod
    def from_url(cls, url: str, timeout: float, prefix: str = DEFAULT_PREFIX) -> RedisEntryStore:
        """A client that fails fast: no retries with backoff, short timeouts, so a Redis outage
        costs a request milliseconds and not seconds."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries=0),
            health_check_interval=30,
        )
        return cls(client, prefix)

    def _key(self, entry_id: str) -> str:
        return f"{self._prefix}entry:{entry_id}"

    @_unavailable_on_redis_error
    async def fetch_hit(self, entry_id: str) -> CachedEntry | None:
        values = await self._fetch_hit(keys=[self._key(entry_id)], args=list(_FIELDS))
        return self._entry(entry_id, values) if values else None

    @_unavailable_on_redis_error
    async def fetch(self, entry_id: str) -> CachedEntry | None:
        values = cast(
            list[bytes | None], await self._redis.hmget(self._key(entry_id), list(_FIELDS))
        )
        return self._entry(entry_id, values) if values[0] is not None else None

    @_unavailable_on_redis_error
    async def record_hit(self, entry_id: str) -> int:
        return int(await self._record_hit(keys=[self._key(entry_id)]))

    @staticmethod
    def _entry(entry_id: str, values: list[bytes | None]) -> CachedEntry:
        fields = dict(zip(_FIELDS, values, strict=True))
        history = json.loads(_text(fields["history"]) or "[]")
        return CachedEntry(
            entry_id=entry_id,
            partition=_text(fields["partition"]),
            prompt=_text(fields["prompt"]),
            text=_text(fields["text"]),
            model=_text(fields["model"]),
            system=_text(fields["system"]),
            options=json.loads(_text(fields["options"]) or "{}"),
            history=tuple(Turn(Role(role), content) for role, content in history),
            namespace=_text(fields["namespace"]),
            embedding_model=_text(fields["embedding_model"]),
            created_at=float(_text(fields["created_at"]) or 0.0),
            hits=int(_text(fields["hits"]) or 0),
        )

    @_unavailable_on_redis_error
    async def put(
        self,
        entry: CachedEntry,
        embedding: npt.NDArray[np.float32] | None,
        ttl_seconds: float | None,
    ) -> None:
        key = self._key(entry.entry_id)
        mapping: dict[str, str | bytes] = {
            "prompt": entry.prompt,
            "text": entry.text,
            "model": entry.model,
            "system": entry.system,
            "options": json.dumps(entry.options, sort_keys=True),
            "history": json.dumps([[turn.role.value, turn.content] for turn in entry.history]),
            "namespace": entry.namespace,
            "partition": entry.partition,
            "embedding_model": entry.embedding_model,
            "created_at": repr(entry.created_at),
            "embedding": (
                np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
                if embedding is not None
                else b""
            ),
        }
        # One transaction: a reader sees the whole entry or none of it. A rewrite of an existing
        # entry (a refresh after skip_lookup) keeps its hit count.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
            pipe.hsetnx(key, "hits", 0)
            if ttl_seconds:
                pipe.pexpire(key, int(ttl_seconds * 1000))
            else:
                pipe.persist(key)
            await pipe.execute()

    async def vectors(self, embedding_model: str) -> AsyncIterator[StoredVector]:
        prefix_length = len(self._key(""))
        try:
            async for keys in self._scan_batches():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key, ["partition", "embedding_model", "embedding"])
                    rows = await pipe.execute()
                for key, (partition, model, raw) in zip(keys, rows, strict=True):
                    if not raw or _text(model) != embedding_model:
                        continue
                    yield StoredVector(
                        entry_id=key.decode()[prefix_length:],
                        partition=_text(partition),
                        vector=np.frombuffer(raw, dtype=np.float32),
                    )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis: {error or type(error).__name__}") from None

    async def _scan_batches(self, batch: int = 1000) -> AsyncIterator[list[bytes]]:
        cursor: int = 0
        while True:
            cursor, keys = await self._redis.scan(cursor, match=self._key("*"), count=batch)
            if keys:
                yield cast(list[bytes], keys)
            if cursor == 0:
                return

    @_unavailable_on_redis_error
    async def delete(self, entry_id: str) -> None:
        await self._redis.delete(self._key(entry_id))

    @_unavailable_on_redis_error
    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()
