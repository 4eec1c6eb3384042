"""The Redis entry store: cached answers with their embeddings and metadata, in Redis.

One hash a entry, keyed by its deterministic id. The exact layer is one round trip (a script that
counts the hit and returns the entry). Every write, deletion and expiry is appended to the change
feed (a Redis Stream, `adapters/redis_feed.py`) by the same Lua script that changes the entry, so
the feed never misses a change and never reports one that did not happen. Entries with a TTL are
also listed in a sorted set by deadline, from which `sweep_expired` reports expiries to the feed.
Each namespace lists its entries in a sorted set of its own, by deadline too, kept by the same
scripts: a tenant's admin calls count and page its own entries without reading anyone else's.
While Redis is unreachable, a circuit breaker (`adapters/redis_breaker.py`) makes every call fail at
once with StoreUnavailable instead of waiting for the Redis timeout.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError, ResponseError

from semcache_server.adapters.redis_breaker import RedisBreaker
from semcache_server.core.admin import Counts, Listed
from semcache_server.core.domain import (
    CachedEntry,
    InvalidRequest,
    Role,
    StoreUnavailable,
    Turn,
)

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
    "owner",
    "completion_tokens",
)

# Counting the hit and reading the entry in one atomic round trip; HINCRBY alone would
# resurrect an expired entry as a hash holding nothing but a count.
# The remaining time to live comes last, in ms (-1: none), for copies kept in memory.
# pcall: a full Redis (maxmemory, noeviction) refuses the count, not the hit.
_FETCH_HIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.pcall('HINCRBY', KEYS[1], 'hits', 1)
local values = redis.call('HMGET', KEYS[1], unpack(ARGV))
values[#values + 1] = redis.call('PTTL', KEYS[1])
return values
"""

# Lua scripts run atomically: the entry, the expiry schedule, the feed's sequence number and its
# stream change together or not at all. The sequence number lets a reader notice a gap (a trimmed
# stream, a flushed or restored Redis). TIME makes deadlines the server's, not each replica's.
# KEYS[5], the namespace's listing, drops the entries Redis has expired since (their deadline is
# past) as it takes this one: a namespace's listing holds no more than it once stored.
_PUT = """
redis.replicate_commands()
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('HSETNX', KEYS[1], 'hits', 0)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local deadline = '+inf'
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[4], now_ms + ttl, ARGV[1])
  deadline = now_ms + ttl
else
  redis.call('PERSIST', KEYS[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. now_ms)
redis.call('ZADD', KEYS[5], deadline, ARGV[1])
local seq = redis.call('INCR', KEYS[3])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'op', 'put', 'id', ARGV[1],
  'partition', ARGV[4], 'model', ARGV[5], 'seq', seq, 'at', now_ms)
"""

# The namespace comes from the entry itself (ARGV[3]: the listings' key prefix). On a full Redis
# (noeviction) the script still finishes: Redis refuses a command that may grow memory (INCR,
# XADD) only before a script's first write, and DEL comes first.
_DELETE = """
redis.replicate_commands()
redis.call('ZREM', KEYS[4], ARGV[1])
local namespace = redis.call('HGET', KEYS[1], 'namespace')
if namespace then redis.call('ZREM', ARGV[3] .. namespace, ARGV[1]) end
if redis.call('DEL', KEYS[1]) == 0 then return false end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seq = redis.call('INCR', KEYS[3])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'op', 'delete', 'id', ARGV[1],
  'seq', seq, 'at', now_ms)
"""

# Redis expires the hash itself (PEXPIRE); this reports it. Any replica may run it, as often as it
# likes: an expiry is reported once, because it leaves the schedule in the same script.
_SWEEP_EXPIRED = """
redis.replicate_commands()
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('DEL', ARGV[2] .. id)
  redis.call('ZREM', KEYS[3], id)
  local seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'op', 'expire', 'id', id,
    'seq', seq, 'at', now_ms)
end
return #due
"""

# Taken when free, and taken again (renewed) by the token that holds it.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RECORD_HIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'hits', tonumber(ARGV[1] or 1))
"""

# A namespace's live entries: its listing, less what Redis has expired (deadline past) and the
# sweep, which cannot tell an expired entry's namespace, left behind.
_COUNT_LISTED = """
redis.replicate_commands()
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms)
return redis.call('ZCARD', KEYS[1])
"""

# Lists entries stored before namespaces had listings (KEYS: entry hashes; ARGV[1]: the listings'
# key prefix, ARGV[2]: the entries'). Atomic for each entry, as _DELETE is, so an entry deleted
# meanwhile is never listed again; one listed already is left alone (no write: a full Redis
# refuses none).
_LIST_EXISTING = """
redis.replicate_commands()
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for _, key in ipairs(KEYS) do
  local namespace = redis.call('HGET', key, 'namespace')
  local id = string.sub(key, #ARGV[2] + 1)
  if namespace and not redis.call('ZSCORE', ARGV[1] .. namespace, id) then
    local ttl = redis.call('PTTL', key)
    local deadline = '+inf'
    if ttl >= 0 then deadline = now_ms + ttl end
    redis.call('ZADD', ARGV[1] .. namespace, deadline, id)
  end
end
return #KEYS
"""

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable_on_redis_error(
    method: Callable[Concatenate[RedisEntryStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisEntryStore, P], Coroutine[Any, Any, T]]:
    """Redis failures leave the store as StoreUnavailable, the one error the chain fails open on;
    while the breaker is open, the call does not wait for Redis at all."""

    @wraps(method)
    async def wrapper(store: RedisEntryStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        store.breaker.check()
        try:
            return await method(store, *args, **kwargs)
        except (RedisError, OSError) as error:
            store.breaker.failed(error)
            raise StoreUnavailable(f"Redis: {error or type(error).__name__}") from None

    return wrapper


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8") if raw is not None else ""


def persistence_advice(appendonly: str, save: str) -> tuple[int, str] | None:
    """(log level, message) for a Redis's `appendonly` and `save` settings; None when the
    append-only file is on (a crash loses at most a second with appendfsync everysec)."""
    if appendonly.strip().lower() == "yes":
        return None
    if not save.strip():
        return (
            logging.WARNING,
            'Redis persists nothing (appendonly no, save ""): a restart of Redis loses the '
            "whole cache; give it appendonly yes and appendfsync everysec",
        )
    return (
        logging.INFO,
        f"Redis persists by RDB snapshots only (save {save}): a crash loses the answers stored "
        "since the last snapshot; appendonly yes with appendfsync everysec loses at most a second",
    )


def memory_policy_advice(policy: str) -> str | None:
    """A warning for an eviction policy that may drop what the cache must keep; None for
    noeviction, or when the policy is unknown (README: Redis memory)."""
    if policy.strip().lower() in ("", "noeviction"):
        return None
    return (
        f"Redis evicts keys when full (maxmemory-policy {policy}): it may drop the change feed, "
        "its counters or the claims, and no replica hears of an evicted entry; give it "
        "maxmemory-policy noeviction"
    )


MAX_CURSOR = 2**64 - 1
"""Redis's cursors are unsigned 64-bit numbers."""
_CURSOR = re.compile(r"[1-9][0-9]{0,19}")


def _cursor(token: str) -> int:
    """A page token as the catalogue gives them out: "" to start, else a cursor in plain ASCII
    decimal; nothing else reaches Redis (a huge one would fail there as an error of Redis's)."""
    if not token:
        return 0
    if not _CURSOR.fullmatch(token) or int(token) > MAX_CURSOR:
        raise InvalidRequest(
            "page_token", "is not one this server gave out: pass next_page_token as it came"
        )
    return int(token)


DEFAULT_FEED_MAX_LEN = 1_000_000
"""About as many changes as a million-entry cache makes in a busy day; ~130 MB of Redis memory
(134 bytes a change, measured with MEMORY USAGE)."""


@dataclass(frozen=True)
class StoredVector:
    """An entry's embedding as stored, for rebuilding an index."""

    entry_id: str
    partition: str
    vector: npt.NDArray[np.float32]


@dataclass(frozen=True)
class KeyLayout:
    """Where everything lives in Redis, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def entry(self, entry_id: str) -> str:
        return f"{self.prefix}entry:{entry_id}"

    @property
    def feed(self) -> str:
        """The change feed, a stream."""
        return f"{self.prefix}feed"

    @property
    def feed_sequence(self) -> str:
        return f"{self.prefix}feed:seq"

    @property
    def feed_epoch(self) -> str:
        """Names this Redis's feed; a flushed Redis gets a new one, and snapshots know it."""
        return f"{self.prefix}feed:epoch"

    def claim(self, entry_id: str) -> str:
        """Held while one replica generates this entry's answer (cross-replica single-flight)."""
        return f"{self.prefix}claim:{entry_id}"

    def counts(self, namespace: str) -> str:
        """What replicas counted for a namespace (hits by layer, LLM calls, tokens saved)."""
        return f"{self.prefix}counts:{namespace}"

    @property
    def expiries(self) -> str:
        """Entries with a TTL, scored by their deadline in ms."""
        return f"{self.prefix}expiries"

    def listing(self, namespace: str) -> str:
        """A namespace's entry ids, scored by their deadline in ms (+inf: none)."""
        return f"{self.prefix}listing:{namespace}"

    @property
    def listings_complete(self) -> str:
        """Set once every entry is in its namespace's listing; gone from an older semcache's
        Redis, and from a flushed one, so the listings are then built again."""
        return f"{self.prefix}listings:complete"


class RedisEntryStore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        feed_max_len: int = DEFAULT_FEED_MAX_LEN,
        *,
        probe: aioredis.Redis | None = None,
    ) -> None:
        """probe: a client of its own (closed with the store) for the breaker's PINGs, so a probe
        never waits behind requests; None: the store's client."""
        self._redis = client
        self._probe = probe
        self.breaker = RedisBreaker(probe if probe is not None else client)
        """Open while Redis is unreachable; the change feed of the same Redis shares it."""
        self.breaker.reset_on_recovery(client)
        self.layout = KeyLayout(prefix)
        self._feed_max_len = feed_max_len
        self._fetch_hit = client.register_script(_FETCH_HIT)
        self._record_hit = client.register_script(_RECORD_HIT)
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        self._count_listed = client.register_script(_COUNT_LISTED)
        self._list_existing = client.register_script(_LIST_EXISTING)
        self._sweep_expired = client.register_script(_SWEEP_EXPIRED)
        self._claim = client.register_script(_CLAIM)
        self._release_claim = client.register_script(_RELEASE_CLAIM)

    @classmethod
    def from_url(
        cls,
        url: str,
        timeout: float,
        prefix: str = DEFAULT_PREFIX,
        feed_max_len: int = DEFAULT_FEED_MAX_LEN,
    ) -> RedisEntryStore:
        """A client that fails fast: no retries with backoff, short timeouts, so a Redis outage
        costs a request milliseconds and not seconds."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries=0),
            health_check_interval=30,
        )
        probe = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries=0),
        )
        return cls(client, prefix, feed_max_len, probe=probe)

    def _key(self, entry_id: str) -> str:
        return self.layout.entry(entry_id)

    async def fetch_hit(self, entry_id: str) -> CachedEntry | None:
        entry, _ = await self.fetch_hit_with_ttl(entry_id)
        return entry

    @_unavailable_on_redis_error
    async def fetch_hit_with_ttl(self, entry_id: str) -> tuple[CachedEntry | None, int | None]:
        """The exact layer's one round trip: the entry, its hit counted, and the ms it has left
        to live (None: no TTL). EVALSHA is sent directly: redis-py's script object costs more
        than the round trip itself on this path; it is loaded again if Redis lost it (a restart,
        SCRIPT FLUSH)."""
        key = self._key(entry_id)
        try:
            values = await self._redis.evalsha(self._fetch_hit.sha, 1, key, *_FIELDS)
        except NoScriptError:
            values = await self._fetch_hit(keys=[key], args=list(_FIELDS))
        except ResponseError as error:
            if not isinstance(error, OutOfMemoryError) and "OOM" not in str(error):
                raise
            return await self.fetch_with_ttl(entry_id)  # a full Redis that refused the script
        if not values:
            return None, None
        ttl_ms = int(values[-1])
        return self._entry(entry_id, values[:-1]), ttl_ms if ttl_ms >= 0 else None

    @_unavailable_on_redis_error
    async def fetch(self, entry_id: str) -> CachedEntry | None:
        values = cast(
            list[bytes | None], await self._redis.hmget(self._key(entry_id), list(_FIELDS))
        )
        return self._entry(entry_id, values) if values[0] is not None else None

    @_unavailable_on_redis_error
    async def fetch_with_ttl(self, entry_id: str) -> tuple[CachedEntry | None, int | None]:
        """The entry as it is and the ms it has left to live (None: no TTL), in one round trip."""
        key = self._key(entry_id)
        async with self._redis.pipeline(transaction=True) as pipeline:
            pipeline.hmget(key, list(_FIELDS))
            pipeline.pttl(key)
            values, ttl_ms = await pipeline.execute()
        if values[0] is None:
            return None, None
        return self._entry(entry_id, values), int(ttl_ms) if int(ttl_ms) >= 0 else None

    @_unavailable_on_redis_error
    async def record_hit(self, entry_id: str) -> int:
        return int(await self._record_hit(keys=[self._key(entry_id)]))

    @_unavailable_on_redis_error
    async def record_hits(self, counts: Mapping[str, int]) -> None:
        """Add hits counted elsewhere (served from memory), in one round trip; an entry gone
        meanwhile stays gone."""
        async with self._redis.pipeline(transaction=False) as pipeline:
            for entry_id, count in counts.items():
                await self._record_hit(keys=[self._key(entry_id)], args=[count], client=pipeline)
            await pipeline.execute()

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
            owner=_text(fields["owner"]),
            completion_tokens=int(_text(fields["completion_tokens"]) or 0),
        )

    @_unavailable_on_redis_error
    async def put(
        self,
        entry: CachedEntry,
        embedding: npt.NDArray[np.float32] | None,
        ttl_seconds: float | None,
    ) -> None:
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
            "owner": entry.owner,
            "completion_tokens": str(entry.completion_tokens),
            "embedding": (
                np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
                if embedding is not None
                else b""
            ),
        }
        # One script: a reader sees the whole entry or none of it, and the feed reports it. A
        # rewrite of an existing entry (a refresh after skip_lookup) keeps its hit count.
        fields: list[str | bytes] = [item for pair in mapping.items() for item in pair]
        ttl_ms = max(1, int(ttl_seconds * 1000)) if ttl_seconds else 0
        await self._put(
            keys=[*self._feed_keys(entry.entry_id), self.layout.listing(entry.namespace)],
            args=[
                entry.entry_id,
                ttl_ms,
                self._feed_max_len,
                entry.partition,
                entry.embedding_model,
                *fields,
            ],
        )

    def _feed_keys(self, entry_id: str) -> list[str]:
        layout = self.layout
        return [layout.entry(entry_id), layout.feed, layout.feed_sequence, layout.expiries]

    @_unavailable_on_redis_error
    async def sweep_expired(self, limit: int = 500) -> int:
        """Report entries whose TTL has passed to the feed (and make sure they are gone)."""
        layout = self.layout
        return int(
            await self._sweep_expired(
                keys=[layout.feed, layout.feed_sequence, layout.expiries],
                args=[self._feed_max_len, layout.entry(""), limit],
            )
        )

    async def vectors(self, embedding_model: str) -> AsyncIterator[StoredVector]:
        prefix_length = len(self._key(""))
        self.breaker.check()
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
            self.breaker.failed(error)
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
    async def delete(self, entry_id: str) -> bool:
        """False when there was no such entry; a deletion reaches every replica by the feed."""
        reported = await self._delete(
            keys=self._feed_keys(entry_id),
            args=[entry_id, self._feed_max_len, self.layout.listing("")],
        )
        return reported is not None

    # --- the catalogue: the store seen whole, for admin calls (core/admin.py) -------------

    async def scan(self, namespace: str | None) -> AsyncIterator[Listed]:
        """Every entry of namespace (None: all), without its text: batches of 1,000 ids from the
        namespace's listing (or a SCAN of every entry), each read in one pipelined round trip."""
        self.breaker.check()
        try:
            if namespace is None:
                async for keys in self._scan_batches():
                    for listed in await self._listed(self._ids(keys)):
                        yield listed
                return
            await self._complete_listings()
            cursor = 0
            while True:
                cursor, ids = await self._listing_step(namespace, cursor, 1000)
                for listed in await self._listed(ids):
                    yield listed
                if cursor == 0:
                    return
        except (RedisError, OSError) as error:
            self.breaker.failed(error)
            raise StoreUnavailable(f"Redis: {error or type(error).__name__}") from None

    @_unavailable_on_redis_error
    async def page(
        self, namespace: str | None, cursor: str, count: int
    ) -> tuple[list[Listed], str]:
        """One step of about count entries through namespace's listing (ZSCAN), or through every
        entry (SCAN) for None. A cursor of Redis's, so a page may hold fewer (an entry gone
        since), and the listing ends when the next cursor is ""."""
        position = _cursor(cursor)
        if namespace is None:
            position, keys = await self._redis.scan(position, match=self._key("*"), count=count)
            ids = self._ids(cast(list[bytes], keys))
        else:
            await self._complete_listings()
            position, ids = await self._listing_step(namespace, position, count)
        return await self._listed(ids), str(position) if position else ""

    @_unavailable_on_redis_error
    async def count(self, namespace: str | None) -> int:
        """Entries stored now: namespace's listing, or every entry key (SCAN) for None."""
        if namespace is None:
            return sum([len(keys) async for keys in self._scan_batches()])
        await self._complete_listings()
        return int(await self._count_listed(keys=[self.layout.listing(namespace)]))

    async def _listing_step(self, namespace: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ZSCAN step: a cursor as SCAN's (an entry listed throughout is reached once at
        least), and about count ids."""
        cursor, pairs = await self._redis.zscan(self.layout.listing(namespace), cursor, count=count)
        return int(cursor), [_text(cast(bytes, member)) for member, _ in pairs]

    async def _complete_listings(self) -> None:
        """List every entry in its namespace's listing, once per Redis: the entries an older
        semcache stored before listings existed (they are read by SCAN, all of them, so the
        first such admin call takes seconds at a million entries); a flushed Redis loses the
        mark too and is listed again."""
        if await self._redis.exists(self.layout.listings_complete):
            return
        args = [self.layout.listing(""), self._key("")]
        async for keys in self._scan_batches():
            await self._list_existing(keys=keys, args=args)
        try:
            await self._redis.set(self.layout.listings_complete, "1")
        except ResponseError as error:  # a full Redis: listed all the same, marked next time
            log.debug("cannot mark the listings complete: %s", error)
            return
        log.info("every entry is listed in its namespace's listing now")

    def _ids(self, keys: list[bytes]) -> list[str]:
        prefix = len(self._key(""))
        return [key.decode()[prefix:] for key in keys]

    async def _listed(self, ids: list[str], *, with_text: bool = False) -> list[Listed]:
        """The entries and their deadlines, in one round trip, skipping those gone meanwhile.
        A plain pipeline, not MULTI: a full Redis refuses every command of a transaction."""
        fields = [name for name in _FIELDS if with_text or name != "text"]
        async with self._redis.pipeline(transaction=False) as pipeline:
            for entry_id in ids:
                pipeline.hmget(self._key(entry_id), fields)
                pipeline.pttl(self._key(entry_id))
            replies = await pipeline.execute()
        now = time.time()
        listed = []
        for index, entry_id in enumerate(ids):
            values, ttl_ms = replies[2 * index], int(replies[2 * index + 1])
            if values[0] is None or ttl_ms == -2:
                continue  # gone, or expired between the two reads
            row = dict(zip(fields, values, strict=True))
            entry = self._entry(entry_id, [row.get(name) for name in _FIELDS])
            listed.append(Listed(entry, now + ttl_ms / 1000 if ttl_ms >= 0 else None))
        return listed

    @_unavailable_on_redis_error
    async def get(self, entry_id: str) -> Listed | None:
        found = await self._listed([entry_id], with_text=True)
        return found[0] if found else None

    @_unavailable_on_redis_error
    async def counts(self, namespace: str | None) -> Counts:
        if namespace is not None:
            keys = [self.layout.counts(namespace)]
        else:
            keys = [key async for key in self._redis.scan_iter(self.layout.counts("*"))]
        totals: dict[str, int] = {}
        for key in keys:
            for field, value in (await self._redis.hgetall(key)).items():
                name = field.decode() if isinstance(field, bytes) else str(field)
                totals[name] = totals.get(name, 0) + int(value)
        return Counts(**{name: totals.get(name, 0) for name in Counts.__dataclass_fields__})

    @_unavailable_on_redis_error
    async def add_counts(self, counts: Mapping[str, Counter[str]]) -> None:
        """Add what a replica counted (namespace -> field -> amount), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipeline:
            for namespace, fields in counts.items():
                for field, amount in fields.items():
                    pipeline.hincrby(self.layout.counts(namespace), field, amount)
            await pipeline.execute()

    @_unavailable_on_redis_error
    async def memory_bytes(self) -> int:
        info = await self._redis.info("memory")
        return int(info.get("used_memory", 0))

    @_unavailable_on_redis_error
    async def claim(self, entry_id: str, token: str, seconds: float) -> bool:
        claimed = await self._claim(
            keys=[self.layout.claim(entry_id)], args=[token, max(1, int(seconds * 1000))]
        )
        return bool(claimed)

    @_unavailable_on_redis_error
    async def release_claim(self, entry_id: str, token: str) -> None:
        await self._release_claim(keys=[self.layout.claim(entry_id)], args=[token])

    @_unavailable_on_redis_error
    async def ping(self) -> None:
        await self._redis.ping()

    async def check_persistence(self) -> None:
        """Log what a crash of this Redis would cost the cache: a warning when it persists
        nothing, a note when it relies on RDB snapshots only (README: Redis in production).
        A Redis that does not answer CONFIG GET (a managed one) or is down is not judged."""
        try:
            config = cast(dict[Any, Any], await self._redis.config_get("appendonly"))
            config.update(cast(dict[Any, Any], await self._redis.config_get("save")))
        except (RedisError, OSError) as error:
            log.debug("cannot read Redis's persistence settings: %s", error)
            return
        settings = {
            name.decode() if isinstance(name, bytes) else str(name): (
                value.decode() if isinstance(value, bytes) else str(value)
            )
            for name, value in config.items()
        }
        advice = persistence_advice(settings.get("appendonly", ""), settings.get("save", ""))
        if advice is not None:
            level, message = advice
            log.log(level, "%s", message)

    async def check_memory_policy(self) -> None:
        """Warn when this Redis may evict keys the cache must keep (memory_policy_advice); a
        Redis that does not answer CONFIG GET or is down is not judged."""
        try:
            config = cast(dict[Any, Any], await self._redis.config_get("maxmemory-policy"))
        except (RedisError, OSError) as error:
            log.debug("cannot read Redis's maxmemory-policy: %s", error)
            return
        policy = next(iter(config.values()), b"")
        advice = memory_policy_advice(policy.decode() if isinstance(policy, bytes) else policy)
        if advice is not None:
            log.warning("%s", advice)

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self._redis.aclose()
        if self._probe is not None:
            await self._probe.aclose()
