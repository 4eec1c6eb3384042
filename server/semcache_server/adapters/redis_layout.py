"""Where semcache keeps everything in Redis, and the Lua scripts that change it.

Shared by every Redis adapter: the entry store, the catalogue, the claims, the tally, the replica
source (`adapters/redis_store.py` and its siblings) and the change feed's reader
(`adapters/redis_feed.py`). One hash an entry, keyed by its deterministic id. Every write,
deletion and expiry is appended to the change feed (a Redis Stream) by the same Lua script that
changes the entry, so the feed never misses a change and never reports one that did not happen.
Entries with a TTL are also listed in a sorted set by deadline, from which the sweep reports
expiries to the feed. Each namespace lists its entries in a sorted set of its own, by deadline
too, kept by the same scripts: a tenant's admin calls count and page its own entries without
reading anyone else's. Nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from semcache_server.core.domain import CachedEntry, Role, Turn

DEFAULT_PREFIX = "semcache:v1:"

DEFAULT_FEED_MAX_LEN = 1_000_000
"""About as many changes as a million-entry cache makes in a busy day; ~130 MB of Redis memory
(134 bytes a change, measured with MEMORY USAGE)."""


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

    def feed_keys(self, entry_id: str) -> list[str]:
        """The keys a script that changes an entry and reports it to the feed touches."""
        return [self.entry(entry_id), self.feed, self.feed_sequence, self.expiries]


FIELDS = (
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
"""An entry's hash fields as `decode_entry` reads them (the embedding is read apart)."""

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


@dataclass(frozen=True)
class Scripts:
    """The scripts, registered with one client (no I/O: Redis loads each at its first use)."""

    fetch_hit: AsyncScript
    record_hit: AsyncScript
    put: AsyncScript
    delete: AsyncScript
    count_listed: AsyncScript
    list_existing: AsyncScript
    sweep_expired: AsyncScript
    claim: AsyncScript
    release_claim: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        return cls(
            fetch_hit=client.register_script(_FETCH_HIT),
            record_hit=client.register_script(_RECORD_HIT),
            put=client.register_script(_PUT),
            delete=client.register_script(_DELETE),
            count_listed=client.register_script(_COUNT_LISTED),
            list_existing=client.register_script(_LIST_EXISTING),
            sweep_expired=client.register_script(_SWEEP_EXPIRED),
            claim=client.register_script(_CLAIM),
            release_claim=client.register_script(_RELEASE_CLAIM),
        )


def text(raw: bytes | None) -> str:
    return raw.decode("utf-8") if raw is not None else ""


def decode_entry(entry_id: str, values: list[bytes | None]) -> CachedEntry:
    """An entry from its hash's FIELDS, in that order."""
    fields = dict(zip(FIELDS, values, strict=True))
    history = json.loads(text(fields["history"]) or "[]")
    return CachedEntry(
        entry_id=entry_id,
        partition=text(fields["partition"]),
        prompt=text(fields["prompt"]),
        text=text(fields["text"]),
        model=text(fields["model"]),
        system=text(fields["system"]),
        options=json.loads(text(fields["options"]) or "{}"),
        history=tuple(Turn(Role(role), content) for role, content in history),
        namespace=text(fields["namespace"]),
        embedding_model=text(fields["embedding_model"]),
        created_at=float(text(fields["created_at"]) or 0.0),
        hits=int(text(fields["hits"]) or 0),
        owner=text(fields["owner"]),
        completion_tokens=int(text(fields["completion_tokens"]) or 0),
    )


def encode_entry(
    entry: CachedEntry, embedding: npt.NDArray[np.float32] | None
) -> list[str | bytes]:
    """An entry's hash as field, value, field, value... (the hit count is the store's)."""
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
    return [item for pair in mapping.items() for item in pair]
