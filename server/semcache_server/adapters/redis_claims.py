"""Claims in Redis: the short lock that says "this question's answer is being generated" across
replicas (the `Claims` port, used by core/flights.py). A claim is a key holding its replica's
token, with a lease of milliseconds; taking and releasing are scripts, so a replica never takes
or drops another's claim (`adapters/redis_layout.py`)."""

from __future__ import annotations

from semcache_server.adapters.redis_connection import RedisRole, unavailable_on_redis_error


class RedisClaims(RedisRole):
    """Implements `Claims`."""

    @unavailable_on_redis_error
    async def claim(self, entry_id: str, token: str, seconds: float) -> bool:
        claimed = await self._scripts.claim(
            keys=[self.layout.claim(entry_id)], args=[token, max(1, int(seconds * 1000))]
        )
        return bool(claimed)

    @unavailable_on_redis_error
    async def release(self, entry_id: str, token: str) -> None:
        await self._scripts.release_claim(keys=[self.layout.claim(entry_id)], args=[token])
