"""The one Redis connection the storage roles share, and what each role's class builds on.

The entry store, the catalogue, the claims, the tally and the replica source are separate classes
(`adapters/redis_store.py`, `redis_catalog.py`, `redis_claims.py`, `redis_tally.py`,
`redis_feed.py`), each implementing one port; they share a `RedisConnection`: one client, one key
layout, one set of scripts (`adapters/redis_layout.py`) and one circuit breaker
(`adapters/redis_breaker.py`). While Redis is unreachable, the breaker makes every call fail at
once with StoreUnavailable instead of waiting for the Redis timeout.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from semcache_server.adapters.redis_breaker import RedisBreaker
from semcache_server.adapters.redis_layout import (
    DEFAULT_FEED_MAX_LEN,
    DEFAULT_PREFIX,
    KeyLayout,
    Scripts,
)
from semcache_server.core.domain import StoreUnavailable

log = logging.getLogger(__name__)


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


class RedisConnection:
    """A Redis client, its breaker, the key layout and the scripts: built once, shared by every
    role's class, closed once (by whoever built it)."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        feed_max_len: int = DEFAULT_FEED_MAX_LEN,
        *,
        probe: aioredis.Redis | None = None,
    ) -> None:
        """probe: a client of its own (closed with the connection) for the breaker's PINGs, so a
        probe never waits behind requests; None: the connection's client."""
        self.client = client
        self._probe = probe
        self.breaker = RedisBreaker(probe if probe is not None else client)
        """Open while Redis is unreachable; the change feed of the same Redis shares it."""
        self.breaker.reset_on_recovery(client)
        self.layout = KeyLayout(prefix)
        self.feed_max_len = feed_max_len
        """The change feed's approximate length, kept by the scripts that append to it."""
        self.scripts = Scripts.register(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        timeout: float,
        prefix: str = DEFAULT_PREFIX,
        feed_max_len: int = DEFAULT_FEED_MAX_LEN,
    ) -> RedisConnection:
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

    def unavailable(self, error: RedisError | OSError) -> StoreUnavailable:
        """The error a role raises for a failed Redis call, telling the breaker first."""
        self.breaker.failed(error)
        return StoreUnavailable(f"Redis: {error or type(error).__name__}")

    async def check_persistence(self) -> None:
        """Log what a crash of this Redis would cost the cache: a warning when it persists
        nothing, a note when it relies on RDB snapshots only (README: Redis in production).
        A Redis that does not answer CONFIG GET (a managed one) or is down is not judged."""
        try:
            config = cast(dict[Any, Any], await self.client.config_get("appendonly"))
            config.update(cast(dict[Any, Any], await self.client.config_get("save")))
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
            config = cast(dict[Any, Any], await self.client.config_get("maxmemory-policy"))
        except (RedisError, OSError) as error:
            log.debug("cannot read Redis's maxmemory-policy: %s", error)
            return
        policy = next(iter(config.values()), b"")
        advice = memory_policy_advice(policy.decode() if isinstance(policy, bytes) else policy)
        if advice is not None:
            log.warning("%s", advice)

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self.client.aclose()
        if self._probe is not None:
            await self._probe.aclose()


class RedisRole:
    """What each role's class builds on: the shared connection, and the operations two roles
    both need (deleting an entry: the entry store and the catalogue; scanning every entry key:
    the catalogue and the replica source)."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.layout = connection.layout
        self._redis = connection.client
        self._scripts = connection.scripts

    async def _delete_entry(self, entry_id: str) -> bool:
        """False when there was no such entry; a deletion reaches every replica by the feed.
        On a full Redis (noeviction) the script still finishes: see its comment."""
        reported = await self._scripts.delete(
            keys=self.layout.feed_keys(entry_id),
            args=[entry_id, self.connection.feed_max_len, self.layout.listing("")],
        )
        return reported is not None

    async def _scan_entry_keys(self, batch: int = 1000) -> AsyncIterator[list[bytes]]:
        """Every entry's key, in SCAN steps of about batch keys."""
        cursor: int = 0
        while True:
            cursor, keys = await self._redis.scan(cursor, match=self.layout.entry("*"), count=batch)
            if keys:
                yield cast(list[bytes], keys)
            if cursor == 0:
                return

    def _ids(self, keys: list[bytes]) -> list[str]:
        prefix = len(self.layout.entry(""))
        return [key.decode()[prefix:] for key in keys]


Role = TypeVar("Role", bound=RedisRole)
P = ParamSpec("P")
T = TypeVar("T")


def unavailable_on_redis_error(
    method: Callable[Concatenate[Role, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Role, P], Coroutine[Any, Any, T]]:
    """Redis failures leave a role as StoreUnavailable, the one error the chain fails open on;
    while the breaker is open, the call does not wait for Redis at all."""

    @wraps(method)
    async def wrapper(role: Role, /, *args: P.args, **kwargs: P.kwargs) -> T:
        role.connection.breaker.check()
        try:
            return await method(role, *args, **kwargs)
        except (RedisError, OSError) as error:
            raise role.connection.unavailable(error) from None

    return wrapper
