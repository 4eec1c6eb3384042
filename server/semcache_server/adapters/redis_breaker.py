"""A circuit breaker for Redis: while Redis is down, calls skip it at once instead of each waiting
out the Redis timeout, and a background PING finds out when it is back.

One failure that says Redis is unreachable (a refused or broken connection, a timeout, a Redis
still loading its data) opens the breaker; only the probe closes it. Errors Redis answers with
(a script error, a full memory) leave it closed: Redis is there, and other calls may work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from semcache_server.core.domain import StoreUnavailable

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5
"""Seconds between PINGs while the breaker is open: how long Redis may be back unused."""


def unreachable(error: BaseException) -> bool:
    """Whether an error says Redis cannot be reached (rather than that it refused one call)."""
    return isinstance(error, RedisConnectionError | RedisTimeoutError | OSError)


class RedisBreaker:
    """Shared by every client of one Redis (the entry store, the change feed), so whichever
    notices an outage first spares the others the wait."""

    def __init__(
        self, probe: aioredis.Redis, *, interval: float = PROBE_INTERVAL, name: str = "Redis"
    ) -> None:
        """probe: a client with short timeouts that PINGs while the breaker is open."""
        self._probe = probe
        self._interval = interval
        self._name = name
        self._opened_at: float | None = None
        self._reason = ""
        self._prober: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._resets: list[Callable[[], Awaitable[object]]] = []
        self.trips = 0
        """Times the breaker opened since start-up."""
        self.skipped = 0
        """Calls that skipped Redis because the breaker was open."""

    @property
    def closed(self) -> bool:
        """True while Redis is used; False while it is skipped."""
        return self._opened_at is None

    def check(self) -> None:
        """Raise StoreUnavailable at once when the breaker is open."""
        if self._opened_at is not None:
            self.skipped += 1
            raise StoreUnavailable(f"{self._name}: skipped while unreachable ({self._reason})")

    def failed(self, error: BaseException) -> None:
        """A call failed; open the breaker when the error says Redis is unreachable."""
        if not unreachable(error) or self._opened_at is not None:
            return
        self._opened_at = time.monotonic()
        self._reason = str(error) or type(error).__name__
        self.trips += 1
        log.warning(
            "%s unreachable (%s): skipping it, probing every %.1f s",
            self._name,
            self._reason,
            self._interval,
        )
        self._prober = asyncio.get_running_loop().create_task(
            self._probe_until_it_answers(), name="semcache-redis-probe"
        )
        self._notify()

    def reset_on_recovery(self, client: aioredis.Redis) -> None:
        """Drop the client's idle connections when Redis answers again: a connection opened
        before a restart of Redis would fail the first call after it (and open the breaker)."""
        self._resets.append(lambda: client.connection_pool.disconnect(inuse_connections=False))

    def next_change(self) -> asyncio.Event:
        """An event set at the next opening or closing; take it before reading `closed`, so a
        change in between is not missed."""
        return self._changed

    async def wait_closed(self) -> None:
        """Return when the breaker is closed (at once when it is)."""
        while not self.closed:
            await self.next_change().wait()

    async def _probe_until_it_answers(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._probe.ping()
            except (RedisError, OSError) as error:
                self._reason = str(error) or type(error).__name__
                continue
            break
        for reset in self._resets:
            try:
                await reset()
            except (RedisError, OSError) as error:
                log.debug("dropping idle connections to %s failed: %s", self._name, error)
        opened_at, self._opened_at = self._opened_at, None
        self._prober = None
        log.warning(
            "%s answers again after %.1f s; using it",
            self._name,
            time.monotonic() - (opened_at or 0.0),
        )
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def aclose(self) -> None:
        """Stop probing (the probe client is closed by whoever made it)."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)
